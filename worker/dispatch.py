"""How a step schedules the next one: the `Dispatcher` sends a step as a message after a
countdown (Celery's in worker/tasks.py), and `DueTracking` wraps it to record in the job
store when each job's next step is due, which is what the recovery sweep reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from videoqueue.job import utcnow
from videoqueue.jobstore import JobStore
from videoqueue.parking import Parking
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
    waits past the job's deadline (it then runs at the deadline, and ends the job), and a
    step is sent as a countdown message only when it is due within COUNTDOWN_HORIZON_S
    (never more than the broker holds one safely, `BrokerTiming.max_countdown_s`) and
    fewer than HELD_MESSAGES_MAX countdown messages are held fleet-wide. Otherwise it is
    parked in the job store (due index plus parked index, `videoqueue.parking`) and the
    park timer, one `videoqueue.unpark` message sent by `send_unpark`, sends it when due
    (the sweep too, as a safety net). So what a worker holds is bounded by a setting, not
    by the jobs in flight."""

    def __init__(
        self,
        inner: Dispatcher,
        jobs: JobStore,
        settings: Settings,
        send_unpark: Callable[[float], None] | None = None,
    ) -> None:
        """`send_unpark` sends the unpark message after a countdown (s); without it parked
        steps wait for the sweep."""
        self.inner = inner
        self.jobs = jobs
        self.parking = Parking.from_settings(jobs.redis, settings)
        # The broker's own bound, which Celery's store retries (worker/tasks.py) keep to.
        self.max_countdown_s = self.parking.longest_countdown_s
        self.send_unpark = send_unpark

    def _send(self, job_id: str, countdown: float, send: Callable[[float], None]) -> None:
        # The parking's clock, not utcnow (up to 1 ms ahead): a countdown of exactly the
        # horizon is sent, not parked.
        now = time.time()
        placed = self.parking.place(job_id, now + countdown, now)
        if placed.send:
            send(countdown)
            return
        log.info("wait parked in the job store", extra={"job_id": job_id, "countdown": round(countdown, 1)})
        if placed.timer_countdown is not None and self.send_unpark is not None:
            self.send_unpark(placed.timer_countdown)

    def arm_timer(self) -> None:
        """Make sure the park timer runs by the earliest parked step, for steps parked
        elsewhere (a job the waiting room parked until its deadline): sends the unpark
        message unless a timer already runs by then."""
        countdown = self.parking.arm()
        if countdown is not None and self.send_unpark is not None:
            self.send_unpark(countdown)

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
