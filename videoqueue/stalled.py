"""When an active job is stalled: its next step is overdue by more than the rule below
allows. One rule for what people see (`videoqueue status`, `jobs`: "running · stalled 6m",
`stalled_s` in `--json` and piped) and for the recovery sweep (videoqueue/recovery.py), which re-sends
the step of a stalled job.

The rule (docs/reliability.md, "Stalled jobs"):

- due: when the job's next step is due (the due index, else the record's `next_due_at`).
- expected interval: the countdown the last step chose, `due - updated_at` (the step
  records the job right after sending its next message), at most the longest countdown
  the broker holds safely (`BrokerTiming.max_countdown_s`: a longer wait is parked and
  sent by the park timer when due). Zero while a create or store attempt holds a lease: then
  the due time is the lease's end and already allows a whole attempt.
- allowance: max(STALL_FACTOR x interval, RECOVER_AFTER_S), doubled for each earlier
  recovery of the job (at most 2**MAX_DOUBLINGS): a job that is only waiting in a long
  queue, not lost, is re-sent a few times at most rather than once a sweep.
- stalled: overdue by more than the allowance; `stalled_s` is how long it is overdue.

"Stalled" is a display state, not a lifecycle state: the job keeps its JobStatus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from videoqueue import jobstore, keys
from videoqueue.job import JobRecord, utcnow
from videoqueue.queues import broker_timing
from videoqueue.settings import Settings

STALL_FACTOR = 3.0
MAX_DOUBLINGS = 4


@dataclass(frozen=True)
class StallRule:
    """The rule's two numbers: `floor_s` (RECOVER_AFTER_S, seconds) and `max_interval_s`
    (the broker's longest safe countdown, seconds)."""

    floor_s: float
    max_interval_s: float
    factor: float = STALL_FACTOR

    @classmethod
    def from_settings(cls, settings: Settings, floor_s: float | None = None) -> StallRule:
        """The rule for `settings`; `floor_s` overrides RECOVER_AFTER_S."""
        return cls(
            floor_s=settings.recover_after_s if floor_s is None else floor_s,
            max_interval_s=broker_timing(settings).max_countdown_s,
        )

    def expected_interval_s(self, record: JobRecord, due: datetime) -> float:
        """Seconds between the job's last step and its next, as that step scheduled it."""
        if record.submit_lease_until is not None or record.store_lease_until is not None:
            return 0.0
        return min(max((due - record.updated_at).total_seconds(), 0.0), self.max_interval_s)

    def allowance_s(self, record: JobRecord, due: datetime) -> float:
        """Seconds past `due` after which the job counts as stalled."""
        base = max(self.factor * self.expected_interval_s(record, due), self.floor_s)
        return float(base * 2 ** min(record.recoveries, MAX_DOUBLINGS))

    def stalled_s(self, record: JobRecord, due: datetime | None, now: datetime) -> float | None:
        """Seconds the job's next step is overdue if the job is stalled, else None (final
        jobs and jobs within their allowance)."""
        if record.status.is_final or due is None:
            return None
        overdue = (now - due).total_seconds()
        return overdue if overdue > self.allowance_s(record, due) else None


def due_of(record: JobRecord, score: float | None) -> datetime:
    """When the job's next step is due: the due index's `score` (epoch seconds; workers
    update only the index when they send a step), else the record's own times."""
    if score is not None:
        return datetime.fromtimestamp(score, UTC)
    return record.next_due_at or record.updated_at


def stalls(
    store: jobstore.JobStore, rule: StallRule, records: Sequence[JobRecord], now: datetime | None = None
) -> dict[str, float]:
    """`stalled_s` of each stalled job among `records`, by job id (one Redis round trip)."""
    now = now or utcnow()
    active = [r for r in records if not r.status.is_final]
    if not active:
        return {}
    pipe = store.redis.pipeline(transaction=False)
    for record in active:
        pipe.zscore(keys.DUE_INDEX, record.id)
    scores: list[float | None] = pipe.execute()
    found: dict[str, float] = {}
    for record, score in zip(active, scores, strict=True):
        if score is None:  # not indexed: no step is owed (yet)
            continue
        stalled = rule.stalled_s(record, due_of(record, score), now)
        if stalled is not None:
            found[record.id] = stalled
    return found


def duration_text(seconds: float) -> str:
    """A short human duration: 45s, 6m, 2h10m, 3d4h."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d{h}h" if h else f"{d}d"


WAITING_FOR_ENDPOINT = "waiting for its endpoint"


WAITING_REASONS = {
    "in_flight_limit": "in-flight limit",
    "rate_limit": "creates-per-minute limit",
    "provider_backoff": "provider back-off",
}
"""`JobRecord.waiting_reason` (videoqueue.room.WaitingReason) in people's words."""


def standing_text(record: JobRecord, now: datetime | None = None) -> str | None:
    """Where a job waiting in its model's room stands, for people: "#12 in line (in-flight
    limit), starts in ~6m" (the reason and the start each left out when unknown; "starts
    now" when the estimate is past). None for a job that does not wait (`queue_position`
    unset: not queued, or admitted and on its way to the provider)."""
    if record.queue_position is None:
        return None
    text = f"#{record.queue_position} in line"
    if record.waiting_reason:
        text += f" ({WAITING_REASONS.get(record.waiting_reason, record.waiting_reason)})"
    if record.estimated_start_at is not None:
        ahead = (record.estimated_start_at - (now or utcnow())).total_seconds()
        text += f", starts in ~{duration_text(ahead)}" if ahead >= 1 else ", starts now"
    return text


def describe(record: JobRecord, stalled_s: float | None, now: datetime | None = None) -> str:
    """The status people see: "running"; "running · stalled 6m"; "running · waiting for
    its endpoint" while its step is handed back because no worker here is configured for
    the provider endpoint its task was created with (record `waiting_for_endpoint`; the
    whole note is on stderr in `status`). Both, joined, when both hold. A job waiting in
    its model's room: "queued · #12 in line (in-flight limit), starts in ~6m"
    (`standing_text`)."""
    shown = [record.status.value]
    standing = standing_text(record, now)
    if standing is not None:
        shown.append(standing)
    if record.waiting_for_endpoint and not record.status.is_final:
        shown.append(WAITING_FOR_ENDPOINT)
    if stalled_s is not None:
        shown.append(f"stalled {duration_text(stalled_s)}")
    return " · ".join(shown)
