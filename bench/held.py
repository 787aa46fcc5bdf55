"""Held messages (issue 18, item 4): what one worker host holds with 10,000 renders in
flight, and whether it still takes a fresh job.

On a Redis broker a worker holds every countdown message, unacknowledged, in its memory
until due; at Celery's `worker_eta_task_limit` it takes no new work at all. One worker
(threads pool, 4 slots), the simulator rendering for 1,200 s, polls 600 s apart (the
backoff schedule with POLL_INITIAL_S = POLL_MIN_S = POLL_MAX_S = 600, as the issue's
measurement: polls closer together than the worker's backlog would be overdue before it
fetched them, and nothing would be held). Cases:

- `before`: the code of a git ref (`--held-before`, default `main`), exported to a temporary
  folder and run by the same interpreter: every poll is a countdown message.
- `after`: this code with its defaults (COUNTDOWN_HORIZON_S=60, HELD_MESSAGES_MAX=2000):
  polls 600 s away are beyond the horizon, all parked.
- `after, horizon 600`: COUNTDOWN_HORIZON_S=600, so only the held bound parks polls: the
  worker holds up to HELD_MESSAGES_MAX.

For each: enqueue the renders, wait until they are all running (or the count stops
growing for 30 s: the worker at Celery's cap), then read kombu's `unacked` hash on the
broker Redis (messages held), the messages waiting in the queues (not yet delivered: the
worker's backlog), the worker's RSS, the parked index, and enqueue one fresh job: the
seconds from its enqueue to its claim (`submitting`), or "not taken" after FRESH_WAIT_S.
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

RENDER_S = 1200.0
POLL_S = 600
FRESH_WAIT_S = 45.0


def poll_settings() -> dict[str, object]:
    """Polls POLL_S apart, from the first (the same names on main's code)."""
    return {
        "poll_schedule": "backoff",
        "poll_initial_s": POLL_S,
        "poll_min_s": POLL_S,
        "poll_max_s": POLL_S,
        "poll_jitter": 0,
    }


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
    """The three cases; quick: 300 renders, a held bound of 20 (numbers mean nothing)."""
    renders = 300 if quick else 10_000
    timeout = 120.0 if quick else 1200.0
    held_max = 20 if quick else 2000
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    ref = options.held_before if options is not None else "main"
    with tempfile.TemporaryDirectory(prefix="vq-bench-before-") as tmp:
        before = export_ref(ref, Path(tmp)) if ref else None
        if before is not None:
            # Celery puts its working directory first on sys.path: the worker starts there.
            env = {**stack.env(**poll_settings()), "PYTHONPATH": str(before), "CELERY_WORKDIR": str(before)}
            rows.append(measure(stack, f"before ({ref})", env, renders, timeout))
        else:
            notes.append(f"before: skipped (git could not export {ref!r})")
    after = stack.env(**poll_settings(), held_messages_max=held_max)
    rows.append(measure(stack, "after", after, renders, timeout))
    bound = stack.env(**poll_settings(), held_messages_max=held_max, countdown_horizon_s=POLL_S)
    rows.append(measure(stack, f"after, horizon {POLL_S}", bound, renders, timeout))
    # What one held message costs: RSS over held messages, against the case holding fewest.
    fewest = min(rows, key=lambda row: row["held messages (unacked)"])
    for row in rows:
        extra = row["held messages (unacked)"] - fewest["held messages (unacked)"]
        if extra > 100:
            row["KiB per held message"] = round((row["worker RSS MiB"] - fewest["worker RSS MiB"]) * 1024 / extra, 1)
    notes.append(
        f"one worker, threads pool, 4 slots; renders {RENDER_S:g} s, polls {POLL_S} s apart; "
        f"after: HELD_MESSAGES_MAX={held_max}, worker_eta_task_limit={eta_task_limit(held_max)}; "
        "before: worker_eta_task_limit 5000"
    )
    notes.append("KiB per held message: the RSS above the case holding fewest, over the held messages above it")
    return {"rows": rows, "notes": notes}
