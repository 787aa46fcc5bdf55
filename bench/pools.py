"""Which Celery pool for IO-bound polling: the same jobs through one worker node on this
2-core host with prefork, threads and gevent pools of several sizes, with the simulator
adding a realistic 0.2 s to every provider API call (a worker slot waits on it).

Reported per pool: jobs/s, worker CPU per job, and the memory of the worker node
(main process plus pool children), which is what a bigger prefork pool costs.
"""

from __future__ import annotations

import time
from typing import Any

from bench.drain import Fleet
from bench.harness import BenchStack, enqueue, tree_rss_mib

API_DELAY_S = 0.2
RENDER_S = 5.0
FLEETS = (
    Fleet(1, 2, "prefork"),
    Fleet(1, 8, "prefork"),
    Fleet(1, 32, "threads"),
    Fleet(1, 64, "threads"),
    Fleet(1, 64, "gevent"),
)


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """One run per pool, same jobs."""
    jobs = 40 if quick else 600
    stack.sim_config(api_delay=API_DELAY_S, latency=RENDER_S, latency_jitter=0.0)
    rows = [_one(stack, jobs, fleet) for fleet in FLEETS]
    return {
        "rows": rows,
        "notes": [
            f"every provider API call waits {API_DELAY_S:g} s at the simulator; render time {RENDER_S:g} s",
            "jobs are queued in full, then the worker starts; first poll 5 s after the create",
        ],
    }


def _one(stack: BenchStack, jobs: int, fleet: Fleet) -> dict[str, Any]:
    stack.stop_workers()
    stack.flush()
    stack.sim_reset()
    env = stack.env(poll_initial_s=RENDER_S)
    producer = stack.producer(env)
    enqueue(producer, jobs, "pool")
    workers = stack.start_workers(fleet.nodes, concurrency=fleet.concurrency, pool=fleet.pool, env=env)
    cpu0, started = stack.workers_cpu_seconds(), time.monotonic()
    done = stack.wait_final(jobs, 3600, interval=0.5)
    cpu = stack.workers_cpu_seconds() - cpu0
    rss = sum(tree_rss_mib(w.proc.pid) for w in workers)
    counts = stack.counts()
    stack.stop_workers()
    seconds = done - started
    return {
        "pool": fleet.label(),
        "jobs": jobs,
        "succeeded": counts.get("succeeded", 0),
        "seconds": round(seconds, 1),
        "jobs_per_s": round(jobs / seconds, 2),
        "worker_cpu_ms_per_job": round(cpu / jobs * 1000, 1),
        "worker_rss_mib": round(rss),
    }
