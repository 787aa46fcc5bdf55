"""How a step schedules the next one: the `Dispatcher` sends a step as a message after a
countdown (Celery's in worker/tasks.py), and `DueTracking` wraps it to record in the job
store when each job's next step is due, which is what the recovery sweep reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Protocol

from videoqueue.job import utcnow
from videoqueue.jobstore import JobStore
from videoqueue.queues import broker_timing
from videoqueue.settings import Settings

log = logging.getLogger("videoqueue.pipeline")


class Dispatcher(Protocol):
    """Sends the next step of a job as a message, after `countdown` seconds."""

    def submit(self, job_id: str, countdown: float) -> None: ...

    def poll(self, job_id: str, seq: int, countdown: float) -> None: ...

    def store(self, job_id: str, countdown: float) -> None: ...


class DueTracking:
    """Sends through another dispatcher and records when the job's next step is due, so
    the recovery sweep can tell a job that lost its message from one that is waiting.

    Every countdown a step schedules passes here, and here it is bounded: a submit never
    waits past the job's deadline (it then runs at the deadline, and ends the job), and no
    message is sent with a countdown longer than the broker holds one safely
    (`BrokerTiming.max_countdown_s`; on Redis a longer one would be delivered a second time
    once the visibility timeout passed). A longer wait is parked in the job store instead
    (due index plus parked index) and the sweep sends the step when it is due."""

    def __init__(self, inner: Dispatcher, jobs: JobStore, settings: Settings) -> None:
        self.inner = inner
        self.jobs = jobs
        self.max_countdown_s = broker_timing(settings).max_countdown_s

    def _send(self, job_id: str, countdown: float, send: Callable[[float], None]) -> None:
        due = (utcnow() + timedelta(seconds=countdown)).timestamp()
        if countdown > self.max_countdown_s:
            self.jobs.park(job_id, due)
            log.info("wait parked in the job store", extra={"job_id": job_id, "countdown": round(countdown, 1)})
            return
        send(countdown)
        self.jobs.mark_due(job_id, due)

    def submit(self, job_id: str, countdown: float) -> None:
        job = self.jobs.get(job_id)
        to_deadline = (job.deadline_at - utcnow()).total_seconds() if job is not None else 0.0
        if to_deadline > 0:
            # Before the provider has the task, no wait runs past the deadline. Past it,
            # only a create in progress is waited for (its lease), not in a tight loop.
            countdown = min(countdown, to_deadline + 0.5)
        self._send(job_id, countdown, lambda c: self.inner.submit(job_id, c))

    def poll(self, job_id: str, seq: int, countdown: float) -> None:
        self._send(job_id, countdown, lambda c: self.inner.poll(job_id, seq, c))

    def store(self, job_id: str, countdown: float) -> None:
        self._send(job_id, countdown, lambda c: self.inner.store(job_id, c))
