"""What a task tells Flower: the summary it returns and JobFailed for the step that ended
a job failed or expired (worker/outcome.py), on an in-process fake Redis job store."""

from __future__ import annotations

import json
import pickle
from datetime import timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from tests.unit.helpers import seedance_request, walk_to
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from videoqueue.lifecycle import sources
from worker.outcome import JobFailed, ended_by_step, summary


def make_record(job_id: str = "job-1") -> JobRecord:
    now = utcnow()
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request=seedance_request("a secret prompt"),
        cost_estimate_usd=Decimal("0.42"),
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=1),
    )


@pytest.fixture
def store() -> JobStore:
    jobs = JobStore(fakeredis.FakeRedis(decode_responses=True))
    jobs.create_many([make_record()])
    return jobs


def end(store: JobStore, status: JobStatus, code: ErrorCode, message: str) -> JobRecord:
    ended = store.transition("job-1", sources(status), status, error=JobFailure(code=code, message=message))
    assert ended is not None
    return ended


def test_the_summary_tells_status_next_step_and_cost_and_nothing_secret(store: JobStore) -> None:
    running = walk_to(store, "job-1", JobStatus.RUNNING, provider_task_id="cgt-1")
    got = summary("job-1", running)
    assert got["status"] == "running" and got["next"] == "poll"
    assert got["estimate_usd"] == "0.42" and got["cost_usd"] is None
    assert got["provider_task_id"] == "cgt-1"
    done = walk_to(store, "job-1", JobStatus.SUCCEEDED, cost_usd=Decimal("0.40"), uncertain_cost_usd=Decimal("0.1"))
    got = summary("job-1", done)
    assert got["status"] == "succeeded" and got["next"] is None and got["cost_usd"] == "0.50"
    text = json.dumps(got)
    assert "secret" not in text and len(text) < 400
    assert summary("gone", None) == {"job_id": "gone", "status": "unknown"}


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (JobStatus.FAILED, ErrorCode.CONTENT_FILTERED),
        (JobStatus.FAILED, ErrorCode.STORAGE),
        (JobStatus.EXPIRED, ErrorCode.DEADLINE),
    ],
)
def test_the_run_that_ended_the_job_failed_or_expired_raises_with_its_error(
    store: JobStore, status: JobStatus, code: ErrorCode
) -> None:
    started = utcnow()
    ended = end(store, status, code, "the provider said no")
    failed = ended_by_step(ended, started)
    assert isinstance(failed, JobFailed)
    assert failed.code == code.value and failed.status == status.value
    assert f"job-1 {status.value}: {code.value}: the provider said no" in repr(failed)
    # It crosses a prefork pool's pipe and Celery's event as it is.
    again: Any = pickle.loads(pickle.dumps(failed))
    assert repr(again) == repr(failed)


def test_a_second_run_on_a_job_already_ended_does_not_raise_again(store: JobStore) -> None:
    ended = end(store, JobStatus.FAILED, ErrorCode.CONTENT_FILTERED, "blocked")
    later = utcnow() + timedelta(microseconds=1)
    assert ended_by_step(store.get("job-1"), later) is None
    assert ended is not None and summary("job-1", ended)["error"] == "content_filtered"


def test_succeeded_and_cancelled_jobs_do_not_count_as_failed(store: JobStore) -> None:
    started = utcnow()
    cancelled = store.transition("job-1", sources(JobStatus.CANCELLED), JobStatus.CANCELLED)
    assert ended_by_step(cancelled, started) is None
    assert ended_by_step(None, started) is None


def test_every_task_raises_job_failed_as_expected_never_retried_and_acknowledged() -> None:
    from worker import tasks

    for task in (tasks.submit, tasks.poll, tasks.store, tasks.cancel):
        assert task.throws == (JobFailed,)  # one INFO line, no traceback
        assert not issubclass(JobFailed, tuple(task.autoretry_for))
        assert task.acks_late and task.acks_on_failure
