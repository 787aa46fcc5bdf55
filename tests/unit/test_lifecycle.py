"""The lifecycle table (videoqueue.lifecycle), the job store enforcing it, the final-move
hooks (videoqueue.final_hooks) and records written by earlier versions."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from tests.unit.helpers import seedance_request, walk_to
from videoqueue import final_hooks
from videoqueue.errors import IllegalTransitionError, VideoqueueError
from videoqueue.job import ACTIVE_STATUSES, FINAL_STATUSES, JobRecord, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.keys import job_key
from videoqueue.lifecycle import ENTRY, MOVES, SUBMIT_STATUSES, allowed, sources
from videoqueue.storedform import with_long_names

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def make_record(job_id: str = "a") -> JobRecord:
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request=seedance_request("a red fox in snow", audio=True),
        cost_estimate_usd=Decimal("0.25"),
        created_at=T0,
        updated_at=T0,
        deadline_at=T0 + timedelta(hours=2),
    )


@pytest.fixture
def store() -> JobStore:
    jobs = JobStore(fakeredis.FakeRedis(decode_responses=True))
    jobs.create_many([make_record()])
    return jobs


def _reachable(start: JobStatus) -> set[JobStatus]:
    seen = {start}
    frontier = [start]
    while frontier:
        status = frontier.pop()
        for move in MOVES:
            if move.source is status and move.target not in seen:
                seen.add(move.target)
                frontier.append(move.target)
    return seen


def test_every_status_is_reached_from_the_entry_and_every_active_one_can_end() -> None:
    assert _reachable(ENTRY) == set(JobStatus)
    for status in ACTIVE_STATUSES:
        assert _reachable(status) & FINAL_STATUSES, status


def test_final_statuses_are_left_only_by_a_store_retry_and_moves_are_listed_once() -> None:
    out_of_final = [(m.source, m.target) for m in MOVES if m.source.is_final]
    assert out_of_final == [(JobStatus.FAILED, JobStatus.DOWNLOADING)]
    assert len({(m.source, m.target) for m in MOVES}) == len(MOVES)
    assert all(m.source is not m.target and m.by and m.when for m in MOVES)


def test_sources_read_the_table() -> None:
    assert sources(JobStatus.FAILED) == ACTIVE_STATUSES
    assert sources(JobStatus.CANCELLED) == {JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.DOWNLOADING}
    assert sources(JobStatus.EXPIRED) == SUBMIT_STATUSES | {JobStatus.RUNNING}
    assert sources(JobStatus.SUCCEEDED) == {JobStatus.DOWNLOADING}
    assert not allowed(JobStatus.RUNNING, JobStatus.SUCCEEDED)


def test_a_transition_the_table_does_not_allow_is_refused_loudly_and_changes_nothing(store: JobStore) -> None:
    before = store.redis.get(job_key("a"))
    # Refused for the from-set, whatever status the job is in now (queued: no move either way).
    with pytest.raises(IllegalTransitionError, match="from running to succeeded") as raised:
        store.transition("a", {JobStatus.DOWNLOADING, JobStatus.RUNNING}, JobStatus.SUCCEEDED)
    assert isinstance(raised.value, VideoqueueError) and raised.value.target == "succeeded"
    with pytest.raises(IllegalTransitionError):
        store.transition("a", {JobStatus.QUEUED}, JobStatus.QUEUED)
    assert store.redis.get(job_key("a")) == before


def test_an_update_that_makes_an_illegal_move_raises_and_stores_nothing(store: JobStore) -> None:
    before = store.redis.get(job_key("a"))

    def jump(record: JobRecord) -> JobRecord:
        record.status = JobStatus.DOWNLOADING
        return record

    with pytest.raises(IllegalTransitionError, match="from queued to downloading"):
        store.update("a", jump)
    assert store.redis.get(job_key("a")) == before
    assert store.count_by_status()["queued"] == 1 and store.count_by_status()["downloading"] == 0


def test_final_hooks_run_once_in_the_transaction_of_the_final_move(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, bool]] = []

    def record_end(pipe: Any, before: JobRecord, after: JobRecord) -> final_hooks.Writes:
        calls.append((before.status.value, after.status.value, final_hooks.first_end(before)))
        return lambda multi: multi.incr("test:ends")

    monkeypatch.setattr(final_hooks, "FINAL_HOOKS", (*final_hooks.FINAL_HOOKS, record_end))
    walk_to(store, "a", JobStatus.DOWNLOADING, cost_usd=Decimal("0.2"), billed_units=1)
    assert calls == []  # no hook on the way
    assert walk_to(store, "a", JobStatus.FAILED) is not None
    assert store.transition("a", {JobStatus.DOWNLOADING}, JobStatus.FAILED) is None  # a redelivery
    assert calls == [("downloading", "failed", True)]
    # Stored again (videoqueue store retry) and ended a second time: the hooks run, the
    # cost is not settled again.
    assert store.transition("a", {JobStatus.FAILED}, JobStatus.DOWNLOADING) is not None
    assert store.transition("a", {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED) is not None
    assert calls[-1] == ("downloading", "succeeded", False)
    assert store.redis.get("test:ends") == "2"


def test_a_failing_final_hook_leaves_the_job_where_it_was(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(pipe: Any, before: JobRecord, after: JobRecord) -> final_hooks.Writes | None:
        raise RuntimeError("hook failed")

    monkeypatch.setattr(final_hooks, "FINAL_HOOKS", (*final_hooks.FINAL_HOOKS, broken))
    with pytest.raises(RuntimeError, match="hook failed"):
        store.transition("a", {JobStatus.QUEUED}, JobStatus.CANCELLED)
    record = store.get("a")
    assert record is not None and record.status is JobStatus.QUEUED
    assert store.count_by_status()["cancelled"] == 0


def _old_form(**fields: Any) -> str:
    data = json.loads(make_record().model_dump_json(exclude={"cancel_requested_at"}))
    data["updated_at"] = (T0 + timedelta(minutes=5)).isoformat()
    data.update(fields)
    return json.dumps(data)


def test_records_of_earlier_versions_read_with_their_cancel_request(store: JobStore) -> None:
    # The previous version: a flag beside the provider's own status.
    store.redis.set(job_key("a"), _old_form(status="running", cancel_requested=True, provider_status="running"))
    record = store.get("a")
    assert record is not None and record.cancel_requested
    assert record.cancel_requested_at == T0 + timedelta(minutes=5)  # its updated_at stands in
    assert record.provider_status == "running"
    assert record.public_dict()["cancel_requested"] is True
    # Older still: the request was a marker in provider_status, never the provider's word.
    marker = JobRecord.model_validate_json(_old_form(cancel_requested=True, provider_status="cancel_requested"))
    assert marker.cancel_requested and marker.provider_status is None
    plain = JobRecord.model_validate_json(_old_form(cancel_requested=False, provider_status="queued"))
    assert not plain.cancel_requested and plain.cancel_requested_at is None and plain.provider_status == "queued"
    # The next write stores the current form.
    store.update("a", lambda r: r)
    raw: str = store.redis.get(job_key("a"))  # type: ignore[assignment]
    stored = with_long_names(json.loads(raw))
    assert "cancel_requested" not in stored and stored["cancel_requested_at"] is not None
