"""The stalled rule (videoqueue.stalled): one rule for what `status`/`jobs` show and what
the recovery sweep re-sends."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.helpers import seedance_request
from tests.unit.test_pipeline import Env, make_settings
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.queues import broker_timing
from videoqueue.recovery import recover_stranded
from videoqueue.stalled import StallRule, describe, due_of, stalls

RULE = StallRule(floor_s=30, max_interval_s=300)


def record(status: JobStatus = JobStatus.RUNNING, **changes: Any) -> JobRecord:
    now = utcnow()
    values: dict[str, Any] = {
        "id": "job-1",
        "status": status,
        "provider": "byteplus",
        "model": "m",
        "request": seedance_request("p", model="m"),
        "cost_estimate_usd": 0,
        "created_at": now,
        "updated_at": now,
        "deadline_at": now + timedelta(hours=1),
    }
    return JobRecord(**{**values, **changes})


def stalled_at(job: JobRecord, interval: float, overdue: float) -> float | None:
    due = job.updated_at + timedelta(seconds=interval)
    return RULE.stalled_s(job, due, due + timedelta(seconds=overdue))


def test_a_short_interval_stalls_after_the_floor() -> None:
    job = record()
    assert stalled_at(job, 3, 29) is None
    assert stalled_at(job, 3, 31) == pytest.approx(31)


def test_a_long_interval_stalls_after_three_intervals() -> None:
    job = record()
    assert stalled_at(job, 20, 59) is None
    assert stalled_at(job, 20, 61) == pytest.approx(61)


def test_the_interval_counts_at_most_the_longest_safe_countdown() -> None:
    # A longer wait was parked and is sent by the sweep itself when due.
    job = record()
    assert stalled_at(job, 3600, 899) is None
    assert stalled_at(job, 3600, 901) is not None


def test_a_lease_end_is_given_the_floor_only() -> None:
    job = record(JobStatus.DOWNLOADING, store_lease_until=utcnow() + timedelta(seconds=1500))
    assert stalled_at(job, 1500, 31) is not None
    submitting = record(JobStatus.SUBMITTING, submit_lease_until=utcnow() + timedelta(seconds=180))
    assert stalled_at(submitting, 180, 31) is not None


def test_each_recovery_doubles_the_allowance_up_to_a_bound() -> None:
    assert stalled_at(record(recoveries=1), 0, 59) is None
    assert stalled_at(record(recoveries=1), 0, 61) is not None
    assert stalled_at(record(recoveries=50), 0, 30 * 16 - 1) is None
    assert stalled_at(record(recoveries=50), 0, 30 * 16 + 1) is not None


def test_a_final_job_is_never_stalled() -> None:
    assert stalled_at(record(JobStatus.SUCCEEDED), 0, 10_000) is None


def test_describe_shows_the_lifecycle_status_and_how_long_it_is_stalled() -> None:
    job = record()
    assert describe(job, None) == "running"
    assert describe(job, 372) == "running · stalled 6m"
    assert describe(job, 45) == "running · stalled 45s"
    assert describe(job, 7300) == "running · stalled 2h01m"


def test_the_rule_follows_the_settings() -> None:
    settings = make_settings(recover_after_s=45)
    rule = StallRule.from_settings(settings)
    assert rule.floor_s == 45
    assert rule.max_interval_s == broker_timing(settings).max_countdown_s
    assert StallRule.from_settings(settings, floor_s=5).floor_s == 5


def test_due_prefers_the_index() -> None:
    job = record(next_due_at=utcnow())
    assert due_of(job, 0.0) == datetime.fromtimestamp(0.0, job.created_at.tzinfo)
    assert due_of(job, None) == job.next_due_at


@pytest.fixture
def env(tmp_path: Path) -> Env:
    # Defaults of RECOVER_AFTER_S and of the poll schedule's intervals.
    return Env(tmp_path, make_settings(recover_after_s=60, poll_initial_s=3, poll_max_s=60))


@pytest.mark.parametrize("overdue", [5, 59, 61, 200, 299])
def test_status_and_the_sweep_agree(env: Env, overdue: float) -> None:
    """Seen: after a worker's kill -9 a job showed `running` for 7 minutes and
    `recover --dry-run` found nothing until it was 300 s overdue."""
    job_id = env.running_job()  # poll 1 sent with a countdown of 3 s, then the worker died
    score = env.store.due_at(job_id)
    assert score is not None
    now = datetime.fromtimestamp(score, utcnow().tzinfo) + timedelta(seconds=overdue)
    rule = StallRule.from_settings(env.settings)

    shown = stalls(env.store, rule, [env.job(job_id)], now)
    sent: list[tuple[str, list[Any]]] = []
    report = recover_stranded(env.store, lambda n, a: sent.append((n, a)), rule, now=now, dry_run=True)

    stalled = overdue > 60
    assert (job_id in shown) is stalled
    assert report.job_ids == ([job_id] if stalled else [])
    assert sent == []  # a dry run sends nothing
    if stalled:
        assert shown[job_id] == pytest.approx(overdue)


def test_a_backlog_is_re_sent_a_few_times_not_every_sweep(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = env.new_job()  # queued; its submit message waits behind a long queue
    rule = StallRule.from_settings(env.settings)
    created = env.job(job_id).created_at
    sent: list[tuple[str, list[Any]]] = []
    resends = 0
    for minute in range(1, 61):
        now = created + timedelta(minutes=minute, seconds=1)
        monkeypatch.setattr("videoqueue.jobstore.utcnow", lambda now=now: now)  # the store's clock too
        report = recover_stranded(env.store, lambda n, a: sent.append((n, a)), rule, now=now)
        resends += report.total
    # Every minute for an hour with a fixed threshold; doubling: 1, 2, 4, 8, 16, then every 16 min.
    assert 4 <= resends <= 8
    assert len(sent) == resends
    assert env.job(job_id).status is JobStatus.QUEUED


def test_a_job_handed_back_for_want_of_its_endpoint_is_not_shown_as_plain_running() -> None:
    # Seen: `jobs` showed a plain "running" for a job no worker here could follow.
    note = "waiting for a worker configured for endpoint host ark.example (fingerprint 1a2b)"
    job = record().model_copy(update={"waiting_for_endpoint": note})
    assert describe(job, None) == "running · waiting for its endpoint"
    assert describe(job, 372) == "running · waiting for its endpoint · stalled 6m"
    ended = record(JobStatus.FAILED).model_copy(update={"waiting_for_endpoint": note})
    assert describe(ended, None) == "failed"
