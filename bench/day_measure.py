"""What the day scenario (bench/day.py) measures, read from outside the code under test:
samples of both Redis servers (`INFO`), the worker processes (psutil) and the fleet's job
counters; the slope of the job store's memory; the final checks (every job succeeded, the
ledger equals the manifests); a census of the job store's keys by pattern."""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.harness import BenchStack, redis_counters, tree_cpu_seconds
from producer import VideoQueue
from videoqueue import keys, namespace
from videoqueue.job import JobStatus
from videoqueue.ledger import TOTAL, LedgerEntry

FINAL = {status.value for status in JobStatus if status.is_final}
ACTIVE = {status.value for status in JobStatus if not status.is_final} - {JobStatus.QUEUED.value}
LEVEL_RATIO = 0.1  # the last slope at most this share of the first: levelled off
# The host kept up when no more than this many seconds of jobs were ever queued or in
# flight in the last third: a 3 s render, its first poll and the store take well under it.
KEPT_UP_S = 15
TOP_COMMANDS = 8  # busiest commands kept per sample and Redis
CENSUS_SAMPLE = 50  # keys per pattern whose MEMORY USAGE is read


# --------------------------------------------------------------------------- sampling


@dataclass
class Sampler:
    """Counters read from outside the code under test, turned into rates between samples."""

    stack: BenchStack
    last: dict[str, Any] = field(default_factory=dict)
    first: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store = self.stack.jobs.redis
        self.broker = redis.Redis.from_url(self.stack.broker_url)
        self.first = self.last = self._read(0.0)

    def job_counts(self) -> dict[str, int]:
        """Jobs by status, from the fleet's counters."""
        return stats_counts(self.store)

    def final_jobs(self) -> int:
        """Jobs in a final status."""
        return sum(n for status, n in self.job_counts().items() if status in FINAL)

    def _read(self, t: float) -> dict[str, Any]:
        cpu = psutil.cpu_times()
        return {
            "t": t,
            "store": redis_counters(self.stack.store_url),
            "broker": redis_counters(self.stack.broker_url),
            "worker_cpu_s": self.stack.workers_cpu_seconds(),
            "node_cpu_s": {w.name: tree_cpu_seconds(w.proc.pid) for w in self.stack.workers},
            "host_busy_s": cpu.user + cpu.system + cpu.nice + getattr(cpu, "softirq", 0) + getattr(cpu, "irq", 0),
            "host_total_s": sum(cpu),
        }

    def take(self, t: float, submitted: int) -> dict[str, Any]:
        """One sample: levels now, rates since the previous sample."""
        now, before = self._read(t), self.last
        self.last = now
        dt = max(now["t"] - before["t"], 1e-9)
        counts = self.job_counts()
        queues = [namespace.queue(step) for step in ("submit", "poll", "store")]
        pipe = self.broker.pipeline()
        for queue in queues:
            pipe.llen(queue)
        pipe.hlen(keys.broker_transport_options().get("unacked_key", "unacked"))
        *waiting, unacked = pipe.execute()
        host_total = max(now["host_total_s"] - before["host_total_s"], 1e-9)
        return {
            "t_s": round(t, 1),
            "submitted": submitted,
            "queued": counts.get(JobStatus.QUEUED.value, 0),
            "active": sum(counts.get(s, 0) for s in ACTIVE),
            "succeeded": counts.get(JobStatus.SUCCEEDED.value, 0),
            "failed": sum(counts.get(s, 0) for s in FINAL - {JobStatus.SUCCEEDED.value}),
            "store_used_memory": int(now["store"]["used_memory"]),
            "broker_used_memory": int(now["broker"]["used_memory"]),
            "store_cmds_per_s": round(_rate(now["store"], before["store"], "commands", dt), 1),
            "broker_cmds_per_s": round(_rate(now["broker"], before["broker"], "commands", dt), 1),
            "store_top_cmds_per_s": _top(now["store"], before["store"], dt),
            "broker_top_cmds_per_s": _top(now["broker"], before["broker"], dt),
            "redis_cpu_cores": round(
                _rate(now["store"], before["store"], "cpu_seconds", dt)
                + _rate(now["broker"], before["broker"], "cpu_seconds", dt),
                3,
            ),
            "worker_cpu_cores": round((now["worker_cpu_s"] - before["worker_cpu_s"]) / dt, 3),
            # per node (bench1: submits and polls, bench2: stores, in the split fleet)
            "node_cpu_cores": {
                name: round((cpu - before["node_cpu_s"].get(name, 0.0)) / dt, 3)
                for name, cpu in now["node_cpu_s"].items()
            },
            "worker_rss_mib": round(sum(_rss_mib(w.proc.pid) for w in self.stack.workers), 1),
            "host_cpu_pct": round(100 * (now["host_busy_s"] - before["host_busy_s"]) / host_total, 1),
            "broker_waiting": dict(zip(queues, waiting, strict=True)),
            "broker_unacked": int(unacked),
        }


def _rate(now: dict[str, float], before: dict[str, float], key: str, dt: float) -> float:
    return (now.get(key, 0.0) - before.get(key, 0.0)) / dt


def _top(now: dict[str, float], before: dict[str, float], dt: float) -> dict[str, float]:
    skip = {"commands", "used_memory", "cpu_seconds"}
    rates = {k: _rate(now, before, k, dt) for k in now if k not in skip}
    busiest = sorted(rates.items(), key=lambda kv: -kv[1])[:TOP_COMMANDS]
    return {k: round(v, 1) for k, v in busiest if v > 0}


def _rss_mib(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20
    except psutil.NoSuchProcess:
        return 0.0


# ---------------------------------------------------------------------------- results


def memory_slopes(samples: list[dict[str, Any]], enqueue_s: float, retention_s: int, rate: float) -> dict[str, Any]:
    """Least-squares slopes of the job store's used_memory (bytes/s) while jobs were being
    enqueued: over its first part (the first retention period, at most a third of it: before
    any record could expire) and over its last third; and whether the host kept up in that
    last third (at most KEPT_UP_S seconds of jobs unfinished), without which the memory
    grows with the backlog whatever the retention."""
    first_end = min(float(retention_s), enqueue_s / 3) if retention_s else enqueue_s / 3
    first = [s for s in samples if s["t_s"] <= first_end]
    last = [s for s in samples if enqueue_s * 2 / 3 <= s["t_s"] <= enqueue_s]
    slope_first, slope_last = _slope(first), _slope(last)
    ratio = slope_last / slope_first if slope_first and slope_last is not None else None
    # Unfinished records do not expire: a backlog grows the memory whatever the retention.
    unfinished = max((s["queued"] + s["active"] for s in last), default=None)
    return {
        "first_window_s": [0, round(first_end, 1)],
        "last_window_s": [round(enqueue_s * 2 / 3, 1), round(enqueue_s, 1)],
        "slope_first_bytes_per_s": None if slope_first is None else round(slope_first),
        "slope_last_bytes_per_s": None if slope_last is None else round(slope_last),
        "bytes_kept_per_job_first": None if slope_first is None else round(slope_first / rate),
        "bytes_kept_per_job_last": None if slope_last is None else round(slope_last / rate),
        "ratio_last_to_first": None if ratio is None else round(ratio, 3),
        "levelled_off": None if ratio is None else ratio <= LEVEL_RATIO,
        "unfinished_max_last": unfinished,
        "kept_up": None if unfinished is None else unfinished <= KEPT_UP_S * rate,
        "peak_store_used_memory": max((s["store_used_memory"] for s in samples), default=0),
        "end_store_used_memory": samples[-1]["store_used_memory"] if samples else 0,
    }


def _slope(samples: list[dict[str, Any]]) -> float | None:
    if len(samples) < 3:
        return None
    xs = [float(s["t_s"]) for s in samples]
    ys = [float(s["store_used_memory"]) for s in samples]
    return statistics.linear_regression(xs, ys).slope


def final_checks(stack: BenchStack, producer: VideoQueue, jobs: int) -> dict[str, Any]:
    """Every job succeeded (the counters; the ledger by status), and the ledger's total
    equals the sum of the manifests' ledger entries (every manifest in the folder)."""
    counts = stats_counts(stack.jobs.redis)
    by_status = {row.group: row for row in producer.costs("status")}
    total = by_status.get(TOTAL)
    ledger_usd = total.actual_usd if total else Decimal(0)
    ledger_jobs = total.jobs if total else 0
    manifests = with_entry = manifest_succeeded = 0
    manifests_usd = Decimal(0)
    for path in stack.out.glob("*.json"):
        document = _json(path)
        if not isinstance(document, dict) or "manifest_version" not in document:
            continue
        manifests += 1
        job = document.get("job")
        if isinstance(job, dict) and job.get("status") == JobStatus.SUCCEEDED.value:
            manifest_succeeded += 1
        if document.get("ledger"):
            entry = LedgerEntry.model_validate(document["ledger"])
            with_entry += 1
            manifests_usd += entry.actual_usd
    succeeded_row = by_status.get(JobStatus.SUCCEEDED.value)
    ledger_succeeded = succeeded_row.jobs if succeeded_row else 0
    stats_succeeded = counts.get(JobStatus.SUCCEEDED.value, 0)
    others = {status: n for status, n in counts.items() if status != JobStatus.SUCCEEDED.value and n}
    return {
        "jobs": jobs,
        "succeeded_by_counters": stats_succeeded,
        "other_statuses_by_counters": others,
        "succeeded_by_ledger": ledger_succeeded,
        "succeeded_by_manifests": manifest_succeeded,
        "every_job_succeeded": stats_succeeded == jobs and not others and ledger_succeeded == jobs,
        "ledger_jobs": ledger_jobs,
        "ledger_usd": str(ledger_usd),
        "manifests": manifests,
        "manifests_with_ledger_entry": with_entry,
        "manifests_usd": str(manifests_usd),
        "difference_usd": str(ledger_usd - manifests_usd),
        "ledger_equals_manifests": ledger_usd == manifests_usd and ledger_jobs == with_entry,
    }


def stats_counts(client: redis.Redis) -> dict[str, int]:
    """Jobs by status, summed over providers and models, from keys.STATS_JOBS (the fleet's
    counters, kept when records expire)."""
    counts: dict[str, int] = defaultdict(int)
    raw: dict[Any, Any] = client.hgetall(keys.STATS_JOBS)  # type: ignore[assignment]
    for name, value in raw.items():
        status = (name.decode() if isinstance(name, bytes) else str(name)).split("|", 1)[0]
        counts[status] += int(value)
    return dict(counts)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_ID = re.compile(r"[0-9A-Za-z_-]*\d[0-9A-Za-z_-]*")


def key_pattern(key: str) -> str:
    """`vq@bench:job:<uuid>` -> `vq@bench:job:*`: every part of a key (between colons) that
    holds a digit and is at least 12 characters long (ids) becomes `*`."""
    return ":".join("*" if len(part) >= 12 and _ID.fullmatch(part) else part for part in key.split(":"))


def key_census(client: redis.Redis) -> list[dict[str, Any]]:
    """The job store's keys by pattern: how many, their type, the MEMORY USAGE of up to
    CENSUS_SAMPLE of them (bytes, mean) and how many of those have no TTL; the largest
    estimated total first. What stays here after a run is what retention does not reach."""
    groups: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for raw in client.scan_iter(count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        pattern = key_pattern(key)
        counts[pattern] += 1
        if len(groups[pattern]) < CENSUS_SAMPLE:
            groups[pattern].append(key)
    rows = []
    for pattern, sample in groups.items():
        pipe = client.pipeline(transaction=False)
        for key in sample:
            pipe.memory_usage(key)
            pipe.ttl(key)
        pipe.type(sample[0])
        *answers, kind = pipe.execute()
        sizes = [int(n or 0) for n in answers[0::2]]
        mean = statistics.fmean(sizes) if sizes else 0.0
        rows.append(
            {
                "pattern": pattern,
                "type": kind.decode() if isinstance(kind, bytes) else str(kind),
                "keys": counts[pattern],
                "mean_bytes": round(mean),
                "est_total_bytes": round(mean * counts[pattern]),
                "sampled_without_ttl": sum(1 for ttl in answers[1::2] if int(ttl) == -1),
                "sampled": len(sample),
            }
        )
    return sorted(rows, key=lambda row: -row["est_total_bytes"])
