"""Putting stranded jobs back on their way.

A step that waits beyond the countdown horizon, or is sent when the fleet holds its bound
of countdown messages (videoqueue.parking), sends nothing: it parks the job (a separate
index), and the park timer (`run_park_timer`) sends the step when due, the sweep too
(`send_parked`): a parked wait is not a lost message.

Every step that schedules a job's next message records when it is due
(`next_due_at`, indexed in Redis). A stalled job (videoqueue.stalled: overdue by more than
max(3 x its expected interval, RECOVER_AFTER_S)) lost its message: a worker died holding
it, or crashed between recording a step and sending the next. The sweep re-sends the
message its status calls for. The claim on a
stranded job is a compare-and-set, so concurrent sweeps (every worker runs one, and
`videoqueue recover` can run anywhere) recover each stall once; a message that turns up
after all is harmless, since every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from videoqueue.job import TASK_POLL, TASK_STORE, TASK_SUBMIT, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from videoqueue.lifecycle import SUBMIT_STATUSES
from videoqueue.parking import Parking
from videoqueue.stalled import StallRule, due_of

Send = Callable[[str, list[Any]], None]


@dataclass
class RecoveryReport:
    """What one sweep did."""

    examined: int = 0
    recovered: dict[str, int] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)
    unparked: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Jobs put back on their way."""
        return sum(self.recovered.values())


def _message_for(record: JobRecord) -> tuple[str, list[Any]]:
    if record.status in SUBMIT_STATUSES:
        return TASK_SUBMIT, [record.id]
    if record.status is JobStatus.RUNNING:
        return TASK_POLL, [record.id, record.poll_seq]
    return TASK_STORE, [record.id]


def recover_stranded(
    store: JobStore,
    send: Send,
    rule: StallRule,
    *,
    now: datetime | None = None,
    limit: int = 1000,
    dry_run: bool = False,
) -> RecoveryReport:
    """Send the steps parked in the job store that are now due, then find the stalled
    jobs (`rule`) and re-send their next step. `examined` counts the jobs overdue by at
    least the rule's floor."""
    now = now or utcnow()
    report = RecoveryReport()
    if not dry_run:
        send_parked(store, send, now=now, limit=limit, report=report)
    threshold = now - timedelta(seconds=rule.floor_s)
    for job_id in store.due_before(threshold.timestamp(), limit):
        report.examined += 1

        def claim(record: JobRecord) -> JobRecord | None:
            # The index holds the latest due time (workers update only the index when they
            # send a step); the record's may be older.
            if rule.stalled_s(record, due_of(record, store.due_at(record.id)), now) is None:
                return None
            if record.status is JobStatus.SUBMITTING and record.submit_lease_until and record.submit_lease_until > now:
                return None  # a create is in progress; its lease protects it
            record.recoveries += 1
            record.next_due_at = now
            return record

        if dry_run:
            record = store.get(job_id)
            claimed = claim(record) if record else None
        else:
            claimed = store.update(job_id, claim)
        if claimed is None:
            continue
        if not dry_run:
            name, args = _message_for(claimed)
            send(name, args)
        report.recovered[claimed.status.value] = report.recovered.get(claimed.status.value, 0) + 1
        report.job_ids.append(job_id)
    return report


def send_parked(
    store: JobStore,
    send: Send,
    *,
    now: datetime | None = None,
    limit: int = 1000,
    report: RecoveryReport | None = None,
) -> RecoveryReport:
    """Send the next step of every job whose parked wait is over. Taking a job out of the
    parked index is atomic, so concurrent sweeps send each step once; the due index keeps
    the due time, so a message lost after this is recovered like any other."""
    now = now or utcnow()
    report = report or RecoveryReport()
    for job_id in store.unpark_due(now.timestamp(), limit):
        record = store.get(job_id)
        if record is None or record.status.is_final:
            continue
        name, args = _message_for(record)
        send(name, args)
        report.unparked.append(job_id)
    return report


SendAfter = Callable[[str, list[Any], float], None]
"""Sends a task (name, arguments) after a countdown (s)."""


def run_park_timer(
    store: JobStore, parking: Parking, send: SendAfter, send_unpark: Callable[[float], None]
) -> list[str]:
    """One run of the park timer (the `videoqueue.unpark` task): send the parked steps due
    now, and those due within the lead with their remaining countdown (`Parking.take_due`,
    at most a batch; each step taken by one run only), then send the next unpark message
    the re-armed timer calls for. Returns the ids sent. A run that dies after the take
    leaves those jobs in the due index only: stalled, recovered by the sweep."""
    unparked = parking.take_due()
    ids = [job_id for job_id, _ in unparked.steps]
    sent: list[str] = []
    for (job_id, countdown), record in zip(unparked.steps, store.get_many(ids), strict=True):
        if record is None or record.status.is_final:
            continue
        name, args = _message_for(record)
        send(name, args, countdown)
        sent.append(job_id)
    if unparked.timer_countdown is not None:
        send_unpark(unparked.timer_countdown)
    return sent
