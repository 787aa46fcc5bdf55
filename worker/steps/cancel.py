"""The cancel step: carry out a cancel the producer asked for."""

from __future__ import annotations

from videoqueue.job import JobStatus
from worker.steps.poll import PollStep


class CancelStep(PollStep):
    """Cancels a job; a poll-step subclass because a job at the provider is checked first
    (a finished task is stored, a queued one cancelled there, a rendering one followed)."""

    def cancel(self, job_id: str) -> None:
        """Carry out a cancel the producer asked for."""
        job = self.store.get(job_id)
        if job is None or job.status.is_final or not job.cancel_requested:
            return
        if job.status is JobStatus.QUEUED:
            self.store.transition(job.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
        elif (
            job.status is JobStatus.RUNNING
            and job.provider_task_id
            # Created with another endpoint: the poll chain, on a worker that matches, cancels it.
            and not self._left_to_matching_worker(job, None)
        ):
            # Status first: a finished task is stored, a queued one cancelled, a rendering
            # one followed (its poll chain goes on; each poll tries again).
            self._check(job, seq=None)
