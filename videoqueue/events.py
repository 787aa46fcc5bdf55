"""The event stream: one Redis stream entry per status change of a job.

Every move that changes a job's status appends an entry to `keys.EVENTS_STREAM` in the
same script that stores the move (videoqueue.jobstore `_Move.of`, `movescript.Writes.xadd`),
and a created job appends its `queued` entry in the transaction that stores it: an event
exists exactly when the change does, once (a step run twice loses its compare-and-set and
writes nothing). Readers follow the stream with XREAD, from an entry id on, as `tail -f`:
`VideoQueue.events`, `videoqueue watch`, and `wait`, which re-reads only the jobs events
name. The stream is capped at about EVENTS_MAXLEN entries (`XADD MAXLEN ~`): a reader that
falls further behind than that misses events, so readers that must not (`wait`) also
re-read their records now and then.

An entry's fields, short since the stream holds a million of them (all strings):
`j` the job id; `f` the status it left (absent for a created job); `s` the status it
entered; `t` when, in epoch seconds (ms precision); and for a final status, where known:
`c` the actual cost in USD (a decimal), `o` the output URI, `ec`/`em` the error code and
message (cut to ERROR_MESSAGE_MAX characters: the record has it whole). `encode` and
`decode` do no I/O (a batch's end, fields `b`, `s` and `t`, decodes as a `BatchEvent`):
the sync and the asyncio producers share them, and an asyncio reader
sends the same XREAD / XREVRANGE and reads the replies with `entries`, `decode_all` and
`last_id` (what `read_events` and `newest_id` do on a sync client).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from videoqueue import keys
from videoqueue.errors import InvalidRequestError
from videoqueue.job import JobFailure, JobRecord, JobStatus

log = logging.getLogger("videoqueue.events")

DEFAULT_MAXLEN = 1_000_000
"""EVENTS_MAXLEN's default: about 5 events a job, so the last ~200,000 jobs' lives; 80-120 B
an entry in Redis (docs/benchmarks.md, "Producer waiting on 10,000 jobs")."""

ERROR_MESSAGE_MAX = 300
"""Characters of an error message an event carries at most."""

MAX_BLOCK_MS = 5000
"""The longest a reader blocks in one XREAD: well under redisconn.COMMAND_TIMEOUT_S, so a
blocked read is never taken for a dead server, and a loop gets back to its own checks
(a timeout, Ctrl-C) at least this often."""

START = "0"
"""`since` for the oldest event the stream still holds."""

NEW = "$"
"""`since` for events after the newest one now (what XREAD calls `$`)."""

_EVENT_ID = re.compile(r"\d{1,20}(-\d{1,20})?")


def check_since(since: str) -> str:
    """`since` if a reader can start after it: an event id (`<ms>-<seq>`, or `<ms>`), START
    or NEW; else InvalidRequestError naming it (not Redis's own error, later)."""
    if since == NEW or _EVENT_ID.fullmatch(since):
        return since
    raise InvalidRequestError(
        {"since": f"{since[:40]!r} is not an event id (like 1735733130250-0, as events carry), '0' or '$'"}
    )


@dataclass(frozen=True)
class JobEvent:
    """One status change of a job, as the stream holds it."""

    id: str
    """The stream entry's id (`<ms>-<seq>`): where a reader resumes (`since`)."""
    job_id: str
    old_status: JobStatus | None
    """The status the job left; None for a created job."""
    status: JobStatus
    at: datetime
    """When the change was stored (UTC)."""
    cost_usd: Decimal | None = None
    """Final events: what the provider charged for the job's task, if known."""
    output_uri: str | None = None
    """Final events: where the video is (succeeded jobs)."""
    error: JobFailure | None = None
    """Final events: why the job ended badly (code and message, the message cut)."""

    @property
    def final(self) -> bool:
        """True when the job entered a final status."""
        return self.status.is_final

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON values (one line of `videoqueue watch --json`)."""
        return {
            "id": self.id,
            "job_id": self.job_id,
            "old_status": None if self.old_status is None else self.old_status.value,
            "status": self.status.value,
            "at": self.at.isoformat(),
            "cost_usd": None if self.cost_usd is None else float(self.cost_usd),
            "output_uri": self.output_uri,
            "error": None if self.error is None else {"code": self.error.code.value, "message": self.error.message},
        }


@dataclass(frozen=True)
class BatchEvent(JobEvent):
    """The end of a batch (videoqueue.batches): its last job ended. Read as a JobEvent so
    every reader moves past it, with `job_id` "" (no job's: readers of some jobs leave it
    out), `status` succeeded and `final` True whatever its jobs' outcomes (the batch record
    has them), and `batch_id`. Stream fields: `b` the batch id, `s` "batch.completed",
    `t` when."""

    batch_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON values (`type` "batch.completed")."""
        return {"id": self.id, "type": "batch.completed", "batch_id": self.batch_id, "at": self.at.isoformat()}


def encode(before: JobRecord | None, after: JobRecord) -> dict[str, str]:
    """The stream fields of the change from `before` (None: `after` is new) to `after`, the
    record as it is stored (its `updated_at` is the event's time)."""
    fields = {"j": after.id}
    if before is not None:
        fields["f"] = before.status.value
    fields["s"] = after.status.value
    fields["t"] = f"{after.updated_at.timestamp():.3f}"
    if after.status.is_final:
        if after.cost_usd is not None:
            fields["c"] = str(after.cost_usd)
        if after.output_uri:
            fields["o"] = after.output_uri
        if after.error is not None:
            fields["ec"] = after.error.code.value
            fields["em"] = after.error.message[:ERROR_MESSAGE_MAX]
    return fields


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode(entry_id: str | bytes, fields: dict[Any, Any]) -> JobEvent:
    """The event of a stream entry (its id and fields, as str or bytes). Raises ValueError
    for an entry this version cannot read (a status or error code it does not know)."""
    data = {_text(k): _text(v) for k, v in fields.items()}
    if "b" in data and "j" not in data:
        try:
            at = datetime.fromtimestamp(float(data["t"]), UTC)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"event {_text(entry_id)}: unreadable ({exc!r})") from exc
        return BatchEvent(
            id=_text(entry_id), job_id="", old_status=None, status=JobStatus.SUCCEEDED, at=at, batch_id=data["b"]
        )
    try:
        old = data.get("f")
        cost = data.get("c")
        error = None
        if "ec" in data:
            error = JobFailure.model_validate({"code": data["ec"], "message": data.get("em", "")})
        return JobEvent(
            id=_text(entry_id),
            job_id=data["j"],
            old_status=JobStatus(old) if old else None,
            status=JobStatus(data["s"]),
            at=datetime.fromtimestamp(float(data["t"]), UTC),
            cost_usd=Decimal(cost) if cost is not None else None,
            output_uri=data.get("o"),
            error=error,
        )
    except (KeyError, ValueError, InvalidOperation) as exc:
        raise ValueError(f"event {_text(entry_id)}: unreadable ({exc!r})") from exc


def entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The (id, fields) entries of redis-py's XREAD reply on the one stream (RESP2: a list
    of [stream, entries]; RESP3: a map of stream to [entries]; empty or None: nothing)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for found in reply.values() for entry in found[0]]
    return [entry for _stream, found in reply for entry in found]


def decode_all(found: list[tuple[Any, dict[Any, Any]]]) -> list[JobEvent]:
    """The events of stream entries, in order, leaving out (and logging) any this version
    cannot read: a newer version's status must not stop every reader."""
    events: list[JobEvent] = []
    for entry_id, fields in found:
        try:
            events.append(decode(entry_id, fields))
        except ValueError as exc:
            log.warning("skipped an event: %s", exc)
    return events


def order(entry_id: str) -> tuple[int, int]:
    """A stream entry id (`<ms>-<seq>`, or `<ms>`) as a key that sorts as the stream does."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def last_id(reply: Any) -> str:
    """The id after which a reader starts to see only new events, from an XREVRANGE
    `+ - COUNT 1` reply: the newest entry's, or "0-0" for an empty stream."""
    return _text(reply[0][0]) if reply else "0-0"


def read_events(client: Any, since: str = NEW, *, block_ms: int | None = None, count: int = 1000) -> list[JobEvent]:
    """Up to `count` events after `since` (an event id, START for the oldest kept, NEW for
    only those to come), waiting up to `block_ms` (at most MAX_BLOCK_MS; None or 0: not at
    all) for one when there is none; an empty list when none came. `client` is a sync Redis
    client. A loop resumes from the last event's id; one starting at NEW takes
    `newest_id` first, so that nothing stored between two reads is missed."""
    block = None if block_ms is None else max(0, min(block_ms, MAX_BLOCK_MS))
    if block == 0:
        block = None  # XREAD BLOCK 0 would wait for ever
    reply = client.xread({keys.EVENTS_STREAM: since}, count=count, block=block)
    return decode_all(entries(reply))


def newest_id(client: Any) -> str:
    """The id of the newest event now, "0-0" when there is none (sync client): a `since`
    that sees every event stored after this call."""
    return last_id(client.xrevrange(keys.EVENTS_STREAM, "+", "-", count=1))


class Follower:
    """The decisions of following the stream for a reader (`VideoQueue.events`,
    `AsyncVideoQueue.events`), without I/O: where the next read starts, how long it may
    block (ms), which events to hand on. `job_ids` None: every job's; `block` seconds: stop
    once none of those came for that long (None: never). Times are monotonic seconds given
    by the caller, as:

        follow = Follower(since, job_ids, block, now=monotonic())
        while (wait_ms := follow.block_ms(monotonic())) is not None:
            yield from follow.take(<read_events(since=follow.since, block_ms=wait_ms)>, monotonic())
    """

    def __init__(self, since: str, job_ids: Iterable[str] | None, block: float | None, *, now: float) -> None:
        self.since = check_since(since)
        """The id of the last event read: where the next read starts."""
        self.wanted = None if job_ids is None else set(job_ids)
        self.block = block
        self._quiet_since = now

    def block_ms(self, now: float) -> int | None:
        """How long the next read may block (1 to MAX_BLOCK_MS ms), or None: stop, none of
        the wanted events came for `block` seconds."""
        if self.block is None:
            return MAX_BLOCK_MS
        left = self.block - (now - self._quiet_since)
        if left <= 0:
            return None
        return min(MAX_BLOCK_MS, max(1, int(left * 1000)))

    def take(self, found: list[JobEvent], now: float) -> list[JobEvent]:
        """The wanted events among those just read; the next read starts after the last."""
        if found:
            self.since = found[-1].id
        kept = [event for event in found if self.wanted is None or event.job_id in self.wanted]
        if kept:
            self._quiet_since = now
        return kept
