"""What a task tells Flower about its job: a small summary as the task's result, and
`JobFailed` for the step that ended the job failed or expired, so that Flower counts it.

Celery sends a task's return value (its repr) in the task-succeeded event and the repr of
its exception in task-failed; Flower shows both with no result backend."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from videoqueue.errors import VideoqueueError
from videoqueue.job import JobRecord, JobStatus

# The step that runs next for a job in each active status; final jobs have none.
NEXT_STEP: dict[JobStatus, str] = {
    JobStatus.QUEUED: "submit",
    JobStatus.SUBMITTING: "submit",
    JobStatus.RUNNING: "poll",
    JobStatus.DOWNLOADING: "store",
}

# Final statuses Flower should count as a failed task (a cancel is what the user asked for).
FAILED_ENDS = frozenset({JobStatus.FAILED, JobStatus.EXPIRED})


class JobFailed(VideoqueueError):
    """Raised by the task whose step ended its job `failed` or `expired`, after the job
    store recorded the end: Flower shows the task as FAILURE with the job's error code and
    message. Never retried (the tasks retry only Redis errors); the message is acknowledged
    (`task_acks_on_failure`)."""

    def __init__(self, job_id: str, status: str, code: str, message: str) -> None:
        # Every argument in `args`, so the exception pickles across a prefork pool.
        super().__init__(job_id, status, code, message)
        self.job_id, self.status, self.code, self.message = job_id, status, code, message

    def __str__(self) -> str:
        return f"job {self.job_id} {self.status}: {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"JobFailed({str(self)!r})"


def summary(job_id: str, record: JobRecord | None) -> dict[str, Any]:
    """Where a job stands after a step, as JSON-ready data of a few hundred bytes: job id,
    status, next step (None once final), provider and model, provider task id, the
    estimate and the cost charged so far in USD as strings (None before the provider
    billed anything), the error code of a job that ended with one. Never the prompt,
    never a key."""
    if record is None:
        return {"job_id": job_id, "status": "unknown"}
    charged = record.charged_usd
    result: dict[str, Any] = {
        "job_id": job_id,
        "status": record.status.value,
        "next": NEXT_STEP.get(record.status),
        "provider": record.provider,
        "model": record.model,
        "provider_task_id": record.provider_task_id,
        "provider_status": record.provider_status,
        "estimate_usd": str(record.cost_estimate_usd),
        "cost_usd": None if charged is None else str(charged),
    }
    if record.error is not None:
        result["error"] = record.error.code.value
    return result


def ended_by_step(record: JobRecord | None, step_started: datetime) -> JobFailed | None:
    """The JobFailed to raise if the job moved to `failed` or `expired` at or after
    `step_started` (so: during this run of the step, on this worker's clock), else None.

    A second run of a step on a job that had already ended (redelivery, a stale poll)
    returns None: one job's end counts once, and that run made no provider call."""
    if record is None or record.status not in FAILED_ENDS or not record.history:
        return None
    last = record.history[-1]
    if last.get("to") != record.status or datetime.fromisoformat(str(last["at"])) < step_started:
        return None
    code = record.error.code.value if record.error is not None else "unknown"
    message = record.error.message if record.error is not None else ""
    return JobFailed(record.id, record.status.value, code, message)
