"""Scenario 1, capacity: 2,000 clips of 30 s +-20% render time through one worker host
with a fixed number of worker slots, against the thread-per-job baseline (a Celery task
that creates, sleeps and polls, and downloads, holding its slot for the clip's whole
life) with the same slots, in the same harness.

The baseline needs hours for 2,000 clips at four at a time; it runs until a few waves of
clips are done and its rate and makespan are extrapolated from them (said in the row).
Target (issue 7): at least 100x the baseline's jobs per minute.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from bench.apps import DONE_KEY
from bench.apps import app as bench_app
from bench.harness import BenchStack, enqueue

SLOTS = 4
BASELINE_POLL_S = 2.0


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """Both sides on the same simulator settings and slots; rows side by side."""
    jobs = 60 if quick else 2000
    latency, jitter = (4.0, 2.0) if quick else (24.0, 12.0)  # uniform 24-36 s: 30 s +-20%
    waves = 1 if quick else 3
    stack.sim_config(latency=latency, latency_jitter=jitter)
    ours = _videoqueue(stack, jobs)
    base = _baseline(stack, jobs, waves * SLOTS, window_s=120 if quick else 600)
    ratio = ours["jobs_per_min"] / base["jobs_per_min"]
    rows = [
        {"case": "videoqueue", "slots": SLOTS, **ours},
        {"case": "thread-per-job baseline", "slots": SLOTS, **base},
        {"case": "ratio (target >= 100x)", "jobs_per_min": round(ratio, 1)},
    ]
    return {
        "rows": rows,
        "ratio": round(ratio, 1),
        "notes": [
            f"simulator render time uniform {latency:g}-{latency + jitter:g} s; no provider-side queueing",
            f"one worker node, prefork pool of {SLOTS} on both sides; baseline polls every {BASELINE_POLL_S:g} s",
            "videoqueue uses its default poll schedule (first poll at the model's expected render time)",
        ],
    }


def _videoqueue(stack: BenchStack, jobs: int) -> dict[str, Any]:
    stack.stop_workers()
    stack.flush()
    stack.sim_reset()
    env = stack.env()
    stack.start_workers(1, concurrency=SLOTS, env=env)
    producer = stack.producer(env)
    cpu0, started = stack.workers_cpu_seconds(), time.monotonic()
    enqueue(producer, jobs, "capacity")
    done = stack.wait_final(jobs, 3600, interval=0.5)
    cpu = stack.workers_cpu_seconds() - cpu0
    counts, sim = stack.counts(), stack.sim_stats()
    stack.stop_workers()
    makespan = done - started
    return {
        "jobs": jobs,
        "succeeded": counts.get("succeeded", 0),
        "makespan_s": round(makespan, 1),
        "jobs_per_min": round(jobs / makespan * 60, 1),
        "peak_in_flight": sim["max_in_flight"],
        "polls_per_job": round(sim["gets_total"] / jobs, 2),
        "worker_cpu_s": round(cpu, 1),
    }


def _baseline(stack: BenchStack, jobs: int, measure_jobs: int, window_s: float) -> dict[str, Any]:
    stack.stop_workers()
    stack.flush()
    stack.sim_reset()
    env = stack.env()
    stack.start_workers(1, concurrency=SLOTS, env=env, app="bench.apps", extra_args=["-Q", "bench"])
    out = str(stack.out)
    cpu0, started = stack.workers_cpu_seconds(), time.monotonic()
    with bench_app.connection_for_write(stack.broker_url) as connection:
        producer = bench_app.amqp.Producer(connection)
        for i in range(jobs):
            bench_app.send_task("bench.blocking_job", args=[f"baseline {i}", out, BASELINE_POLL_S], producer=producer)
    counter = redis.Redis.from_url(stack.store_url)
    done, last = 0, started
    while done < measure_jobs and time.monotonic() - started < window_s:
        now_done = int(counter.get(DONE_KEY) or 0)  # type: ignore[arg-type]
        if now_done > done:
            done, last = now_done, time.monotonic()
        time.sleep(0.1)
    cpu = stack.workers_cpu_seconds() - cpu0
    sim = stack.sim_stats()
    # The rest of the queue is abandoned: stop hard, then empty the broker.
    for worker in stack.workers:
        worker.kill()
    stack.workers.clear()
    stack.flush()
    if done == 0:
        raise RuntimeError(f"the baseline finished no job in {window_s:g} s")
    rate = done / (last - started)
    return {
        "jobs": jobs,
        "succeeded": f"{done} measured",
        "makespan_s": round(jobs / rate, 1),
        "makespan_note": f"extrapolated from the first {done} jobs",
        "jobs_per_min": round(rate * 60, 2),
        "peak_in_flight": sim["max_in_flight"],
        "polls_per_job": round(sim["gets_total"] / max(sim["creates_total"], 1), 2),
        "worker_cpu_s": round(cpu, 1),
    }
