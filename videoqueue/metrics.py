"""Job-level Prometheus metrics for the whole fleet, read from Redis on every scrape:
what `videoqueue metrics --port N` serves next to Flower's task metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator

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
from videoqueue.job import JobStatus


class JobMetricsCollector(Collector):
    """Turns the counters in videoqueue.stats (and budget usage) into Prometheus metrics."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

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

    def _histogram(self, name: str, documentation: str, key: str, bounds: tuple[float, ...]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=["provider", "model"])
        counts: dict[str, dict[str, float]] = {}
        sums: dict[str, float] = {}
        for field, value in self._hash(key).items():
            head, label = field.split("|", 1)
            if head == "sum":
                sums[label] = float(value)
            else:
                counts.setdefault(label, {})[head.removeprefix("le=")] = float(value)
        for label, seen in sorted(counts.items()):
            # Buckets are cumulative and stored only once hit: an absent bound counted 0.
            rows = [(str(float(b)), seen.get(str(b), 0.0)) for b in bounds] + [("+Inf", seen.get("+Inf", 0.0))]
            provider, model = label.split("|", 1)
            family.add_metric([provider, model], rows, sum_value=sums.get(label, 0.0))
        return family


def serve(redis_url: str, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - an exporter listens
    """Serve /metrics on `port` until interrupted."""
    client = redisconn.connect(redis_url)
    REGISTRY.register(JobMetricsCollector(client))
    start_http_server(port, addr=host)
    threading.Event().wait()
