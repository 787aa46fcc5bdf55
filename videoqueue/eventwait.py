"""Waiting for jobs to end on the event stream: the decisions, without I/O.

A producer waiting on N jobs reads their records once, then blocks on the event stream
(videoqueue.events) and reads again only the jobs an event names: the cost of waiting grows
with the events, not with N x seconds. Every FULL_READ_EVERY_S it reads again every job not
yet final, which covers a reader that fell behind a trimmed stream or a read lost to a
failover. The stream position is taken before the first read of the records, so a change
stored between the two is seen as an event.

`WaitPlan` holds those decisions for one wait; the sync (`VideoQueue.wait`) and the asyncio
producer drive it with their own I/O, as:

    plan = WaitPlan(job_ids, timeout, now=monotonic())
    plan.since = <events.newest_id>                     # before the first read
    while True:
        ids = plan.to_read(monotonic())
        if ids:
            plan.read(<records of ids>)                 # UnknownJobError as get_many
            <on_update(plan.records())>
        if plan.done:
            return plan.records()
        if plan.timed_out(monotonic()):
            raise WaitTimeoutError(plan.records())
        plan.saw(<read_events(since=plan.since, block_ms=plan.block_ms(monotonic()))>)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from videoqueue.events import MAX_BLOCK_MS, JobEvent
from videoqueue.job import JobRecord

FULL_READ_EVERY_S = 30.0
"""Seconds between two reads of every job a wait still waits for (the safety net)."""


class WaitPlan:
    """What a wait on `job_ids` does next: which records to read, how long to block on the
    stream, whether it is done or out of time. Times are monotonic seconds given by the
    caller; `timeout` None waits for ever."""

    def __init__(
        self,
        job_ids: Sequence[str],
        timeout: float | None,
        *,
        now: float,
        full_every_s: float = FULL_READ_EVERY_S,
    ) -> None:
        self.job_ids = list(job_ids)
        self.deadline = None if timeout is None else now + timeout
        self.full_every_s = full_every_s
        self.since = "0-0"
        """The id of the last event seen: where the next read of the stream starts. The
        caller sets it to the stream's newest id before the first read of the records."""
        self._wanted = set(self.job_ids)
        self._records: dict[str, JobRecord] = {}
        self._stale: set[str] = set(self._wanted)
        self._next_full = now + full_every_s

    def to_read(self, now: float) -> list[str]:
        """The ids whose records to read now, each once, in the order given: all of them at
        first, then those events named, and every one not yet final each `full_every_s`."""
        if now >= self._next_full:
            self._stale.update(j for j in self._wanted if not self._final(j))
            self._next_full = now + self.full_every_s
        return [j for j in dict.fromkeys(self.job_ids) if j in self._stale]

    def read(self, found: Iterable[JobRecord]) -> None:
        """Take in the records just read."""
        for record in found:
            self._records[record.id] = record
            self._stale.discard(record.id)

    def saw(self, events: Sequence[JobEvent]) -> None:
        """Take in the events just read from the stream: the jobs they name are read again."""
        if events:
            self.since = events[-1].id
        self._stale.update(e.job_id for e in events if e.job_id in self._wanted)

    def _final(self, job_id: str) -> bool:
        record = self._records.get(job_id)
        return record is not None and record.status.is_final

    @property
    def done(self) -> bool:
        """True when every job's last read record is final and none is to be read again."""
        return not self._stale and all(self._final(j) for j in self._wanted)

    def records(self) -> list[JobRecord]:
        """The records as last read, in the order of `job_ids` (every id read at least once)."""
        return [self._records[j] for j in self.job_ids]

    def timed_out(self, now: float) -> bool:
        """True when the timeout has passed."""
        return self.deadline is not None and now >= self.deadline

    def block_ms(self, now: float) -> int:
        """How long the next read of the stream may block (ms, at least 1): until the next
        full read or the deadline, at most events.MAX_BLOCK_MS."""
        until = self._next_full - now
        if self.deadline is not None:
            until = min(until, self.deadline - now)
        return max(1, min(MAX_BLOCK_MS, math.ceil(until * 1000)))
