"""The overhead measurement shared by the overhead, scale-out and pool scenarios: jobs
that the provider finishes at once, queued in full before the workers start, drained
through submit -> poll -> store; and the same workers draining no-op tasks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from bench.apps import DONE_KEY
from bench.apps import app as bench_app
from bench.harness import BenchStack, enqueue, redis_counters


@dataclass
class Fleet:
    """Worker nodes on this host: `nodes` x `concurrency` slots in a `pool`."""

    nodes: int = 1
    concurrency: int = 2
    pool: str = "prefork"

    def label(self) -> str:
        """e.g. `2 x prefork(4)`."""
        return f"{self.nodes} x {self.pool}({self.concurrency})"


def _delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def drain_jobs(stack: BenchStack, jobs: int, fleet: Fleet, timeout: float = 1800) -> dict[str, Any]:
    """Queue `jobs` jobs (provider latency 0), then start `fleet` and time the drain."""
    stack.stop_workers()
    stack.flush()
    stack.sim_reset()
    stack.sim_config(latency=0.0, latency_jitter=0.0)
    # First poll one second after the create (the shortest countdown there is).
    env = stack.env(poll_initial_s=1, poll_jitter=0)
    producer = stack.producer(env)
    store0, broker0 = redis_counters(stack.store_url), redis_counters(stack.broker_url)
    started = time.monotonic()
    enqueue(producer, jobs, "overhead")
    enqueue_s = time.monotonic() - started
    store_q, broker_q = redis_counters(stack.store_url), redis_counters(stack.broker_url)

    stack.start_workers(fleet.nodes, concurrency=fleet.concurrency, pool=fleet.pool, env=env)
    cpu0, t0 = stack.workers_cpu_seconds(), time.monotonic()
    t1 = stack.wait_final(jobs, timeout, interval=0.25)
    cpu1 = stack.workers_cpu_seconds()
    store1, broker1 = redis_counters(stack.store_url), redis_counters(stack.broker_url)
    counts = stack.counts()
    sim = stack.sim_stats()
    stack.stop_workers()

    seconds = t1 - t0
    # Every task message is an LPUSH on the broker; the producer's submits are among them.
    tasks = _delta(broker1, broker0, "lpush")
    return {
        "fleet": fleet.label(),
        "jobs": jobs,
        "succeeded": counts.get("succeeded", 0),
        "seconds": round(seconds, 2),
        "jobs_per_s": round(jobs / seconds, 1),
        "tasks_per_job": round(tasks / jobs, 2),
        "broker_cmds_per_job": round(_delta(broker1, broker0, "commands") / jobs, 1),
        "store_cmds_per_job": round(_delta(store1, store0, "commands") / jobs, 1),
        "worker_cpu_ms_per_job": round((cpu1 - cpu0) / jobs * 1000, 2),
        "redis_cpu_ms_per_job": round(
            (_delta(store1, store_q, "cpu_seconds") + _delta(broker1, broker_q, "cpu_seconds")) / jobs * 1000, 2
        ),
        "provider_calls_per_job": round(
            (sim["creates_total"] + sim["gets_total"] + sim["video_downloads_total"]) / jobs, 2
        ),
        "enqueue_jobs_per_s": round(jobs / enqueue_s, 1),
        "store_bytes_per_queued_job": round(_delta(store_q, store0, "used_memory") / jobs),
        "broker_bytes_per_queued_job": round(_delta(broker_q, broker0, "used_memory") / jobs),
        "store_bytes_per_finished_job": round(_delta(store1, store0, "used_memory") / jobs),
        "store_cmds_by_kind": _top_commands(store1, store0, jobs),
        "broker_cmds_by_kind": _top_commands(broker1, broker0, jobs),
    }


def _top_commands(after: dict[str, float], before: dict[str, float], jobs: int) -> dict[str, float]:
    skip = {"commands", "used_memory", "cpu_seconds"}
    per_job = {k: _delta(after, before, k) / jobs for k in after if k not in skip}
    return {k: round(v, 2) for k, v in sorted(per_job.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def drain_noops(stack: BenchStack, tasks: int, fleet: Fleet, timeout: float = 600) -> dict[str, Any]:
    """Queue `tasks` no-op tasks, then start `fleet` (same settings, bench app) and time it."""
    stack.stop_workers()
    stack.flush()
    env = stack.env()
    with bench_app.connection_for_write(stack.broker_url) as connection:
        producer = bench_app.amqp.Producer(connection)
        for _ in range(tasks):
            bench_app.send_task("bench.noop", producer=producer)
    counter = redis.Redis.from_url(stack.store_url)
    broker0 = redis_counters(stack.broker_url)
    stack.start_workers(
        fleet.nodes,
        concurrency=fleet.concurrency,
        pool=fleet.pool,
        env=env,
        app="bench.apps",
        extra_args=["-Q", "bench"],
    )
    cpu0, t0 = stack.workers_cpu_seconds(), time.monotonic()
    deadline = t0 + timeout
    while int(counter.get(DONE_KEY) or 0) < tasks:  # type: ignore[arg-type]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no-op tasks not done after {timeout:g} s")
        time.sleep(0.05)
    t1 = time.monotonic()
    cpu1 = stack.workers_cpu_seconds()
    broker1 = redis_counters(stack.broker_url)
    stack.stop_workers()
    seconds = t1 - t0
    return {
        "fleet": fleet.label(),
        "tasks": tasks,
        "seconds": round(seconds, 2),
        "tasks_per_s": round(tasks / seconds, 1),
        "worker_cpu_ms_per_task": round((cpu1 - cpu0) / tasks * 1000, 2),
        "broker_cmds_per_task": round(_delta(broker1, broker0, "commands") / tasks, 1),
    }
