"""The compact stored form of job records and ledger rows (issue 18, videoqueue.storedform):
what is written reads back equal, what versions before it wrote still reads, and what users
see (public_dict, the models' own JSON, manifests) does not change."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from tests.unit.helpers import seedance_request
from videoqueue import budget, keys
from videoqueue.job import (
    ErrorCode,
    JobFailure,
    JobRecord,
    JobStatus,
    created_now,
    derived_budget_keys,
    utcnow,
    working_copy,
)
from videoqueue.jobstore import JobStore, clear_final
from videoqueue.keys import job_key, ledger_entry_key
from videoqueue.ledger import Ledger, LedgerEntry, write_entry
from videoqueue.resolved import ImageUpload, ImageUrl, ResolvedRequest
from videoqueue.storedform import RECORD_NAMES, RECORD_VERSION, REQUEST_NAMES, with_long_names

# A whole millisecond, as `utcnow` makes the times of a job's moves (`created_now` keeps its
# microseconds: test_a_time_with_a_fraction_of_a_millisecond_keeps_it).
T0 = datetime(2026, 12, 6, 7, 25, 22, 165000, tzinfo=UTC)

# Records and a ledger row as the code before the compact form stored them (taken from a
# `python -m bench memory` run, namespace `default`): they must still read.
OLD_QUEUED = (
    '{"id":"5493b520-b60d-419e-8d1b-3cc9a310b1e7","status":"queued","provider":"byteplus","model":'
    '"seedance-1-5-pro-251215","request":{"prompt":"A slow dolly shot through a night market.",'
    '"provider":"byteplus","model":"seedance-1-5-pro-251215","duration":5,"resolution":"720p",'
    '"ratio":"16:9","audio":true,"seed":1450690959,"service_tier":"default","images":{},'
    '"negative_prompt":null,"person_generation":null,"tags":["campaign-winter-sale","team-social"],'
    '"client_job_id":"shop-order-2026-12-06-0000080"},"provider_task_id":null,"provider_status":null,'
    '"provider_endpoint":null,"provider_fingerprint":null,"waiting_for_endpoint":null,"attempts":0,'
    '"submit_errors":0,"submit_rate_limits":0,"uncertain_creates":0,"cost_estimate_usd":0.249163,'
    '"cost_usd":null,"uncertain_cost_usd":null,"billed_units":null,"billed_unit":"token","budget_keys":'
    '["vq:budget:day:2026-12-06","vq:budget:month:2026-12","vq:budget:tag:campaign-winter-sale",'
    '"vq:budget:tag:team-social"],"output_uri":null,"manifest_uri":null,"video_url":null,"error":null,'
    '"cancel_requested_at":null,"poll_seq":0,"poll_errors":0,"store_attempts":0,"store_lease_until":null,'
    '"store_retries":0,"store_retried_at":null,"submit_intent_at":null,"next_due_at":null,"recoveries":0,'
    '"submit_lease_until":null,"created_at":"2026-12-06T07:25:22.169590Z","updated_at":'
    '"2026-12-06T07:25:22.169590Z","submitted_at":null,"provider_done_at":null,"finished_at":null,'
    '"settled_at":null,"result_expires_at":null,"deadline_at":"2026-12-06T09:25:22.169590Z",'
    '"past_deadline_at":null,"notes":[],"history":[],"retry_of":null,"retried_by":[]}'
)
OLD_FAILED_IN_STORAGE = (
    '{"id":"90cd4315-27c3-4fc1-b680-b86c9e19676f","status":"failed","provider":"byteplus","model":'
    '"seedance-1-5-pro-251215","request":{"prompt":"A slow dolly shot.","provider":"byteplus","model":'
    '"seedance-1-5-pro-251215","duration":5,"resolution":"720p","ratio":"16:9","audio":true,"seed":821649374,'
    '"service_tier":"default","images":{},"negative_prompt":null,"person_generation":null,"tags":[],'
    '"client_job_id":null},"provider_task_id":"cgt-20261206072531-9f4e069d","provider_status":"succeeded",'
    '"provider_endpoint":"127.0.0.1:50763","provider_fingerprint":"2b372e27a0b1","waiting_for_endpoint":null,'
    '"attempts":1,"submit_errors":0,"submit_rate_limits":0,"uncertain_creates":0,"cost_estimate_usd":0.249163,'
    '"cost_usd":0.249163,"uncertain_cost_usd":null,"billed_units":103818,"billed_unit":"token","budget_keys":'
    '["vq:budget:day:2026-12-06","vq:budget:month:2026-12"],"output_uri":null,"manifest_uri":null,'
    '"video_url":"http://127.0.0.1:50763/files/cgt-20261206072531-9f4e069d.mp4","error":{"code":"storage",'
    '"message":"disk full","provider_code":null},"cancel_requested_at":null,"poll_seq":1,"poll_errors":0,'
    '"store_attempts":3,"store_lease_until":null,"store_retries":0,"store_retried_at":null,'
    '"submit_intent_at":null,"next_due_at":"2026-12-06T07:50:32.963217Z","recoveries":0,'
    '"submit_lease_until":null,"created_at":"2026-12-06T07:25:22.165574Z","updated_at":'
    '"2026-12-06T07:25:32.980066Z","submitted_at":"2026-12-06T07:25:31.518811Z","provider_done_at":'
    '"2026-12-06T07:25:32.537356Z","finished_at":"2026-12-06T07:25:32.972249Z","settled_at":'
    '"2026-12-06T07:25:32.972249Z","result_expires_at":null,"deadline_at":"2026-12-06T09:25:22.165574Z",'
    '"past_deadline_at":null,"notes":[],"history":[{"at":"2026-12-06T07:25:31.494855+00:00","from":"queued",'
    '"to":"submitting"},{"at":"2026-12-06T07:25:31.520398+00:00","from":"submitting","to":"running"},'
    '{"at":"2026-12-06T07:25:32.544239+00:00","from":"running","to":"downloading"},'
    '{"at":"2026-12-06T07:25:32.980066+00:00","from":"downloading","to":"failed"}],"retry_of":null,'
    '"retried_by":[]}'
)
OLD_LEDGER_ROW = (
    '{"job_id":"d7c03edf-0a2a-4bed-8eb0-7ed1df7271fa","provider":"byteplus","model":"seedance-1-5-pro-251215",'
    '"status":"succeeded","tags":["campaign-winter-sale","team-social"],"settled_at":"2026-12-06T07:25:34.466161Z",'
    '"estimate_usd":0.249163,"actual_usd":0.249163,"billed_units":103818,"unit":"token","uncertain_usd":0.0,'
    '"submitted_at":"2026-12-06T07:25:22.174908Z"}'
)

# A finished record of the overhead bench's request in the compact form of version 2 (a `python
# -m bench memory` run of the time): 657 B, 523 B in version 3.
V2_FINISHED = (
    '{"v":2,"id":"5d2dd213-8d8e-4bcb-88d5-b6a3995add2b","s":"succeeded","p":"byteplus","m":'
    '"seedance-1-5-pro-251215","r":{"p":"overhead 1170","d":5,"rs":"720p","ra":"16:9","au":true,"sd":1336531462,'
    '"st":"default"},"t":"cgt-20261206085220-b53b3c0e","ps":"succeeded","pe":"127.0.0.1:49755","pf":"fa7825b3ff0c",'
    '"a":1,"ce":0.249163,"c":0.249163,"bu":103818,"o":"file:///tmp/vq-bench-memory-7oyvql1t/out/'
    '5d2dd213-8d8e-4bcb-88d5-b6a3995add2b.mp4","mu":".json","pq":1,"sa":1,"rc":1,"ct":1796547058689401,'
    '"ut":87928354,"sb":81862941,"pd":82894210,"fa":87911195,"xa":87911195,"dl":7200000000,'
    '"h":[[81850910,"submitting"],[81862958,"running"],[82894615,"downloading"],[]]}'
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def moves(*steps: tuple[float, str, str]) -> list[dict[str, Any]]:
    """History entries as JobStore.update writes them: `at` an ISO text, statuses as JobStatus."""
    return [{"at": at(s).isoformat(), "from": JobStatus(a), "to": JobStatus(b)} for s, a, b in steps]


def every_field_set() -> JobRecord:
    """A record in which no stored field holds its default."""
    request = seedance_request(
        "a red fox in snow, " * 10,
        seed=42,
        images={
            "first_frame": ImageUpload(
                file="fox.png", mime_type="image/png", bytes=1234, sha256="ab" * 32, uri="file:///in/fox.png"
            ),
            "last_frame": ImageUrl(url="https://example.com/end.png"),
        },
        negative_prompt="blur",
        person_generation="allow_adult",
        tags=("a", "b"),
        client_job_id="order-1",
        priority=7,
        tenant="shop",
    )
    return JobRecord(
        id="5493b520-b60d-419e-8d1b-3cc9a310b1e7",
        status=JobStatus.FAILED,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request=request,
        provider_task_id="cgt-1",
        provider_status="failed",
        provider_endpoint="ark.example.com",
        provider_fingerprint="2b372e27a0b1",
        waiting_for_endpoint="ark.other.com",
        attempts=2,
        submit_errors=1,
        submit_rate_limits=3,
        uncertain_creates=1,
        cost_estimate_usd=Decimal("0.249163"),
        cost_usd=Decimal("0.2"),
        uncertain_cost_usd=Decimal("0.1"),
        billed_units=103818,
        billed_unit="second",
        budget_keys=["vq:budget:custom"],
        output_uri="s3://bucket/videos/x.mp4",
        manifest_uri="s3://bucket/videos/x.json",
        video_url="https://cdn.example.com/x.mp4",
        error=JobFailure(code=ErrorCode.STORAGE, message="disk full", provider_code="E1"),
        cancel_requested_at=at(5),
        poll_seq=4,
        poll_errors=1,
        store_attempts=3,
        store_lease_until=at(60),
        store_retries=1,
        store_retried_at=at(70),
        submit_intent_at=at(1),
        next_due_at=at(30),
        recoveries=2,
        submit_lease_until=at(2),
        created_at=T0,
        updated_at=at(80),
        submitted_at=at(1.5),
        provider_done_at=at(40),
        finished_at=at(79),
        settled_at=at(79.5),
        result_expires_at=at(86400),
        deadline_at=at(7200),
        past_deadline_at=at(7300),
        notes=["a note"],
        history=[
            *moves((1, "queued", "submitting"), (2, "submitting", "running"), (40, "running", "downloading")),
            {"at": at(80).isoformat(), "from": JobStatus.DOWNLOADING, "to": JobStatus.FAILED},
        ],
        retry_of="older-job",
        retried_by=["newer-job"],
        movie_id="c2d7a0c4-9b1e-4a55-8d0e-3f6a2b1c9e77",
        scene=2,
        after_job="previous-scene-job",
        last_frame_url="https://ark.example/last.png",
        batch_id="batch-0b0c",
    )


def finished_record(**changes: Any) -> JobRecord:
    """A succeeded record as the pipeline leaves it."""
    fields: dict[str, Any] = {
        "id": "90cd4315-27c3-4fc1-b680-b86c9e19676f",
        "status": JobStatus.SUCCEEDED,
        "provider": "byteplus",
        "model": "seedance-1-5-pro-251215",
        "request": seedance_request(tags=("t",), seed=7),
        "cost_estimate_usd": Decimal("0.249163"),
        "cost_usd": Decimal("0.249163"),
        "created_at": T0,
        "updated_at": at(10.5),
        "finished_at": at(10.4),
        "settled_at": at(10.4),
        "provider_status": "succeeded",
        "deadline_at": at(7200),
        "history": moves(
            (9, "queued", "submitting"),
            (9.1, "submitting", "running"),
            (10, "running", "downloading"),
            (10.5, "downloading", "succeeded"),
        ),
    }
    fields.update(changes)
    fields.setdefault("budget_keys", derived_budget_keys(fields["created_at"], fields["request"].tags))
    return JobRecord(**fields)


def stored_json(client: Any, key: str) -> dict[str, Any]:
    """The JSON object stored at `key`."""
    value: dict[str, Any] = json.loads(client.get(key))
    return value


def read_back(record: JobRecord) -> JobRecord:
    return JobRecord.from_store_json(record.to_store_json(), record.id)


def as_before(record: JobRecord) -> JobRecord:
    """What the full JSON form reads back as: the reference for the compact form."""
    return JobRecord.model_validate_json(record.model_dump_json())


def test_the_fixture_sets_every_stored_field() -> None:
    record = every_field_set()
    unset = [
        name
        for name, field in JobRecord.model_fields.items()
        if not field.exclude
        and not field.is_required()
        and getattr(record, name) == field.get_default(call_default_factory=True)
    ]
    assert unset == []


@pytest.mark.parametrize("make", [every_field_set, finished_record], ids=["every field set", "finished"])
def test_a_record_reads_back_equal_and_shows_the_same(make: Any) -> None:
    record = make()
    back = read_back(record)
    assert back == record
    assert back == as_before(record)
    assert back.public_dict() == record.public_dict()
    assert back.model_dump_json() == record.model_dump_json()
    assert back.to_store_json() == record.to_store_json()


def test_the_stored_form_leaves_out_defaults_and_what_the_record_repeats() -> None:
    record = finished_record()
    stored = with_long_names(json.loads(record.to_store_json()))
    assert stored["v"] == RECORD_VERSION == 4
    assert 0 not in stored.values() and [] not in stored.values()
    assert "provider" not in stored["request"] and "model" not in stored["request"]
    assert "budget_keys" not in stored  # worked out from created_at and the tags
    # Times in milliseconds: created_at from the epoch, the others from created_at.
    assert stored["created_at"] == 1_796_541_922_165 and stored["updated_at"] == 10_500
    # Moves along the usual path are their time alone; the last, to the record's status at
    # its updated_at, is left out.
    assert stored["history"] == [9_000, 9_100, 10_000]
    # The cost is the estimate, settled when finished, the provider says what the status
    # says: left out. Where absence means such a value, a None is `null`.
    assert "cost_usd" not in stored and "settled_at" not in stored and "provider_status" not in stored
    unknown = with_long_names(json.loads(finished_record(provider_status=None, settled_at=None).to_store_json()))
    assert unknown["provider_status"] is None and unknown["settled_at"] is None
    assert len(record.to_store_json()) < len(record.model_dump_json()) / 2


def test_what_a_finished_record_repeats_is_left_out_and_reads_back() -> None:
    job_id = "90cd4315-27c3-4fc1-b680-b86c9e19676f"
    video = f"file:///out/{job_id}/{job_id}.mp4"
    record = finished_record(
        output_uri=video,
        manifest_uri=f"file:///out/{job_id}/{job_id}.json",
        video_url=f"https://cdn.example.com/{job_id}.mp4",
    )
    raw = record.to_store_json()
    assert job_id not in raw.replace(f'"id":"{job_id}"', "")
    stored = with_long_names(json.loads(raw))
    for name in ("provider_status", "cost_usd", "settled_at", "manifest_uri"):
        assert name not in stored, name
    assert stored["output_uri"] == ["file:///out/", "/", ".mp4"]
    assert stored["video_url"] == ["https://cdn.example.com/", ".mp4"]
    assert read_back(record) == record and read_back(record).public_dict() == record.public_dict()


@pytest.mark.parametrize(
    "changes",
    [
        {"provider_status": None, "cost_usd": None, "finished_at": at(10.4), "settled_at": None},
        {"provider_status": "failed", "cost_usd": Decimal("0.1"), "settled_at": at(10.45)},
        {"status": JobStatus.FAILED, "provider_status": "failed", "cost_usd": Decimal("0.249163")},
        {"status": JobStatus.RUNNING, "provider_status": "running", "finished_at": None},
        {"settled_at": at(10.4).astimezone(timezone(timedelta(hours=2)))},
        {"cost_usd": Decimal("0.2491630")},
        {"output_uri": "file:///out/v.mp4", "manifest_uri": None},
        {"output_uri": "file:///out/video", "manifest_uri": "file:///out/video.json"},
        {"output_uri": "file:///out.d/video", "manifest_uri": "file:///out.json"},
        {"output_uri": "s3://b/x.mp4", "manifest_uri": "s3://elsewhere/x.json"},
        {"id": "x", "output_uri": "s3://x/x.x.mp4", "video_url": "xx"},
        {"id": "", "output_uri": "s3://b/x.mp4"},
        {"notes": ["90cd4315-27c3-4fc1-b680-b86c9e19676f"], "retry_of": "90cd4315-27c3-4fc1-b680-b86c9e19676f"},
    ],
)
def test_a_field_unlike_what_its_absence_means_is_kept(changes: dict[str, Any]) -> None:
    record = finished_record(**changes)
    back = read_back(record)
    assert back == record
    assert back.model_dump_json() == record.model_dump_json()
    assert back.to_store_json() == record.to_store_json()


def test_a_manifest_beside_its_video_is_left_out() -> None:
    video = "s3://bucket/videos/2026-12-06/90cd4315.mp4"
    record = finished_record(output_uri=video, manifest_uri="s3://bucket/videos/2026-12-06/90cd4315.json")
    assert "manifest_uri" not in with_long_names(json.loads(record.to_store_json()))
    assert read_back(record) == record
    for elsewhere in ("s3://other/90cd4315.json", "s3://bucket/videos/2026-12-06/90cd4315.mp4/x.json"):
        moved = finished_record(output_uri=video, manifest_uri=elsewhere)
        assert with_long_names(json.loads(moved.to_store_json()))["manifest_uri"] == elsewhere
        assert read_back(moved) == moved
    beside = finished_record(output_uri=video, manifest_uri="s3://bucket/videos/2026-12-06/90cd4315.txt")
    assert with_long_names(json.loads(beside.to_store_json()))["manifest_uri"] == ".txt"
    assert read_back(beside) == beside
    none = finished_record(output_uri=video)
    assert with_long_names(json.loads(none.to_store_json()))["manifest_uri"] is None
    assert read_back(none) == none
    no_dot = finished_record(output_uri="file:///out/video", manifest_uri="file:///out/video.json")
    assert read_back(no_dot) == no_dot


def test_history_that_does_not_follow_the_chain_keeps_what_it_needs() -> None:
    history = [
        {"at": at(1).isoformat(), "from": "submitting", "to": "queued"},  # truncated: not from queued
        {"at": at(2).isoformat(), "from": "queued", "to": "submitting", "by": "sweep"},  # another shape
        {"at": "2026-12-06T09:25:22+02:00", "from": "submitting", "to": "running"},  # not in UTC
        {"at": at(3).isoformat(), "from": "downloading", "to": "failed"},  # a gap
        {"at": at(4).isoformat(), "from": "failed", "to": "downloading"},  # a store retry
        {"at": "2026-12-06T07:25:27.000000+00:00", "from": "downloading", "to": "failed"},  # not as isoformat
        {"at": "2026-W49-7T07:25:27+00:00", "from": "failed", "to": "downloading"},  # a week date
        {"at": at(5).isoformat(), "from": "downloading", "to": "paused"},  # not a status
        {"at": at(6).isoformat(), "from": "running", "to": "downloading"},  # along the chain, from elsewhere
    ]
    # The last move is not the record's status, and the updated_at is later than it.
    record = finished_record(status=JobStatus.FAILED, history=history, updated_at=at(9))
    stored = with_long_names(json.loads(record.to_store_json()))["history"]
    assert stored[0] == [1_000, "q", "sb"]
    assert stored[1] == history[1] and stored[2] == history[2]
    assert stored[3] == [3_000, "f", "d"]
    assert stored[4] == [4_000, "d"]
    assert stored[5:8] == history[5:8]
    assert stored[8:] == [[6_000, "d", "r"], None]  # and no move to `failed` is implied
    assert read_back(record) == record
    # Moves at whole seconds, and a last move at another time than updated_at.
    whole = finished_record(
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, 0, 0, 9, tzinfo=UTC),
        history=[{"at": "2026-01-01T00:00:05+00:00", "from": "downloading", "to": "succeeded"}],
    )
    assert with_long_names(json.loads(whole.to_store_json()))["history"] == [[5_000, "ok", "d"], None]
    assert read_back(whole) == whole
    # The only move is the implied one: an empty list, not left out.
    one = finished_record(status=JobStatus.SUBMITTING, history=moves((10.5, "queued", "submitting")))
    assert with_long_names(json.loads(one.to_store_json()))["history"] == []
    assert read_back(one) == one
    # A chain move last, at updated_at but to another status than the record's.
    other = finished_record(status=JobStatus.FAILED, history=moves((10.5, "queued", "submitting")))
    assert with_long_names(json.loads(other.to_store_json()))["history"] == [10_500, None]
    assert read_back(other) == other


def test_times_not_in_utc_are_kept_as_text() -> None:
    plus_two = timezone(timedelta(hours=2))
    record = finished_record(deadline_at=at(7200).astimezone(plus_two))
    assert with_long_names(json.loads(record.to_store_json()))["deadline_at"] == "2026-12-06T11:25:22.165000+02:00"
    assert read_back(record).public_dict() == record.public_dict()
    # A creation time not in UTC: nothing is counted from it, and the budget keys are kept.
    local = finished_record(created_at=T0.astimezone(plus_two))
    stored = with_long_names(json.loads(local.to_store_json()))
    assert stored["created_at"] == local.model_dump(mode="json")["created_at"]
    assert stored["budget_keys"] == local.budget_keys and isinstance(stored["history"][0], dict)
    assert read_back(local) == local and read_back(local).public_dict() == local.public_dict()


def test_field_names_are_short_in_redis_and_the_long_ones_still_read() -> None:
    record = finished_record()
    stored = json.loads(record.to_store_json())
    # A fixed table: no two fields share a short name, no short name is a long one.
    for names, fields in ((RECORD_NAMES, JobRecord.model_fields), (REQUEST_NAMES, ResolvedRequest.model_fields)):
        assert len(set(names.values())) == len(names) and not set(names.values()) & set(fields)
        assert set(names) <= set(fields)
    assert "status" not in stored and stored["s"] == "succeeded" and "prompt" not in stored["r"]
    assert with_long_names(stored)["status"] == "succeeded" and "prompt" in with_long_names(stored)["request"]
    # The compact form of before the table (long names, `"v": 2`) reads the same.
    long_form = json.dumps(with_long_names(stored), separators=(",", ":"))
    assert JobRecord.from_store_json(long_form, record.id) == record == read_back(record)
    assert len(record.to_store_json()) < len(long_form) - 100


def test_budget_keys_other_than_the_derived_ones_are_kept() -> None:
    for budget_keys in ([], ["vq:budget:day:2026-12-05"]):
        record = finished_record(budget_keys=budget_keys)
        assert with_long_names(json.loads(record.to_store_json()))["budget_keys"] == budget_keys
        assert read_back(record).budget_keys == budget_keys


def test_derived_budget_keys_are_the_budgets_own() -> None:
    record = finished_record(request=seedance_request(tags=("b", "a", "b")))
    assert derived_budget_keys(record.created_at, record.request.tags) == budget.keys_for(record)


def test_the_store_retry_check_reads_the_compact_history() -> None:
    record = JobRecord.model_validate_json(OLD_FAILED_IN_STORAGE)
    back = read_back(record)
    assert back.history[-1] == {"at": "2026-12-06T07:25:32.980066+00:00", "from": "downloading", "to": "failed"}
    assert back.store_retry_refusal(at(100)) is None
    assert back.store_retry_refusal(at(100)) == record.store_retry_refusal(at(100))


@pytest.mark.parametrize("old", [OLD_QUEUED, OLD_FAILED_IN_STORAGE], ids=["queued", "failed in storage"])
def test_records_stored_before_still_read_and_move_on(old: str) -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    store = JobStore(client)
    record = JobRecord.model_validate_json(old)
    client.set(job_key(record.id), old)
    assert store.get(record.id) == record
    assert store.get_many([record.id]) == [record]
    changed = store.update(record.id, lambda r: r.model_copy(update={"notes": ["upgraded"]}))
    assert changed is not None
    assert (
        stored_json(client, job_key(record.id))["v"] == RECORD_VERSION
    )  # rewritten in the compact form at its next change
    after = store.get(record.id)
    assert after == changed
    expected = record.model_copy(deep=True)
    if expected.status.is_final:  # a final record written again keeps less (issue 18)
        clear_final(expected)
    assert after.model_copy(update={"notes": [], "updated_at": record.updated_at}) == expected


def queued_in_store() -> tuple[Any, JobStore, JobRecord]:
    """A fake Redis, its job store, and a queued record created in it."""
    client = fakeredis.FakeRedis(decode_responses=True)
    store = JobStore(client)
    record = finished_record(
        status=JobStatus.QUEUED, history=[], updated_at=T0, finished_at=None, cost_usd=None, created_at=T0
    )
    store.create_many([record])
    return client, store, record


def test_a_job_moved_through_the_store_reads_back_as_it_was_written() -> None:
    client, store, record = queued_in_store()
    assert stored_json(client, job_key(record.id))["v"] == RECORD_VERSION
    moved = store.transition(record.id, {JobStatus.QUEUED}, JobStatus.SUBMITTING)
    assert moved is not None and store.get(record.id) == moved
    assert [(h["from"], h["to"]) for h in moved.history] == [("queued", "submitting")]


def test_the_store_records_a_task_and_its_submit_time_with_the_move_to_running() -> None:
    client, store, record = queued_in_store()
    store.transition(record.id, {JobStatus.QUEUED}, JobStatus.SUBMITTING)

    def record_task(job: JobRecord) -> JobRecord:
        job.status, job.provider_task_id, job.attempts = JobStatus.RUNNING, "cgt-1", 1
        return job

    running = store.update(record.id, record_task)
    assert running is not None and running.submitted_at == running.updated_at
    assert running.history[-1]["at"] == running.submitted_at.isoformat()
    stored = with_long_names(stored_json(client, job_key(record.id)))
    assert "submitted_at" not in stored and "attempts" not in stored
    assert store.get(record.id) == running
    # A later move keeps it.
    later = store.update(record.id, lambda job: job.model_copy(update={"poll_seq": 2}))
    assert later is not None and later.submitted_at == running.submitted_at


def test_records_in_the_compact_form_of_version_2_still_read() -> None:
    record = JobRecord.from_store_json(V2_FINISHED, "5d2dd213-8d8e-4bcb-88d5-b6a3995add2b")
    assert record.id == "5d2dd213-8d8e-4bcb-88d5-b6a3995add2b"
    assert record.provider_status == "succeeded" and record.cost_usd == record.cost_estimate_usd
    assert record.settled_at == record.finished_at is not None
    assert record.output_uri == "file:///tmp/vq-bench-memory-7oyvql1t/out/5d2dd213-8d8e-4bcb-88d5-b6a3995add2b.mp4"
    assert record.manifest_uri == "file:///tmp/vq-bench-memory-7oyvql1t/out/5d2dd213-8d8e-4bcb-88d5-b6a3995add2b.json"
    assert [(h["from"], h["to"]) for h in record.history] == [
        ("queued", "submitting"),
        ("submitting", "running"),
        ("running", "downloading"),
        ("downloading", "succeeded"),
    ]
    assert record.history[-1]["at"] == record.updated_at.isoformat()
    # Version 2 implied none of what version 3 leaves out: absent there is None.
    v2 = json.loads(V2_FINISHED)
    for name in ("ps", "c", "xa", "mu"):
        del v2[name]
    older = JobRecord.from_store_json(json.dumps(v2), record.id)
    assert (older.provider_status, older.cost_usd, older.settled_at, older.manifest_uri) == (None, None, None, None)
    # Written again, they are version 4 and read back equal.
    for each in (record, older):
        raw = each.to_store_json()
        assert json.loads(raw)["v"] == RECORD_VERSION and JobRecord.from_store_json(raw, each.id) == each
    # The id is the key's: 523 B with it.
    # The id is the key's: 523 B with it in version 3. Its times keep their microseconds in
    # version 4 (written with a fraction of a millisecond): a decimal point each, 9 more; its
    # one create and one store attempt are implied, 13 fewer.
    assert "id" not in json.loads(record.to_store_json()) and len(record.to_store_json()) == 523 - 44 + 9 - 13
    # The compact form of version 3 with the long names reads the same too.
    long_form = json.dumps(with_long_names(json.loads(record.to_store_json())))
    assert JobRecord.from_store_json(long_form, record.id) == record


# A finished record as version 3 wrote it (times in microseconds; `python -m bench day`).
V3_FINISHED = (
    '{"v":3,"s":"succeeded","p":"byteplus","m":"seedance-1-5-pro-251215","r":{"p":"day 1757","d":5,"rs":"720p",'
    '"ra":"16:9","au":true,"sd":1479562930,"st":"default"},"t":"cgt-20261206214037-9f728c16","pe":"127.0.0.1:49263",'
    '"pf":"f8e2e1df3ec5","a":1,"ce":0.249163,"bu":103818,"o":["file:///tmp/vq-bench-day-lofhyyhl/out/",".mp4"],'
    '"pq":1,"sa":1,"ct":1796593233392540,"ut":6571973,"sb":4241248,"pd":6480034,"fa":6559264,"dl":600000000,'
    '"h":[4029650,4241343,6480545]}'
)


def test_records_in_the_compact_form_of_version_3_still_read_and_are_written_in_milliseconds() -> None:
    job_id = "bdf60052-d1b9-4037-8731-802e4dfcdc48"
    record = JobRecord.from_store_json(V3_FINISHED, job_id)
    assert record.created_at == datetime(2026, 12, 6, 21, 40, 33, 392540, tzinfo=UTC)
    assert record.finished_at == record.created_at + timedelta(microseconds=6559264)
    assert record.output_uri == f"file:///tmp/vq-bench-day-lofhyyhl/out/{job_id}.mp4"
    assert record.history[1] == {
        "at": (record.created_at + timedelta(microseconds=4241343)).isoformat(),
        "from": "submitting",
        "to": "running",
    }
    assert record.history[-1]["to"] == "succeeded" and record.history[-1]["at"] == record.updated_at.isoformat()
    raw = record.to_store_json()
    assert json.loads(raw)["v"] == RECORD_VERSION and JobRecord.from_store_json(raw, job_id) == record
    # Its times, to the microsecond, as milliseconds with a fraction.
    assert '"ct":1796593233392.54,' in raw and '"fa":6559.804,' in raw


def test_one_create_one_store_and_the_submit_time_of_the_running_move_are_left_out() -> None:
    record = finished_record(
        provider_task_id="cgt-1",
        attempts=1,
        store_attempts=1,
        output_uri="file:///out/v.mp4",
        submitted_at=at(9.1),  # the move to running's time
    )
    stored = with_long_names(json.loads(record.to_store_json()))
    for name in ("attempts", "store_attempts", "submitted_at"):
        assert name not in stored, name
    assert read_back(record) == record
    # Unlike what absence means: written, a 0 and a None too.
    for changes in (
        {"attempts": 0},
        {"attempts": 2},
        {"store_attempts": 0},
        {"store_attempts": 3},
        {"submitted_at": None},
        {"submitted_at": at(9.2)},
        {"submitted_at": at(9.1).astimezone(timezone(timedelta(hours=2)))},
        {"history": record.history[:1], "updated_at": at(9)},  # no move to running
        {"provider_task_id": None, "attempts": 1},
        {"output_uri": None, "store_attempts": 1},
    ):
        other = record.model_copy(update=changes)
        stored = with_long_names(json.loads(other.to_store_json()))
        name = (
            next(n for n in ("attempts", "store_attempts", "submitted_at") if n in changes)
            if "history" not in changes
            else "submitted_at"
        )
        assert name in stored and read_back(other) == other, changes
        assert read_back(other).model_dump_json() == other.model_dump_json()


def test_version_3_implied_no_create_store_or_submit_time() -> None:
    stored = json.loads(V3_FINISHED)
    for name in ("a", "sa", "sb"):
        del stored[name]
    record = JobRecord.from_store_json(json.dumps(stored), "bdf60052-d1b9-4037-8731-802e4dfcdc48")
    assert (record.attempts, record.store_attempts, record.submitted_at) == (0, 0, None)
    assert read_back(record) == record


def test_utcnow_is_to_the_millisecond_up_and_a_new_jobs_creation_to_the_microsecond() -> None:
    assert all(utcnow().microsecond % 1000 == 0 for _ in range(50))
    created = [created_now() for _ in range(1000)]
    assert any(when.microsecond % 1000 for when in created)
    # Rounded up: a move right after a job's creation is never dated before it.
    for _ in range(1000):
        enqueued = created_now()
        assert utcnow() >= enqueued


def test_a_time_with_a_fraction_of_a_millisecond_keeps_it() -> None:
    # A job's created_at keeps its microseconds (it orders the waiting room); the moves'
    # times are whole milliseconds, counted from created_at's whole millisecond.
    created = T0 + timedelta(microseconds=392)
    record = finished_record(created_at=created, deadline_at=created + timedelta(seconds=7200))
    raw = record.to_store_json()
    stored = with_long_names(json.loads(raw))
    assert stored["created_at"] == 1_796_541_922_165.392
    assert stored["updated_at"] == 10_500 and stored["history"] == [9_000, 9_100, 10_000]
    assert stored["deadline_at"] == 7_200_000.392
    assert JobRecord.from_store_json(raw, record.id) == record
    # Any time finer than a millisecond, and a move's too, reads back to its microsecond.
    finer = record.model_copy(
        update={
            "next_due_at": at(20) + timedelta(microseconds=1),
            "history": [
                {**record.history[0], "at": (at(9) + timedelta(microseconds=999)).isoformat()},
                *record.history[1:],
            ],
        }
    )
    raw = finer.to_store_json()
    assert with_long_names(json.loads(raw))["history"][0] == 9_000.999
    assert with_long_names(json.loads(raw))["next_due_at"] == 20_000.001
    assert JobRecord.from_store_json(raw, record.id) == finer
    # Times far from the origin, both ways, and in the far future.
    for offset in (timedelta(days=-400, microseconds=7), timedelta(days=3650, microseconds=1), timedelta(0)):
        far = record.model_copy(update={"result_expires_at": created + offset})
        assert JobRecord.from_store_json(far.to_store_json(), record.id) == far


def test_milliseconds_are_shorter_by_three_digits_a_time() -> None:
    record = finished_record()
    # The same record a microsecond later throughout: every time has a fraction.
    step = timedelta(microseconds=1)
    later = record.model_copy(
        update={
            **{name: value + step for name, value in record.__dict__.items() if isinstance(value, datetime)},
            "history": [
                {**move, "at": (datetime.fromisoformat(move["at"]) + step).isoformat()} for move in record.history
            ],
        }
    )
    assert JobRecord.from_store_json(later.to_store_json(), record.id) == later
    # created_at, updated_at, finished_at, deadline_at and the three stored moves: ".001", 4 B each.
    assert len(later.to_store_json()) - len(record.to_store_json()) == 4 * 7


def every_field_row() -> LedgerEntry:
    return LedgerEntry(
        job_id="j1",
        provider="google",
        model="veo-3.1-fast",
        status="failed",
        tags=("a", "b"),
        settled_at=at(80),
        estimate_usd=Decimal("0.4"),
        actual_usd=Decimal("0.5"),
        billed_units=8,
        unit="second",
        uncertain_usd=Decimal("0.1"),
        submitted_at=T0,
    )


def test_a_ledger_row_reads_back_equal() -> None:
    full = every_field_row()
    plain = LedgerEntry(
        job_id="j2",
        provider="byteplus",
        model="m",
        status="succeeded",
        tags=(),
        settled_at=at(80),
        estimate_usd=Decimal("0.249163"),
        actual_usd=Decimal("0.249163"),
        billed_units=None,
        unit="token",
    )
    for entry in (full, plain):
        back = LedgerEntry.model_validate_json(entry.to_store_json())
        assert back == entry == LedgerEntry.model_validate_json(entry.model_dump_json())
        assert back.model_dump(mode="json") == entry.model_dump(mode="json")  # as manifests hold it
    assert json.loads(plain.to_store_json()) == {
        "v": 2,
        "job_id": "j2",
        "provider": "byteplus",
        "model": "m",
        "settled_at": int((at(80) - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1_000_000),
        "estimate_usd": 0.249163,
    }
    assert json.loads(full.to_store_json())["submitted_at"] == -80_000_000


def test_ledger_rows_stored_before_still_read() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    entry = LedgerEntry.model_validate_json(OLD_LEDGER_ROW)
    client.set(ledger_entry_key(entry.job_id), OLD_LEDGER_ROW)
    client.zadd(keys.LEDGER_INDEX, {entry.job_id: entry.settled_at.timestamp()})
    new = every_field_row()
    pipe = client.pipeline()
    write_entry(pipe, new)
    pipe.execute()
    assert sorted(Ledger(client).entries(), key=lambda e: e.job_id) == [entry, new]
    assert stored_json(client, ledger_entry_key(new.job_id))["v"] == 2


@pytest.mark.parametrize("make", [every_field_set, finished_record], ids=["every field set", "finished"])
def test_a_working_copy_is_equal_and_edits_of_it_leave_the_record_alone(make: Any) -> None:
    record = make()
    copy = working_copy(record)
    assert copy == record and copy.model_fields_set == record.model_fields_set
    copy.notes.append("new")
    copy.history[0]["at"] = "edited"
    copy.history.append({"at": "x", "from": "queued", "to": "failed"})
    copy.budget_keys.append("k")
    copy.retried_by.append("r")
    if copy.error is not None:
        copy.error.message = "edited"
    assert record == make()
