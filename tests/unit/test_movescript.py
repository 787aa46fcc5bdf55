"""Status moves as one server-side script (videoqueue.movescript), on an in-process fake
Redis that runs Lua (lupa): still a compare-and-set, a task claim conflict stores nothing,
the recorder writes what a pipeline would, and the Flower summary needs no second read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry

from tests.unit.helpers import walk_to
from tests.unit.test_jobstore import make_record
from videoqueue import final_hooks, keys, stats
from videoqueue.job import JobRecord, JobStatus
from videoqueue.jobstore import JobStore, TaskClaimedError
from videoqueue.keys import job_key, status_index, task_claim_key
from videoqueue.metrics import JobMetricsCollector
from videoqueue.movescript import MOVE, Reads, Writes


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def store(client: Any) -> JobStore:
    jobs = JobStore(client)
    jobs.create_many([make_record("a"), make_record("b", minutes=1)])
    return jobs


def snapshot(client: Any) -> dict[str, Any]:
    """Every key with its type, value and whether it expires."""
    dump: dict[str, Any] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        value: Any = {
            "string": client.get,
            "hash": client.hgetall,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "set": lambda k: sorted(client.smembers(k)),
            "stream": client.xrange,
        }[kind](key)
        dump[key] = (kind, value, client.ttl(key) > 0)
    return dump


def test_a_move_computed_from_an_old_record_is_computed_again_from_the_current_one(
    store: JobStore, client: Any
) -> None:
    calls: list[int] = []

    def bump(record: JobRecord) -> JobRecord:
        calls.append(record.attempts)
        if len(calls) == 1:
            # Another worker moves the job between this read and the script.
            other = JobStore(client)
            assert other.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING, attempts=5) is not None
        record.attempts += 1
        return record

    stored = store.update("a", bump)
    assert calls == [0, 5]  # the first try lost its compare-and-set, the second saw the move
    assert stored is not None and stored.attempts == 6 and stored.status is JobStatus.SUBMITTING
    assert store.get("a") == stored


def test_a_step_run_twice_changes_nothing(store: JobStore, client: Any) -> None:
    assert walk_to(store, "a", JobStatus.RUNNING) is not None
    done = store.transition("a", {JobStatus.RUNNING}, JobStatus.DOWNLOADING, cost_usd=Decimal("0.2"), billed_units=1)
    assert done is not None
    before = snapshot(client)
    assert store.transition("a", {JobStatus.RUNNING}, JobStatus.DOWNLOADING, cost_usd=Decimal("0.3")) is None
    assert snapshot(client) == before
    assert store.transition("a", {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED, output_uri="file:///v.mp4")
    ended = snapshot(client)
    assert store.transition("a", {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED, output_uri="file:///w.mp4") is None
    assert snapshot(client) == ended


def test_a_task_claimed_by_another_job_raises_and_stores_nothing(store: JobStore, client: Any) -> None:
    walk_to(store, "a", JobStatus.SUBMITTING)
    walk_to(store, "b", JobStatus.SUBMITTING)
    assert store.transition("a", {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id="t-1") is not None
    before = snapshot(client)
    with pytest.raises(TaskClaimedError) as raised:
        store.transition("b", {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id="t-1")
    assert (raised.value.task_id, raised.value.owner) == ("t-1", "a")
    assert snapshot(client) == before
    record = store.get("b")
    assert record is not None and record.status is JobStatus.SUBMITTING and record.provider_task_id is None


def test_a_move_that_records_a_task_claims_it_for_the_job(store: JobStore, client: Any) -> None:
    walk_to(store, "a", JobStatus.SUBMITTING)
    moved = store.transition("a", {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id="t-9")
    assert moved is not None
    claim = task_claim_key(moved.provider, "t-9")
    assert client.get(claim) == "a" and client.ttl(claim) > 0
    assert client.zscore(status_index(JobStatus.RUNNING), "a") is not None
    assert client.zscore(status_index(JobStatus.SUBMITTING), "a") is None


def test_final_hooks_run_once_and_their_writes_are_stored_with_the_move(
    store: JobStore, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def hook(pipe: Any, before: JobRecord, after: JobRecord) -> final_hooks.Writes:
        seen.append(after.id)

        def writes(multi: Any) -> None:
            multi.set("test:end", after.status.value, ex=60)
            multi.expire(job_key(after.id), 600)

        return writes

    monkeypatch.setattr(final_hooks, "FINAL_HOOKS", (*final_hooks.FINAL_HOOKS, hook))
    walk_to(store, "a", JobStatus.DOWNLOADING, cost_usd=Decimal("0.2"), billed_units=1)
    assert store.transition("a", {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED) is not None
    assert store.transition("a", {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED) is None
    assert seen == ["a"]
    assert client.get("test:end") == "succeeded" and client.ttl("test:end") > 0
    assert 0 < client.ttl(job_key("a")) <= 600
    assert client.get(keys.ledger_entry_key("a")) is None  # the record holds the ledger entry
    assert client.zcard(keys.LEDGER_DAYS) == 1  # counted in its day's aggregates


def _calls(target: Any) -> None:
    target.set("s:a", "1", ex=100)
    target.set("s:a", "2", nx=True)  # NX: kept at 1
    target.set("s:b", "x", px=50_000, xx=True)  # XX on a missing key: not set
    target.set("s:c", "y", ex=timedelta(seconds=30))
    target.delete("s:c")
    target.hset("h", "f", 1)
    target.hset("h", mapping={"g": "two", "k": 3})
    target.hincrby("h", "f", 4)
    target.hincrbyfloat("h", "sum", 1.25)
    target.zadd("z", {"m": 1.5, "n": 2})
    target.zadd("z", {"m": 9}, nx=True)  # NX: m stays 1.5
    target.zadd("z", {"o": 3}, xx=True)  # XX: o is not added
    target.zadd("z", {"n": 7}, xx=True)
    target.zrem("z", "n")
    target.sadd("set", "a", "b", "c")
    target.srem("set", "b")
    target.expire("h", 500)
    target.pexpire("z", 400_000)
    target.incr("n", 3)


def test_the_recorder_writes_what_a_pipeline_writes() -> None:
    by_pipeline, by_script = fakeredis.FakeRedis(decode_responses=True), fakeredis.FakeRedis(decode_responses=True)
    pipe = by_pipeline.pipeline()
    _calls(pipe)
    pipe.set("job", "new")
    pipe.execute()
    writes = Writes()
    _calls(writes)
    assert len(writes) == 19
    by_script.set("job", "old")
    reply = by_script.register_script(MOVE)(keys=["job"], args=["old", "new", "", "j", 60, 0, *writes.args])
    assert reply == [3]
    assert snapshot(by_script) == snapshot(by_pipeline)


def test_a_refused_move_writes_none_of_its_queued_writes() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    client.set("job", "current")
    writes = Writes()
    _calls(writes)
    reply = client.register_script(MOVE)(keys=["job"], args=["older", "new", "", "j", 60, 0, *writes.args])
    assert reply == [1, "current"]
    assert client.keys("*") == ["job"] and client.get("job") == "current"


def test_a_key_a_hook_read_that_changed_meanwhile_refuses_the_move() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    client.set("job", "current")
    client.set("row", "read")
    reads = Reads(client)
    assert reads.get("row") == "read" and reads.get("absent") is None
    writes = Writes()
    writes.set("out", "1")
    move = client.register_script(MOVE)
    client.set("row", "rewritten")  # e.g. a costs rebuild, between the hook's read and the move
    assert move(keys=["job"], args=["current", "new", "", "j", 60, *reads.args(), *writes.args]) == [1, "current"]
    client.set("row", "read")
    client.set("absent", "now here")
    assert move(keys=["job"], args=["current", "new", "", "j", 60, *reads.args(), *writes.args]) == [1, "current"]
    assert client.get("job") == "current" and client.get("out") is None
    client.delete("absent")
    assert move(keys=["job"], args=["current", "new", "", "j", 60, *reads.args(), *writes.args]) == [3]
    assert client.get("job") == "new" and client.get("out") == "1"


def test_the_flower_summary_is_built_from_what_the_step_last_saw(store: JobStore) -> None:
    moved = store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING)
    assert store.last_seen("a") == moved
    assert store.last_seen("a") is None  # taken once
    declined = store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING)
    assert declined is None and store.last_seen("a") == moved  # the record the decline saw
    read = store.get("b")
    assert store.last_seen("b") == read and store.last_seen("ghost") is None


def _registry(client: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(JobMetricsCollector(client))
    return registry


def test_durations_count_one_bucket_each_and_the_exporter_cumulates_them_with_older_cumulative_counts() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    label = "byteplus|seedance-1-5-pro-251215"
    # What earlier versions stored for two renders of 45 s and 100 s: cumulative buckets.
    for bound in (60, 120, 300, 600, 1200, 3600, 7200, "+Inf"):
        client.hincrby(keys.STATS_RENDER_SECONDS, f"le={bound}|{label}", 1)
    for bound in (120, 300, 600, 1200, 3600, 7200, "+Inf"):
        client.hincrby(keys.STATS_RENDER_SECONDS, f"le={bound}|{label}", 1)
    client.hincrbyfloat(keys.STATS_RENDER_SECONDS, f"sum|{label}", 145)
    job = make_record("a")
    submitted = datetime(2025, 1, 1, tzinfo=UTC)
    for seconds in (5, 45, 100000):  # now: one bucket each (10, 60, +Inf)
        writes = Writes()
        done = job.model_copy(
            update={"submitted_at": submitted, "provider_done_at": submitted + timedelta(seconds=seconds)}
        )
        stats.on_end(writes, done)
        assert len(writes) == 2  # one bucket and the sum
        pipe = client.pipeline()
        stats.on_end(pipe, done)
        pipe.execute()
    assert client.hget(keys.STATS_RENDER_SECONDS, f"bucket=10|{label}") == "1"
    registry = _registry(client)
    labels = {"provider": "byteplus", "model": "seedance-1-5-pro-251215"}

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("videoqueue_provider_render_seconds_bucket", {**labels, "le": le})

    assert [bucket(le) for le in ("10.0", "30.0", "60.0", "120.0", "7200.0", "+Inf")] == [1, 1, 3, 4, 4, 5]
    assert registry.get_sample_value("videoqueue_provider_render_seconds_count", labels) == 5
    assert registry.get_sample_value("videoqueue_provider_render_seconds_sum", labels) == 145 + 5 + 45 + 100000


def test_a_move_starts_from_the_record_the_thread_last_saw_and_a_stale_one_costs_a_retry_not_a_wrong_answer(
    store: JobStore, client: Any
) -> None:
    other = JobStore(client)
    reads: list[str] = []
    original_get = client.get

    def counting_get(name: str) -> Any:
        reads.append(name)
        return original_get(name)

    client.get = counting_get
    seen = store.get("a")
    assert seen is not None and reads == [job_key("a")]
    moved = store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING)
    assert moved is not None and reads == [job_key("a")]  # no second read of the record

    # Another worker moves it on: what this thread remembers is stale.
    assert other.transition("a", {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id="t-a") is not None
    # A move that the stale record declines is decided on the stored one...
    assert store.transition("a", {JobStatus.RUNNING}, JobStatus.DOWNLOADING) is not None
    # ... and one the stale record refuses as illegal too.
    store.get("b")  # remembers b in queued
    assert other.transition("b", {JobStatus.QUEUED}, JobStatus.SUBMITTING) is not None

    def to_running(record: JobRecord) -> JobRecord:
        record.status = JobStatus.RUNNING  # illegal from queued, legal from submitting
        return record

    stored = store.update("b", to_running)
    assert stored is not None and stored.status is JobStatus.RUNNING
    # A move the stored record declines too is declined.
    assert store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING) is None
    record = store.get("a")
    assert record is not None and record.status is JobStatus.DOWNLOADING


def test_a_move_starts_from_the_record_as_stored_whatever_the_caller_did_to_the_one_it_was_given(
    store: JobStore, client: Any
) -> None:
    read = store.get("a")
    assert read is not None
    read.notes.append("edited by the caller, never stored")
    read.attempts = 99
    moved = store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING)
    assert moved is not None and moved.notes == [] and moved.attempts == 0
    moved.notes.append("edited again")
    moved.history.clear()

    def add_note(record: JobRecord) -> JobRecord:
        record.notes.append("stored")
        return record

    again = store.update("a", add_note)
    stored = JobRecord.from_store_json(client.get(job_key("a")), "a")
    assert again == stored and stored.notes == ["stored"] and len(stored.history) == 1
    assert store.last_seen("a") == stored
