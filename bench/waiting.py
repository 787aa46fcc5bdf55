"""Producer waiting on 10,000 jobs (issue 16, item 1): the Redis work of waiting, before
and after `wait` followed the event stream.

10,000 queued jobs are written straight into the job store (`VideoQueue.prepare` and
`JobStore.create_many`: no message, no worker); a mover thread, on its own connection,
walks a few of them to their end with the job store's own moves (queued -> submitting ->
running -> downloading -> succeeded), MOVES_PER_S status changes a second, so that there
are events to wait on. Three windows of WINDOW_S seconds, on the bench's own Redis:

- `mover alone`: nobody waits; what the moves cost (the baseline subtracted below);
- `before`: one producer waits on all 10,000 with `polling_wait_before_issue16`, a copy of
  `VideoQueue.wait` as it was (`get_many` of every id each second, which also works out
  each queued job's standing in its waiting room: one script call a job);
- `after`: the same producer with today's `VideoQueue.wait` (one read, then XREAD, then
  only the jobs events name; every job not final again each FULL_READ_EVERY_S).

Each window reads INFO before and after: commands processed, keys read (keyspace hits),
bytes sent and Redis CPU; a wait's figures are its window's minus the baseline's. Also the
event stream's bytes per entry (MEMORY USAGE over XLEN), for EVENTS_MAXLEN's sizing.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from bench.harness import BenchStack
from producer import VideoQueue, VideoRequest, WaitTimeoutError
from videoqueue import keys
from videoqueue.eventwait import FULL_READ_EVERY_S
from videoqueue.job import JobRecord, JobStatus
from videoqueue.jobstore import JobStore

MOVES_PER_S = 20.0
PATH = (JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.RUNNING, JobStatus.DOWNLOADING, JobStatus.SUCCEEDED)


def polling_wait_before_issue16(
    vq: VideoQueue,
    job_ids: Sequence[str],
    timeout: float | None = None,
    *,
    poll_interval: float = 1.0,
    on_update: Callable[[builtins.list[JobRecord]], None] | None = None,
) -> builtins.list[JobRecord]:
    """`VideoQueue.wait` before issue 16, kept as the bench's reference (the body as it was,
    `self` being `vq`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        records = vq.get_many(job_ids)
        if on_update:
            on_update(records)
        if all(r.status.is_final for r in records):
            return records
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeoutError(records)
        pause = poll_interval
        if deadline is not None:
            pause = max(0.0, min(pause, deadline - time.monotonic()))
        time.sleep(pause)


def write_jobs(vq: VideoQueue, count: int, batch: int = 500) -> list[str]:
    """`count` queued jobs stored as a producer stores them, without their messages."""
    ids: list[str] = []
    for first in range(0, count, batch):
        records = [
            vq.prepare(VideoRequest(prompt=f"waited on {first + i}")).record for i in range(min(batch, count - first))
        ]
        vq.store.create_many(records)
        ids += [r.id for r in records]
    return ids


class Mover(threading.Thread):
    """Moves jobs along PATH, one status change every 1/rate s, until stopped."""

    def __init__(self, store: JobStore, job_ids: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.store, self.pending, self.rate = store, list(job_ids), rate
        self.stop_event = threading.Event()
        self.moves = 0
        self._step = 0

    def run(self) -> None:
        while not self.stop_event.wait(1 / self.rate) and self.pending:
            job_id = self.pending[0]
            source, target = PATH[self._step], PATH[self._step + 1]
            changes: dict[str, Any] = {}
            if target is JobStatus.SUCCEEDED:
                changes = {"output_uri": f"file:///bench/{job_id}.mp4"}
            self.store.transition(job_id, {source}, target, **changes)
            self.moves += 1
            self._step += 1
            if self._step == len(PATH) - 1:
                self.pending.pop(0)
                self._step = 0

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


def server_counters(client: redis.Redis) -> dict[str, float]:
    """What a window measures, read from INFO (the INFO calls themselves count too: a few)."""
    stats: dict[str, Any] = client.info("stats")  # type: ignore[assignment]
    cpu: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    commands: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    out = {
        "commands": float(stats["total_commands_processed"]),
        "keys_read": float(stats["keyspace_hits"]) + float(stats["keyspace_misses"]),
        "bytes_out": float(stats["total_net_output_bytes"]),
        "cpu_s": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    }
    for name in ("mget", "evalsha", "xread", "xrevrange", "get"):
        out[name] = float(commands.get(f"cmdstat_{name}", {}).get("calls", 0))
    return out


def window(client: redis.Redis, seconds: float, waiter: Callable[[float], None] | None) -> dict[str, float]:
    """Per-second rates of the counters over `seconds`, with `waiter(seconds)` running (or
    nothing but the mover)."""
    before, started = server_counters(client), time.monotonic()
    if waiter is None:
        time.sleep(seconds)
    else:
        waiter(seconds)
    elapsed = time.monotonic() - started
    after = server_counters(client)
    return {name: (after[name] - before[name]) / elapsed for name in before}


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """Quick: 300 jobs, 6 s windows (numbers mean nothing)."""
    jobs = 300 if quick else 10_000
    seconds = 6.0 if quick else 75.0
    vq = stack.producer(stack.env())
    client = redis.Redis.from_url(stack.store_url)
    ids = write_jobs(vq, jobs)
    stream_bytes = client.memory_usage(keys.EVENTS_STREAM, samples=0) or 0
    stream_entries: int = client.xlen(keys.EVENTS_STREAM)  # type: ignore[assignment]
    mover = Mover(JobStore.from_url(stack.store_url), ids[: jobs // 2], MOVES_PER_S)
    mover.start()
    time.sleep(1.0)

    def wait_with(how: Callable[..., Any]) -> Callable[[float], None]:
        def waiter(span: float) -> None:
            with contextlib.suppress(WaitTimeoutError):  # the window ends before the jobs
                how(ids, timeout=span)

        return waiter

    measured = {
        "mover alone": window(client, seconds, None),
        "before: polling wait (every 1 s)": window(
            client, seconds, wait_with(lambda *a, **k: polling_wait_before_issue16(vq, *a, **k))
        ),
        "after: wait on the event stream": window(client, seconds, wait_with(vq.wait)),
    }
    mover.stop()
    baseline = measured["mover alone"]
    rows: list[dict[str, Any]] = []
    for case, rates in measured.items():
        own = {name: rates[name] - baseline[name] for name in rates}
        waiting = case != "mover alone"
        rows.append(
            {
                "case": case,
                "jobs waited on": jobs if waiting else 0,
                "status changes/s": MOVES_PER_S,
                "Redis cmds/s (all)": round(rates["commands"], 1),
                "wait's cmds/s": round(own["commands"], 1) if waiting else None,
                "wait's keys read/s": round(own["keys_read"], 1) if waiting else None,
                "wait's KiB sent/s": round(own["bytes_out"] / 1024, 1) if waiting else None,
                "wait's Redis CPU %": round(own["cpu_s"] * 100, 1) if waiting else None,
                "MGET/s": round(rates["mget"], 2),
                "EVALSHA/s": round(rates["evalsha"], 1),
                "XREAD/s": round(rates["xread"], 2),
            }
        )
    before, after = rows[1], rows[2]
    ratio = {
        name: round(before[name] / after[name], 1) if after[name] and after[name] > 0 else None
        for name in ("wait's cmds/s", "wait's keys read/s", "wait's KiB sent/s")
    }
    notes = [
        f"{jobs} queued jobs written straight with the job store; a mover thread makes {MOVES_PER_S:g} status "
        f"changes/s ({mover.moves} in all); windows of {seconds:g} s; a wait's figures are its window's minus "
        "the mover's alone",
        f"after: every job not final read again each {FULL_READ_EVERY_S:g} s (the safety net), inside the window",
        f"ratio before/after: {ratio}",
        f"event stream: {stream_bytes / max(stream_entries, 1):.0f} bytes per entry ({stream_entries} entries)",
    ]
    return {
        "rows": rows,
        "notes": notes,
        "ratio_before_to_after": ratio,
        "stream_bytes_per_entry": round(stream_bytes / max(stream_entries, 1), 1),
        "moves": mover.moves,
    }
