"""Job-level Prometheus metrics for the whole fleet, read from Redis on every scrape:
what `videoqueue metrics --port N` serves next to Flower's task metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import redis
from prometheus_client import start_http_server
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from videoqueue import keys, redisconn, stats
from videoqueue.budget import from_micro
from videoqueue.catalog import load_catalog
from videoqueue.job import JobStatus
from videoqueue.limits import ProviderLimits
from videoqueue.room import PRIORITIES, WaitingRoom
from videoqueue.settings import get_settings


class JobMetricsCollector(Collector):
    """Turns the counters in videoqueue.stats (and budget usage) into Prometheus metrics,
    with each model's waiting room and slots (`room`: the limits the exporter's settings
    give, overridden by those stored in Redis; `models`: (provider, model) always reported,
    the catalog's, besides those with jobs waiting or slots taken)."""

    def __init__(
        self, client: redis.Redis, room: WaitingRoom | None = None, models: Iterable[tuple[str, str]] = ()
    ) -> None:
        self.redis = client
        self.room = room
        self.models = set(models)

    def _hash(self, key: str) -> dict[str, str]:
        data: dict[str, str] = self.redis.hgetall(key)  # type: ignore[assignment]
        return data

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "videoqueue_jobs", "Jobs by status, provider and model.", labels=["status", "provider", "model"]
        )
        for field, value in sorted(self._hash(keys.STATS_JOBS).items()):
            status, provider, model = field.split("|", 2)
            jobs.add_metric([status, provider, model], float(value))
        yield jobs

        active = GaugeMetricFamily("videoqueue_jobs_active", "Jobs not yet final.")
        counts = self._hash(keys.STATS_JOBS)
        active.add_metric(
            [],
            sum(float(v) for f, v in counts.items() if not JobStatus(f.split("|", 1)[0]).is_final),
        )
        yield active

        actual = CounterMetricFamily(
            "videoqueue_cost_usd", "Settled cost of finished jobs, in USD.", labels=["provider", "model"]
        )
        estimate = CounterMetricFamily(
            "videoqueue_cost_estimate_usd",
            "Estimated cost of the same finished jobs, in USD.",
            labels=["provider", "model"],
        )
        settled = CounterMetricFamily(
            "videoqueue_cost_settled_jobs", "Jobs whose cost was settled.", labels=["provider", "model"]
        )
        families = {"actual": actual, "estimate": estimate, "jobs": settled}
        for field, value in sorted(self._hash(keys.STATS_COST).items()):
            kind, provider, model = field.split("|", 2)
            amount = float(value) if kind == "jobs" else float(from_micro(value))
            families[kind].add_metric([provider, model], amount)
        yield from families.values()

        yield self._histogram(
            "videoqueue_provider_render_seconds",
            "Time from provider task created to provider done.",
            keys.STATS_RENDER_SECONDS,
            stats.RENDER_BUCKETS,
        )
        yield self._histogram(
            "videoqueue_store_seconds",
            "Time from provider done to video stored.",
            keys.STATS_STORE_SECONDS,
            stats.STORE_BUCKETS,
        )

        budget = GaugeMetricFamily(
            "videoqueue_budget_usd", "Budget counters: reserved and spent USD.", labels=["budget", "kind"]
        )
        for key in sorted(self.redis.scan_iter(f"{keys.BUDGET_PREFIX}*", count=500)):
            values = self._hash(str(key))
            name = str(key).removeprefix(keys.BUDGET_PREFIX)
            for kind in ("reserved", "spent"):
                budget.add_metric([name, kind], float(from_micro(values.get(kind))))
        yield budget
        if self.room is not None:
            yield from self._rooms(self.room)

    def _rooms(self, room: WaitingRoom) -> Iterator[Metric]:
        """Per provider and model: jobs waiting (also by priority; tenants are left out of
        the labels, being user-defined and unbounded), the longest wait, slots in use, the
        slot limit and their ratio."""
        labels = ["provider", "model"]
        waiting = GaugeMetricFamily("videoqueue_waiting_jobs", "Jobs waiting in the model's room.", labels=labels)
        by_priority = GaugeMetricFamily(
            "videoqueue_waiting_jobs_by_priority",
            "Jobs waiting in the model's room, by priority (0-9, 9 first).",
            labels=[*labels, "priority"],
        )
        oldest = GaugeMetricFamily(
            "videoqueue_oldest_wait_seconds", "How long the longest-waiting job has waited (0: none).", labels=labels
        )
        in_use = GaugeMetricFamily("videoqueue_slots_in_use", "Provider tasks in flight (live slots).", labels=labels)
        limit = GaugeMetricFamily(
            "videoqueue_slot_limit", "Provider tasks allowed in flight at once (the limit in force).", labels=labels
        )
        utilisation = GaugeMetricFamily(
            "videoqueue_slot_utilisation", "Slots in use / the slot limit (0 to 1).", labels=labels
        )
        now = time.time()
        for provider, model in sorted(self.models | set(room.models_in_use())):
            snap = room.snapshot(provider, model, now)
            waiting.add_metric([provider, model], float(snap.total_waiting))
            for priority in sorted(PRIORITIES):
                jobs = sum(n for (p, _tenant), n in snap.waiting.items() if p == priority)
                by_priority.add_metric([provider, model, str(priority)], float(jobs))
            oldest.add_metric([provider, model], snap.oldest_wait_s or 0.0)
            in_use.add_metric([provider, model], float(snap.in_flight))
            limit.add_metric([provider, model], float(snap.max_in_flight))
            utilisation.add_metric([provider, model], snap.in_flight / snap.max_in_flight)
        yield from (waiting, by_priority, oldest, in_use, limit, utilisation)

    def _histogram(self, name: str, documentation: str, key: str, bounds: tuple[float, ...]) -> HistogramMetricFamily:
        """One histogram family from a hash of videoqueue.stats: per-bucket counts
        (`bucket=<bound>|provider|model`) cumulated here, plus the cumulative counts
        (`le=<bound>|...`) that earlier versions stored, so a fleet's counts carry over."""
        family = HistogramMetricFamily(name, documentation, labels=["provider", "model"])
        cumulative: dict[str, dict[str, float]] = {}
        own: dict[str, dict[str, float]] = {}
        sums: dict[str, float] = {}
        for field, value in self._hash(key).items():
            head, label = field.split("|", 1)
            if head == "sum":
                sums[label] = float(value)
            elif head.startswith(stats.BUCKET):
                own.setdefault(label, {})[head.removeprefix(stats.BUCKET)] = float(value)
            else:
                cumulative.setdefault(label, {})[head.removeprefix(stats.CUMULATIVE)] = float(value)
        for label in sorted(set(cumulative) | set(own)):
            # Either kind is stored only once hit: an absent bound counted 0.
            old, new = cumulative.get(label, {}), own.get(label, {})
            rows: list[tuple[str, float]] = []
            running = 0.0
            for bound in bounds:
                running += new.get(str(bound), 0.0)
                rows.append((str(float(bound)), old.get(str(bound), 0.0) + running))
            running += new.get("+Inf", 0.0)
            rows.append(("+Inf", old.get("+Inf", 0.0) + running))
            provider, model = label.split("|", 1)
            family.add_metric([provider, model], rows, sum_value=sums.get(label, 0.0))
        return family


def serve(port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - an exporter listens
    """Serve /metrics on `port` until interrupted, from the Redis this process's settings
    name (REDIS_URL, or the primary REDIS_SENTINELS name)."""
    settings = get_settings()
    client = redisconn.connect_settings(settings)
    room = WaitingRoom(client, ProviderLimits.from_settings(client, settings), settings.tenant_weights())
    catalog = load_catalog(settings.pricing_file)
    models = [(spec.provider, spec.id) for spec in catalog.models.values()]
    REGISTRY.register(JobMetricsCollector(client, room, models))
    start_http_server(port, addr=host)
    threading.Event().wait()
