"""The decisions of a wait on the event stream (videoqueue.eventwait.WaitPlan), without I/O:
read everything once, then only the jobs events name, everything not final again at the
safety interval; done, timed out and block times."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.test_jobstore import make_record
from videoqueue.events import MAX_BLOCK_MS, JobEvent
from videoqueue.eventwait import WaitPlan
from videoqueue.job import JobRecord, JobStatus

AT = datetime(2025, 1, 1, tzinfo=UTC)


def rec(job_id: str, status: JobStatus) -> JobRecord:
    return make_record(job_id, status=status)


def event(entry_id: str, job_id: str, status: JobStatus) -> JobEvent:
    return JobEvent(entry_id, job_id, None, status, AT)


def test_reads_all_once_then_only_the_jobs_events_name() -> None:
    plan = WaitPlan(["a", "b", "a", "c"], None, now=0.0, full_every_s=30)
    assert plan.to_read(0.0) == ["a", "b", "c"]
    plan.read([rec("a", JobStatus.RUNNING), rec("b", JobStatus.SUCCEEDED), rec("c", JobStatus.QUEUED)])
    assert [r.id for r in plan.records()] == ["a", "b", "a", "c"]
    assert not plan.done and plan.to_read(1.0) == []
    plan.saw([event("5-0", "x", JobStatus.RUNNING), event("6-0", "c", JobStatus.SUBMITTING)])
    assert plan.since == "6-0"
    assert plan.to_read(2.0) == ["c"]
    plan.read([rec("c", JobStatus.SUCCEEDED)])
    plan.saw([])
    assert plan.since == "6-0" and plan.to_read(3.0) == []
    plan.saw([event("7-0", "a", JobStatus.SUCCEEDED)])
    assert not plan.done  # the event is not the record: read it first
    plan.read([rec("a", JobStatus.SUCCEEDED)])
    assert plan.done


def test_every_job_not_final_is_read_again_at_the_safety_interval() -> None:
    plan = WaitPlan(["a", "b"], None, now=0.0, full_every_s=30)
    plan.read([rec("a", JobStatus.RUNNING), rec("b", JobStatus.FAILED)])
    assert plan.to_read(29.9) == []
    assert plan.to_read(30.0) == ["a"]  # a lost or trimmed event: found all the same
    plan.read([rec("a", JobStatus.RUNNING)])
    assert plan.to_read(31.0) == []
    assert plan.to_read(60.0) == ["a"]


def test_block_times_and_the_timeout() -> None:
    plan = WaitPlan(["a"], 12.5, now=100.0, full_every_s=30)
    assert plan.block_ms(100.0) == MAX_BLOCK_MS
    assert plan.block_ms(110.0) == 2500  # up to the deadline
    assert not plan.timed_out(112.4) and plan.timed_out(112.5)
    assert plan.block_ms(113.0) == 1
    endless = WaitPlan(["a"], None, now=0.0, full_every_s=2)
    assert endless.block_ms(1.5) == 500 and not endless.timed_out(10**9)  # up to the full read
