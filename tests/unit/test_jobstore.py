"""The job store: records, indexes and compare-and-set writes, on an in-process fake Redis."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from tests.unit.helpers import seedance_request, walk_to
from videoqueue import keys
from videoqueue.images import ImageFile
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobExistsError, JobStore
from videoqueue.keys import input_key, job_key, status_index
from videoqueue.storedform import with_long_names

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def make_record(job_id: str, *, minutes: int = 0, status: JobStatus = JobStatus.QUEUED) -> JobRecord:
    created = T0 + timedelta(minutes=minutes)
    return JobRecord(
        id=job_id,
        status=status,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request=seedance_request("a red fox in snow", audio=True),
        cost_estimate_usd=Decimal("0.123456"),
        created_at=created,
        updated_at=created,
        deadline_at=created + timedelta(hours=2),
    )


@pytest.fixture
def redis_client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(redis_client: Any) -> JobStore:
    return JobStore(redis_client)


def raw(redis_client: Any, job_id: str) -> str | None:
    value: str | None = redis_client.get(job_key(job_id))
    return value


def status_members(redis_client: Any, status: JobStatus) -> set[str]:
    return set(redis_client.zrange(status_index(status), 0, -1))


def test_create_then_get_returns_an_equal_record(store: JobStore) -> None:
    record = make_record("a")
    store.create_many([record])
    got = store.get("a")
    assert got == record
    assert got is not None and got.cost_estimate_usd == Decimal("0.123456")


def test_get_unknown_is_none(store: JobStore) -> None:
    assert store.get("nope") is None


def test_get_many_keeps_order_and_gives_none_for_unknown(store: JobStore) -> None:
    store.create_many([make_record("a")])
    store.create_many([make_record("b", minutes=1)])
    got = store.get_many(["b", "zz", "a"])
    assert [r.id if r else None for r in got] == ["b", None, "a"]
    assert store.get_many([]) == []


def test_create_of_an_existing_id_raises_and_changes_nothing(store: JobStore, redis_client: Any) -> None:
    store.create_many([make_record("a")])
    before = raw(redis_client, "a")
    clash = make_record("a", minutes=5, status=JobStatus.RUNNING)
    with pytest.raises(JobExistsError):
        store.create_many([clash])
    assert raw(redis_client, "a") == before
    assert status_members(redis_client, JobStatus.RUNNING) == set()
    assert status_members(redis_client, JobStatus.QUEUED) == {"a"}
    assert redis_client.zscore(status_index(JobStatus.QUEUED), "a") == T0.timestamp()
    assert not redis_client.exists(keys.LEGACY_ALL_INDEX)  # no index of all jobs: the status ones are


def test_create_many_stores_all(store: JobStore) -> None:
    store.create_many([make_record("a"), make_record("b", minutes=1), make_record("c", minutes=2)])
    assert [r.id for r in store.list()] == ["c", "b", "a"]
    store.create_many([])  # nothing to do, no error


def test_create_many_is_all_or_nothing(store: JobStore, redis_client: Any) -> None:
    store.create_many([make_record("b")])
    before = raw(redis_client, "b")
    with pytest.raises(JobExistsError, match="b"):
        store.create_many([make_record("a", minutes=1), make_record("b", minutes=2), make_record("c", minutes=3)])
    assert store.get("a") is None
    assert store.get("c") is None
    assert raw(redis_client, "b") == before
    assert [r.id for r in store.list()] == ["b"]
    assert store.count_by_status()["queued"] == 1


def test_list_is_newest_first_limited_and_filtered_by_status(store: JobStore) -> None:
    # Created out of order on purpose: the index orders by created_at, not insertion.
    store.create_many([make_record("mid", minutes=5)])
    store.create_many([make_record("old", minutes=1)])
    store.create_many([make_record("new", minutes=9, status=JobStatus.RUNNING)])
    store.create_many([make_record("newest", minutes=10)])
    assert [r.id for r in store.list()] == ["newest", "new", "mid", "old"]
    assert [r.id for r in store.list(limit=2)] == ["newest", "new"]
    assert [r.id for r in store.list(JobStatus.QUEUED)] == ["newest", "mid", "old"]
    assert [r.id for r in store.list(JobStatus.RUNNING)] == ["new"]
    assert store.list(JobStatus.FAILED) == []


def test_list_of_all_statuses_merges_the_status_indexes_as_one_index_of_all_jobs_would(
    store: JobStore, redis_client: Any
) -> None:
    # What jobs:all (gone in issue 18) gave: ZREVRANGE by creation time, ties by the greater id.
    store.create_many([make_record(f"q{i}", minutes=i) for i in range(5)])
    store.create_many([make_record(f"r{i}", minutes=i, status=JobStatus.RUNNING) for i in range(0, 5, 2)])
    walk_to(store, "q3", JobStatus.SUCCEEDED)
    reference = {f"q{i}": i for i in range(5)} | {f"r{i}": i for i in range(0, 5, 2)}
    expected = sorted(reference, key=lambda job_id: (reference[job_id], job_id), reverse=True)
    assert [r.id for r in store.list(limit=100)] == expected
    for limit in (1, 3, 7):
        assert [r.id for r in store.list(limit=limit)] == expected[:limit]
    # A job seen in two status indexes (moved while they were read) shows once.
    redis_client.zadd(status_index(JobStatus.FAILED), {"q4": (T0 + timedelta(minutes=4)).timestamp()})
    assert [r.id for r in store.list(limit=100)] == expected


def test_ids_starting_with_finds_jobs_in_every_status_once(store: JobStore, redis_client: Any) -> None:
    store.create_many([make_record("abc-1"), make_record("abd-2", minutes=1), make_record("xyz", minutes=2)])
    walk_to(store, "abd-2", JobStatus.SUCCEEDED)
    redis_client.zadd(status_index(JobStatus.FAILED), {"abc-1": T0.timestamp()})  # mid-move: in two
    assert sorted(store.ids_starting_with("ab")) == ["abc-1", "abd-2"]
    assert store.ids_starting_with("abd") == ["abd-2"]
    assert len(store.ids_starting_with("a", limit=1)) == 1
    assert store.ids_starting_with("q") == []
    assert store.ids_starting_with("ab[") == []  # a glob character is taken as itself


def test_the_sweep_drops_the_stale_index_of_all_jobs_an_earlier_version_kept(redis_client: Any) -> None:
    from videoqueue import retention

    redis_client.zadd(keys.LEGACY_ALL_INDEX, {"old-job": 1.0})
    assert retention.drop_legacy_all_index(redis_client) == 1
    assert not redis_client.exists(keys.LEGACY_ALL_INDEX)
    assert retention.drop_legacy_all_index(redis_client) == 0  # a second tick: nothing to do


def test_a_final_record_keeps_no_field_meaningless_once_final(store: JobStore, redis_client: Any) -> None:
    now = utcnow()
    busy = {
        "next_due_at": now,
        "store_lease_until": now + timedelta(minutes=5),
        "waiting_for_endpoint": "waits for a worker configured for ark.example",
        "video_url": "https://provider.example/v.mp4?sig=1",
    }
    store.create_many([make_record("ok"), make_record("bad", minutes=1), make_record("off", minutes=2)])
    for job_id in ("ok", "bad", "off"):
        walk_to(store, job_id, JobStatus.DOWNLOADING, **busy)
        assert store.get(job_id).next_due_at is not None  # type: ignore[union-attr]
    walk_to(store, "ok", JobStatus.SUCCEEDED)
    store.transition("bad", {JobStatus.DOWNLOADING}, JobStatus.FAILED)
    store.transition("off", {JobStatus.DOWNLOADING}, JobStatus.CANCELLED)
    for job_id in ("ok", "bad", "off"):
        record = store.get(job_id)
        assert record is not None and record.status.is_final
        assert (record.next_due_at, record.store_lease_until, record.submit_lease_until) == (None, None, None)
        assert record.waiting_for_endpoint is None
        stored = with_long_names(json.loads(raw(redis_client, job_id) or ""))
        assert not {"next_due_at", "store_lease_until", "waiting_for_endpoint"} & set(stored)
    # A failed job keeps the provider's URL: `videoqueue store retry` fetches its video from there.
    assert store.get("bad").video_url == busy["video_url"]  # type: ignore[union-attr]
    assert store.get("ok").video_url is None and store.get("off").video_url is None  # type: ignore[union-attr]
    assert store.get("bad").store_retry_refusal(utcnow()) is None  # type: ignore[union-attr]


def test_count_by_status_follows_transitions(store: JobStore) -> None:
    store.create_many([make_record("a"), make_record("b", minutes=1), make_record("c", minutes=2)])
    counts = store.count_by_status()
    assert set(counts) == {s.value for s in JobStatus}
    assert counts["queued"] == 3 and sum(counts.values()) == 3
    store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING)
    store.transition("b", {JobStatus.QUEUED}, JobStatus.FAILED)
    counts = store.count_by_status()
    assert (counts["queued"], counts["submitting"], counts["failed"]) == (1, 1, 1)
    assert sum(counts.values()) == 3
    assert [r.id for r in store.list(JobStatus.QUEUED)] == ["c"]
    assert [r.id for r in store.list(JobStatus.SUBMITTING)] == ["a"]


def test_transition_is_compare_and_set(store: JobStore, redis_client: Any) -> None:
    store.create_many([make_record("a")])
    before = utcnow()
    moved = store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING, attempts=1)
    assert moved is not None
    assert moved.status is JobStatus.SUBMITTING and moved.attempts == 1
    assert before <= moved.updated_at <= utcnow()
    assert moved.finished_at is None
    assert store.get("a") == moved
    after_first = raw(redis_client, "a")

    again = store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING, attempts=2)
    assert again is None
    assert raw(redis_client, "a") == after_first


def test_transition_of_unknown_job_is_none(store: JobStore) -> None:
    assert store.transition("ghost", {JobStatus.QUEUED}, JobStatus.SUBMITTING) is None
    assert store.get("ghost") is None


def test_transition_sets_finished_at_on_final_statuses_only(store: JobStore) -> None:
    store.create_many([make_record("a")])
    running = walk_to(store, "a", JobStatus.RUNNING)
    assert running is not None and running.finished_at is None
    before = utcnow()
    failed = store.transition(
        "a",
        {JobStatus.RUNNING},
        JobStatus.FAILED,
        error=JobFailure(code=ErrorCode.UPSTREAM, message="boom"),
    )
    assert failed is not None
    assert failed.finished_at is not None and before <= failed.finished_at <= utcnow()
    assert failed.updated_at >= failed.finished_at
    assert failed.error == JobFailure(code=ErrorCode.UPSTREAM, message="boom")
    # A final job does not move again.
    assert store.transition("a", {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED) is None
    assert store.get("a") == failed


def test_transition_keeps_an_explicit_finished_at(store: JobStore) -> None:
    store.create_many([make_record("a")])
    when = T0 + timedelta(minutes=3)
    done = store.transition("a", {JobStatus.QUEUED}, JobStatus.CANCELLED, finished_at=when)
    assert done is not None and done.finished_at == when


def test_history_gets_one_entry_per_status_change(store: JobStore) -> None:
    store.create_many([make_record("a")])
    store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING)

    def bump(record: JobRecord) -> JobRecord:
        record.attempts += 1
        return record

    store.update("a", bump)  # same status: no history entry
    store.transition("a", {JobStatus.SUBMITTING}, JobStatus.RUNNING)
    store.transition("a", {JobStatus.SUBMITTING}, JobStatus.RUNNING)  # declined: no entry
    record = store.get("a")
    assert record is not None
    assert [(h["from"], h["to"]) for h in record.history] == [("queued", "submitting"), ("submitting", "running")]
    assert [h["at"] for h in record.history] == sorted(h["at"] for h in record.history)
    assert all(datetime.fromisoformat(h["at"]) <= record.updated_at for h in record.history)
    assert record.attempts == 1


def test_update_applies_the_mutation_and_moves_updated_at(store: JobStore) -> None:
    store.create_many([make_record("a")])

    def set_status(record: JobRecord) -> JobRecord:
        record.provider_status = "running"
        return record

    before = utcnow()
    updated = store.update("a", set_status)
    assert updated is not None and updated.provider_status == "running"
    assert before <= updated.updated_at <= utcnow()
    assert store.get("a") == updated
    assert updated.history == []


def test_update_that_declines_returns_none_and_changes_nothing(store: JobStore, redis_client: Any) -> None:
    store.create_many([make_record("a")])
    before = raw(redis_client, "a")
    seen: list[JobRecord] = []

    def decline(record: JobRecord) -> JobRecord | None:
        record.attempts = 99  # a mutation that edits its copy, then declines
        seen.append(record)
        return None

    assert store.update("a", decline) is None
    assert len(seen) == 1
    assert raw(redis_client, "a") == before
    assert store.update("ghost", decline) is None
    assert len(seen) == 1  # not called for an unknown job


def test_delete_removes_record_and_indexes(store: JobStore, redis_client: Any) -> None:
    store.create_many([make_record("a")])
    store.create_many([make_record("b", minutes=1)])
    walk_to(store, "a", JobStatus.RUNNING)
    store.delete("a")
    assert store.get("a") is None
    assert [r.id for r in store.list()] == ["b"]
    for status in JobStatus:
        assert "a" not in status_members(redis_client, status)
    counts = store.count_by_status()
    assert counts["running"] == 0 and counts["queued"] == 1
    # The id can be used again.
    store.create_many([make_record("a", minutes=2)])
    assert [r.id for r in store.list()] == ["a", "b"]


def test_input_images_stored_in_redis_by_earlier_producers_are_still_read_and_deleted(
    store: JobStore, redis_client: Any
) -> None:
    store.create_many([make_record("with-image")])
    data = b"\x89PNG\r\n\x1a\n\x00\xff binary"
    # What a producer before object-storage inputs wrote (videoqueue.keys.input_key).
    blob = {"name": "a.png", "mime_type": "image/png", "data": base64.b64encode(data).decode()}
    redis_client.set(input_key("with-image", "first_frame"), json.dumps(blob), ex=3600)
    assert store.get_input("with-image", "first_frame") == ImageFile("a.png", "image/png", data)
    assert store.get_input("with-image", "last_frame") is None
    store.delete("with-image")
    assert store.get_input("with-image", "first_frame") is None
