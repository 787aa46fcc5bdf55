"""Held messages (issue 18, item 4): what one worker host holds with 10,000 renders in
flight, and whether it still takes a fresh job.

On a Redis broker a worker holds every countdown message, unacknowledged, in its memory
until due; at Celery's `worker_eta_task_limit` it takes no new work at all. Two cases, one
worker (threads pool, 4 slots), the simulator rendering for 600 s, default poll settings:

- `before`: the code of a git ref (`--held-before`, default `main`), exported to a temporary
  folder and run by the same interpreter: every poll within the broker's bound is a
  countdown message.
- `after`: this code with its defaults (COUNTDOWN_HORIZON_S, HELD_MESSAGES_MAX): polls
  beyond the horizon or the held bound are parked in the job store.

For each: enqueue the renders, wait until they are all running (or the count stops
growing: the worker at Celery's cap), then read kombu's `unacked` hash on the broker Redis
(messages held), the messages waiting in the queues (not yet delivered: the worker's
backlog), the worker's RSS, the parked index, and enqueue one fresh job: the
seconds from its enqueue to its claim (`submitting`), or "not taken" after a minute.
"""

from __future__ import annotations

import argparse
import subprocess
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import redis

from bench.harness import BenchStack, enqueue, tree_rss_mib
from producer import VideoQueue, VideoRequest
from videoqueue import keys, namespace
from videoqueue.job import JobStatus
from videoqueue.parking import eta_task_limit

RENDER_S = 600.0
FRESH_WAIT_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--held-before REF`: the git ref whose code is the `before` case (empty: skip it)."""
    parser.add_argument(
        "--held-before", default="main", help="held: the git ref run as the before case (empty: skip it)"
    )


def export_ref(ref: str, into: Path) -> Path | None:
    """The tree of `ref` written into `into` (git archive); None when git cannot."""
    done = subprocess.run(["git", "archive", "--format=tar", ref], capture_output=True, check=False)
    if done.returncode != 0:
        return None
    with tarfile.open(fileobj=BytesIO(done.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _running(stack: BenchStack) -> int:
    return stack.counts().get(JobStatus.RUNNING.value, 0)


def fill(stack: BenchStack, producer: VideoQueue, renders: int, timeout: float) -> tuple[int, float]:
    """Enqueue `renders` long renders and wait until they run, or until the count of
    running jobs has not grown for 30 s (the worker stopped taking work). Returns the
    running count and the seconds it took."""
    started = time.monotonic()
    enqueue(producer, renders, "held render")
    last, last_change = -1, time.monotonic()
    while True:
        running = _running(stack)
        now = time.monotonic()
        if running != last:
            last, last_change = running, now
        if running >= renders or now - last_change > 30 or now - started > timeout:
            return running, now - started
        time.sleep(1.0)


def fresh_job_wait(stack: BenchStack, producer: VideoQueue) -> float | None:
    """Seconds from enqueueing one fresh job to its claim (it leaves `queued`), or None
    when no worker took it within FRESH_WAIT_S."""
    job = producer.submit(VideoRequest(prompt="a fresh job [sim:latency=1]"))
    started = time.monotonic()
    while time.monotonic() - started < FRESH_WAIT_S:
        record = stack.jobs.get(job.id)
        if record is not None and record.status is not JobStatus.QUEUED:
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def measure(stack: BenchStack, case: str, env: dict[str, str], renders: int, timeout: float) -> dict[str, Any]:
    """One case on an emptied stack: fill, read what is held, time a fresh job."""
    stack.flush()
    stack.sim_reset()
    stack.sim_config(latency=RENDER_S, latency_jitter=0.0)
    [worker] = stack.start_workers(1, concurrency=4, pool="threads", env=env)
    producer = stack.producer(env)
    running, fill_s = fill(stack, producer, renders, timeout)
    time.sleep(10)  # let the polls of the last jobs settle into their schedule
    broker = redis.Redis.from_url(stack.broker_url)
    unacked_key = keys.broker_transport_options().get("unacked_key", "unacked")
    held: int = broker.hlen(unacked_key)  # type: ignore[assignment]
    lengths: list[int] = [broker.llen(namespace.queue(step)) for step in ("submit", "poll", "store")]  # type: ignore[misc]
    backlog = sum(lengths)
    rss = tree_rss_mib(worker.proc.pid)
    parked: int = stack.jobs.redis.zcard(keys.PARKED_INDEX)  # type: ignore[assignment]
    fresh = fresh_job_wait(stack, producer)
    stack.stop_workers()
    return {
        "case": case,
        "renders enqueued": renders,
        "running": running,
        "fill s": round(fill_s, 1),
        "held messages (unacked)": held,
        "parked": parked,
        "messages in queues": backlog,
        "worker RSS MiB": round(rss, 1),
        "KiB per held message": None,
        "fresh job taken in s": round(fresh, 2) if fresh is not None else f"not taken in {FRESH_WAIT_S:g} s",
    }


def run(stack: BenchStack, quick: bool, options: argparse.Namespace | None = None) -> dict[str, Any]:
    """Both cases; quick: 300 renders, a held bound of 20 (numbers mean nothing)."""
    renders = 300 if quick else 10_000
    timeout = 120.0 if quick else 1200.0
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    ref = options.held_before if options is not None else "main"
    with tempfile.TemporaryDirectory(prefix="vq-bench-before-") as tmp:
        before = export_ref(ref, Path(tmp)) if ref else None
        if before is not None:
            env = {**stack.env(), "PYTHONPATH": str(before)}
            rows.append(measure(stack, f"before ({ref})", env, renders, timeout))
        else:
            notes.append(f"before: skipped (git could not export {ref!r})")
    after_settings: dict[str, object] = {"held_messages_max": 20} if quick else {}
    env = stack.env(**after_settings)
    rows.append(measure(stack, "after", env, renders, timeout))
    baseline = rows[0]
    for row in rows:
        if row is not baseline and row["held messages (unacked)"] != baseline["held messages (unacked)"]:
            extra = baseline["held messages (unacked)"] - row["held messages (unacked)"]
            if extra > 0:
                baseline["KiB per held message"] = round(
                    (baseline["worker RSS MiB"] - row["worker RSS MiB"]) * 1024 / extra, 1
                )
    held_max = 20 if quick else 2000
    notes.append(
        f"one worker, threads pool, 4 slots; simulator renders {RENDER_S:g} s; after: HELD_MESSAGES_MAX={held_max}, "
        f"worker_eta_task_limit={eta_task_limit(held_max)}; before: worker_eta_task_limit 5000"
    )
    notes.append("KiB per held message: the RSS difference between the cases over the difference in held messages")
    return {"rows": rows, "notes": notes}
