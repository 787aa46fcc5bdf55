"""The resolved request in the job record: records written while it was a dict load and
serialise unchanged, and `resolve` still writes the same request."""

from __future__ import annotations

import json
from pathlib import Path

import fakeredis
import pydantic
import pytest

from producer import InvalidRequestError, Settings, VideoQueue
from producer.cli import _prepare_all
from producer.request import VideoRequest, repeated_client_ids, resolve
from videoqueue.catalog import load_catalog
from videoqueue.job import JobRecord
from videoqueue.jobstore import JobStore
from videoqueue.resolved import ImageUpload, ImageUrl
from worker.manifest import build_manifest

# Job records as the job store held them when `JobRecord.request` was a dict (commit
# f2b0d9b, `VideoQueue.prepare(...).record.model_dump_json()`): an uploaded first frame, a
# last frame by URL, tags and a client job id; and a Veo job with its own fields.
BYTEPLUS_RECORD = (
    '{"id":"8e04555c-9300-476d-9363-5876fc1a596c","status":"queued","provider":"byteplus",'
    '"model":"seedance-1-5-pro-251215","request":{"prompt":"a red fox in snow","provider":"byteplus",'
    '"model":"seedance-1-5-pro-251215","duration":5,"resolution":"720p","ratio":"16:9","audio":true,'
    '"seed":42,"service_tier":"flex","images":{"first_frame":{"file":"vq-frame.png","mime_type":"image/png",'
    '"bytes":32,"sha256":"9656be35bd353ebedd79d7d24a14df408ef96b99fb4e4b4542e3bdd56de73134"},'
    '"last_frame":{"url":"https://example.com/last.png"}},"negative_prompt":null,"person_generation":null,'
    '"tags":["demo","fox"],"client_job_id":"order-17"},"provider_task_id":null,"provider_status":null,'
    '"provider_endpoint":null,"provider_fingerprint":null,"waiting_for_endpoint":null,"attempts":0,'
    '"submit_errors":0,"submit_rate_limits":0,"uncertain_creates":0,"cost_estimate_usd":0.124582,'
    '"cost_usd":null,"uncertain_cost_usd":null,"billed_units":null,"billed_unit":"token",'
    '"budget_keys":["vq:budget:day:2026-11-29","vq:budget:month:2026-11","vq:budget:tag:demo",'
    '"vq:budget:tag:fox"],"output_uri":null,"manifest_uri":null,"video_url":null,"error":null,'
    '"cancel_requested":false,"poll_seq":0,"poll_errors":0,"store_attempts":0,"store_lease_until":null,'
    '"store_retries":0,"store_retried_at":null,"submit_intent_at":null,"next_due_at":null,"recoveries":0,'
    '"submit_lease_until":null,"created_at":"2026-11-29T21:25:44.690311Z",'
    '"updated_at":"2026-11-29T21:25:44.690311Z","submitted_at":null,"provider_done_at":null,'
    '"finished_at":null,"settled_at":null,"result_expires_at":null,"deadline_at":"2026-11-29T23:25:44.690311Z",'
    '"past_deadline_at":null,"notes":[],"history":[],"retry_of":null,"retried_by":[]}'
)
VEO_RECORD = (
    '{"id":"390a22af-f18a-46c4-b14b-250dc3e3c2d1","status":"queued","provider":"veo",'
    '"model":"veo-3.1-fast-generate-001","request":{"prompt":"a lighthouse at dusk","provider":"veo",'
    '"model":"veo-3.1-fast-generate-001","duration":4,"resolution":"720p","ratio":"16:9","audio":true,'
    '"seed":1060032030,"service_tier":"default","images":{"first_frame":{"url":"https://example.com/first.png"}},'
    '"negative_prompt":"blur","person_generation":"allow_adult","tags":[],"client_job_id":null},'
    '"provider_task_id":null,"provider_status":null,"provider_endpoint":null,"provider_fingerprint":null,'
    '"waiting_for_endpoint":null,"attempts":0,"submit_errors":0,"submit_rate_limits":0,"uncertain_creates":0,'
    '"cost_estimate_usd":0.4,"cost_usd":null,"uncertain_cost_usd":null,"billed_units":null,'
    '"billed_unit":"second","budget_keys":["vq:budget:day:2026-11-29","vq:budget:month:2026-11"],'
    '"output_uri":null,"manifest_uri":null,"video_url":null,"error":null,"cancel_requested":false,"poll_seq":0,'
    '"poll_errors":0,"store_attempts":0,"store_lease_until":null,"store_retries":0,"store_retried_at":null,'
    '"submit_intent_at":null,"next_due_at":null,"recoveries":0,"submit_lease_until":null,'
    '"created_at":"2026-11-29T21:25:44.690653Z","updated_at":"2026-11-29T21:25:44.690653Z",'
    '"submitted_at":null,"provider_done_at":null,"finished_at":null,"settled_at":null,'
    '"result_expires_at":null,"deadline_at":"2026-11-29T23:25:44.690653Z","past_deadline_at":null,'
    '"notes":[],"history":[],"retry_of":null,"retried_by":[]}'
)


LATER_FIELDS = {"movie_id": None, "scene": None, "after_job": None, "last_frame_url": None, "batch_id": None}
"""Job record fields added after these records were stored (issue 19), as they read."""


@pytest.mark.parametrize("stored", [BYTEPLUS_RECORD, VEO_RECORD], ids=["byteplus", "veo"])
def test_a_stored_record_loads_and_serialises_unchanged(stored: str) -> None:
    record = JobRecord.model_validate_json(stored)
    # The request serialises byte for byte as it was stored; the record too, but for the
    # cancel request, which is now a time (`cancel_requested_at`, None for "not asked").
    stored_request = json.dumps(json.loads(stored)["request"], separators=(",", ":"), ensure_ascii=False)
    assert record.request.model_dump_json() == stored_request
    dumped = json.loads(record.model_dump_json())
    assert dumped.pop("cancel_requested_at") is None
    # Fields added since (a batch's, a movie scene's) read as None.
    assert dumped == {**{k: v for k, v in json.loads(stored).items() if k != "cancel_requested"}, **LATER_FIELDS}
    expected = {**json.loads(stored), **LATER_FIELDS}
    for hidden in ("submit_lease_until", "store_lease_until", "poll_seq"):
        del expected[hidden]
    # A producer's view adds where a waiting job stands (never stored).
    standing = {"queue_position": None, "waiting_reason": None, "estimated_start_at": None}
    assert record.public_dict() == {**expected, "cancel_requested_at": None, **standing}
    assert build_manifest(record, None)["job"]["request"] == expected["request"]


def test_the_stored_request_is_typed_and_frozen() -> None:
    request = JobRecord.model_validate_json(BYTEPLUS_RECORD).request
    assert request.images["first_frame"] == ImageUpload(
        file="vq-frame.png",
        mime_type="image/png",
        bytes=32,
        sha256="9656be35bd353ebedd79d7d24a14df408ef96b99fb4e4b4542e3bdd56de73134",
    )
    assert request.images["last_frame"] == ImageUrl(url="https://example.com/last.png")
    assert request.tags == ("demo", "fox") and request.duration == 5 and request.audio is True
    with pytest.raises(pydantic.ValidationError):
        request.seed = 1  # type: ignore[misc]


def test_resolve_writes_the_request_the_dict_did(tmp_path: Path) -> None:
    frame = tmp_path / "vq-frame.png"
    frame.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 24)
    asked = VideoRequest(
        prompt="a red fox in snow",
        image_file=str(frame),
        last_frame_url="https://example.com/last.png",
        tags=("demo", "fox"),
        client_job_id="order-17",
        service_tier="flex",
        seed=42,
    )
    resolved, files = resolve(asked, load_catalog(), "byteplus")
    assert resolved.model_dump(mode="json") == json.loads(BYTEPLUS_RECORD)["request"]
    assert list(files) == ["first_frame"]


def test_repeated_client_ids_point_at_their_first_use() -> None:
    assert repeated_client_ids(["a", None, "b", "a", None, "a", "b"]) == {3: 0, 5: 0, 6: 2}
    assert repeated_client_ids([None, None, "c"]) == {}


def test_every_batch_names_a_repeated_client_id_its_own_way() -> None:
    vq = VideoQueue(Settings(_env_file=None), store=JobStore(fakeredis.FakeRedis(decode_responses=True)))
    requests = [VideoRequest(prompt=p, client_job_id=c) for p, c in (("a", "x"), ("b", None), ("c", "x"))]
    with pytest.raises(InvalidRequestError) as info:
        vq.enqueue([vq.prepare(r) for r in requests])
    assert info.value.problems == {"client_job_id": "repeated within one submission: x"}
    with pytest.raises(InvalidRequestError) as info:
        _prepare_all(vq, [(1, requests[0]), (2, requests[1]), (4, requests[2])], {})
    assert info.value.problems == {"line 4: client_job_id": "'x' repeats line 1"}
    assert vq.store.redis.keys("*") == []
