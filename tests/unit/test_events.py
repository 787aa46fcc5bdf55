"""The event stream (videoqueue.events): entries encode and decode, the move script's
recorder writes the XADD, and the job store appends one event per status change, none for
a change that keeps the status or a move refused by its compare-and-set (fake Redis)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from tests.unit.helpers import walk_to
from tests.unit.test_jobstore import make_record
from videoqueue import events, keys
from videoqueue.errors import InvalidRequestError
from videoqueue.events import JobEvent, decode, encode, read_events
from videoqueue.job import ErrorCode, JobFailure, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.movescript import Writes

T1 = datetime(2025, 1, 1, 12, 5, 30, 250000, tzinfo=UTC)


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def stream(client: Any) -> list[JobEvent]:
    return [decode(entry_id, fields) for entry_id, fields in client.xrange(keys.EVENTS_STREAM)]


def test_a_created_job_encodes_without_an_old_status_and_decodes_back() -> None:
    record = make_record("a").model_copy(update={"updated_at": T1})
    fields = encode(None, record)
    assert fields == {"j": "a", "s": "queued", "t": "1735733130.250"}
    event = decode("1735733130250-0", fields)
    assert event == JobEvent("1735733130250-0", "a", None, JobStatus.QUEUED, T1)
    assert not event.final


def test_a_final_event_carries_cost_uri_and_error() -> None:
    before = make_record("a", status=JobStatus.DOWNLOADING)
    after = before.model_copy(
        update={
            "status": JobStatus.SUCCEEDED,
            "updated_at": T1,
            "cost_usd": Decimal("0.249163"),
            "output_uri": "s3://videos/a.mp4",
        }
    )
    event = decode(b"1-0", {k.encode(): v.encode() for k, v in encode(before, after).items()})
    assert (event.old_status, event.status, event.cost_usd, event.output_uri) == (
        JobStatus.DOWNLOADING,
        JobStatus.SUCCEEDED,
        Decimal("0.249163"),
        "s3://videos/a.mp4",
    )
    assert event.final and event.error is None
    failed = after.model_copy(
        update={
            "status": JobStatus.FAILED,
            "cost_usd": None,
            "output_uri": None,
            "error": JobFailure(
                code=ErrorCode.CONTENT_FILTERED, message="x" * 1000, provider_code="OutputImageSensitive"
            ),
        }
    )
    fields = encode(before, failed)
    assert "c" not in fields and "o" not in fields
    event = decode("2-0", fields)
    assert event.error == JobFailure(code=ErrorCode.CONTENT_FILTERED, message="x" * events.ERROR_MESSAGE_MAX)
    assert event.to_dict()["error"] == {"code": "content_filtered", "message": "x" * events.ERROR_MESSAGE_MAX}


def test_an_active_status_carries_no_final_fields() -> None:
    before = make_record("a", status=JobStatus.SUBMITTING)
    after = before.model_copy(update={"status": JobStatus.RUNNING, "cost_usd": Decimal(1), "output_uri": "x"})
    assert set(encode(before, after)) == {"j", "f", "s", "t"}


@pytest.mark.parametrize(
    "fields",
    [{"s": "queued", "t": "1"}, {"j": "a", "s": "paused", "t": "1"}, {"j": "a", "s": "failed", "t": "1", "ec": "?"}],
)
def test_an_entry_this_version_cannot_read_is_a_value_error_and_skipped(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="1-0"):
        decode("1-0", fields)
    assert events.decode_all([("1-0", fields), ("2-0", {"j": "b", "s": "queued", "t": "1"})])[0].job_id == "b"


def test_writes_xadd_records_the_command_with_an_approximate_cap() -> None:
    writes = Writes()
    writes.xadd("s", {"j": "a", "s": "queued"}, maxlen=1000)
    writes.xadd("s", {"j": "b"}, maxlen=5, approximate=False)
    writes.xadd("s", {"j": "c"})
    assert writes.args == [
        *("XADD", 9, "s", "MAXLEN", "~", 1000, "*", "j", "a", "s", "queued"),
        *("XADD", 6, "s", "MAXLEN", 5, "*", "j", "b"),
        *("XADD", 4, "s", "*", "j", "c"),
    ]
    assert len(writes) == 3
    with pytest.raises(ValueError, match="no field"):
        writes.xadd("s", {})


def test_every_status_change_appends_one_event_in_order(client: Any) -> None:
    store = JobStore(client)
    store.create_many([make_record("a"), make_record("b", minutes=1)])
    walk_to(store, "a", JobStatus.RUNNING)
    store.update("a", lambda r: r.model_copy(update={"notes": ["no move"]}))  # same status: no event
    walk_to(store, "a", JobStatus.DOWNLOADING)
    walk_to(store, "a", JobStatus.SUCCEEDED, cost_usd=Decimal("0.25"), output_uri="file:///v/a.mp4")
    seen = [(e.job_id, e.old_status, e.status) for e in stream(client)]
    assert seen == [
        ("a", None, JobStatus.QUEUED),
        ("b", None, JobStatus.QUEUED),
        ("a", JobStatus.QUEUED, JobStatus.SUBMITTING),
        ("a", JobStatus.SUBMITTING, JobStatus.RUNNING),
        ("a", JobStatus.RUNNING, JobStatus.DOWNLOADING),
        ("a", JobStatus.DOWNLOADING, JobStatus.SUCCEEDED),
    ]
    last = stream(client)[-1]
    record = store.get("a")
    assert record is not None
    assert (last.cost_usd, last.output_uri) == (Decimal("0.25"), "file:///v/a.mp4")
    assert last.at.timestamp() == pytest.approx(record.updated_at.timestamp(), abs=0.001)


def test_a_step_run_twice_adds_no_second_event(client: Any) -> None:
    store = JobStore(client)
    store.create_many([make_record("a")])
    assert store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING) is not None
    # The same step again (a redelivered message): its compare-and-set finds the job moved on.
    assert store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING) is None
    other = JobStore(client)  # a second worker, which has not seen the job: reads it fresh
    assert other.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING) is None
    assert [e.status for e in stream(client)] == [JobStatus.QUEUED, JobStatus.SUBMITTING]


def test_the_stream_is_capped_about_events_maxlen(client: Any) -> None:
    store = JobStore(client)
    store.events_maxlen = 10
    store.create_many([make_record(f"j{i}", minutes=i) for i in range(300)])
    # MAXLEN ~ trims whole nodes only: the stream keeps at least 10 and far fewer than 300.
    assert 10 <= client.xlen(keys.EVENTS_STREAM) < 300


def test_read_events_from_an_id_and_only_new_ones(client: Any) -> None:
    store = JobStore(client)
    store.create_many([make_record("a")])
    first = read_events(client, events.START)
    assert [e.job_id for e in first] == ["a"]
    assert read_events(client, first[-1].id) == []
    since = events.newest_id(client)
    assert since == first[-1].id
    store.create_many([make_record("b")])
    assert [e.job_id for e in read_events(client, since, block_ms=10)] == ["b"]
    assert events.newest_id(fakeredis.FakeRedis(decode_responses=True)) == "0-0"


def test_a_follower_hands_on_the_wanted_events_and_stops_after_block_seconds_of_none() -> None:
    def event(entry_id: str, job_id: str) -> JobEvent:
        return JobEvent(entry_id, job_id, None, JobStatus.QUEUED, T1)

    follow = events.Follower("5-0", ["a"], 2.0, now=100.0)
    assert follow.block_ms(100.0) == 2000
    assert follow.take([event("6-0", "b"), event("7-0", "a")], 101.0) == [event("7-0", "a")]
    assert follow.since == "7-0"
    assert follow.block_ms(102.5) == 500  # quiet since the wanted event at 101
    assert follow.take([event("8-0", "b")], 103.0) == []  # another job's: not a sign of life
    assert follow.since == "8-0" and follow.block_ms(103.0) is None
    forever = events.Follower("$", None, None, now=0.0)
    assert forever.block_ms(10_000.0) == events.MAX_BLOCK_MS
    assert forever.take([event("1-0", "z")], 1.0) == [event("1-0", "z")]


@pytest.mark.parametrize("since", ["garbage", "-5", "1-2-3", "", "1735733130250-x"])
def test_a_since_that_is_no_event_id_is_refused_before_any_read(since: str) -> None:
    with pytest.raises(InvalidRequestError, match="not an event id"):
        events.Follower(since, None, None, now=0.0)


@pytest.mark.parametrize("since", ["$", "0", "1735733130250", "1735733130250-7"])
def test_event_ids_start_and_new_are_taken(since: str) -> None:
    assert events.check_since(since) == since
