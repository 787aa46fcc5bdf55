"""Webhooks and completion tasks without a network: signing and `verify` (forged, stale,
rotated), the request fields and their stored form, the deliveries a move writes with it
(fakeredis), and the retry decisions of an attempt."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from producer.request import VideoRequest, resolve
from producer.webhooks import WebhookVerificationError, verify
from tests.unit.helpers import seedance_request, walk_to
from videoqueue import keys, webhooks
from videoqueue.catalog import load_catalog
from videoqueue.errors import InvalidRequestError
from videoqueue.job import TASK_DELIVER, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from videoqueue.resolved import FINAL_EVENTS
from videoqueue.settings import Settings
from videoqueue.webhooks import DELIVERY_GRACE_S
from worker.deliver import Outcome, _webhook_outcome, attempt, claim, record, send_due

SCHEDULE = [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


SECRET, OTHER = new_secret(), new_secret()
BODY = json.dumps({"type": "job.succeeded", "timestamp": "2026-01-01T00:00:00+00:00", "data": {"id": "j"}}).encode()


def test_a_signed_delivery_verifies_and_gives_its_payload() -> None:
    headers = webhooks.sign([SECRET], "j:succeeded", BODY)
    assert verify(headers, BODY, SECRET) == json.loads(BODY)
    assert verify(headers, BODY, SECRET, tolerance=60) == json.loads(BODY)  # seconds do too
    assert headers["webhook-signature"].startswith("v1,")


def test_a_forged_signature_fails() -> None:
    headers = webhooks.sign([OTHER], "j:succeeded", BODY)
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify(headers, BODY, SECRET)


def test_a_changed_body_or_id_fails() -> None:
    headers = webhooks.sign([SECRET], "j:succeeded", BODY)
    with pytest.raises(WebhookVerificationError):
        verify(headers, BODY.replace(b"succeeded", b"failed"), SECRET)
    with pytest.raises(WebhookVerificationError):
        verify({**headers, "webhook-id": "k:succeeded"}, BODY, SECRET)


def test_a_stale_or_future_timestamp_fails_whatever_the_signature() -> None:
    old = datetime.now(UTC) - timedelta(minutes=6)
    with pytest.raises(WebhookVerificationError, match="stale"):
        verify(webhooks.sign([SECRET], "j:succeeded", BODY, at=old), BODY, SECRET)
    # A tolerance of the receiver's own takes it.
    assert verify(webhooks.sign([SECRET], "j:succeeded", BODY, at=old), BODY, SECRET, tolerance=timedelta(minutes=10))
    ahead = datetime.now(UTC) + timedelta(minutes=6)
    with pytest.raises(WebhookVerificationError, match="future"):
        verify(webhooks.sign([SECRET], "j:succeeded", BODY, at=ahead), BODY, SECRET)


def test_missing_headers_fail() -> None:
    headers = webhooks.sign([SECRET], "j:succeeded", BODY)
    del headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(headers, BODY, SECRET)


def test_rotation_either_side_holds_both_secrets() -> None:
    both = webhooks.sign([OTHER, SECRET], "j:succeeded", BODY)
    assert len(both["webhook-signature"].split(" ")) == 2
    assert verify(both, BODY, SECRET)  # the receiver still on the old one
    assert verify(webhooks.sign([SECRET], "j:succeeded", BODY), BODY, [OTHER, SECRET])  # the receiver on both
    assert verify(webhooks.sign([SECRET], "j:succeeded", BODY), BODY, f"{OTHER},{SECRET}")


def test_secrets_are_checked_without_showing_them() -> None:
    with pytest.raises(ValueError, match="secret 2 does not start with whsec_") as caught:
        webhooks.secrets_of(f"{SECRET},hunter2")
    assert "hunter2" not in str(caught.value)
    assert Settings(webhook_secret=f"{SECRET}, {OTHER}").webhook_secret is not None


def test_request_fields_resolve_and_are_left_out_of_the_stored_record_at_their_defaults() -> None:
    catalog = load_catalog()
    asked = VideoRequest(
        prompt="a fox",
        webhook_url="https://hooks.example.com/v",
        webhook_events=["final", "started"],
        on_complete="app.tasks.done",
        on_complete_queue="done",
    )
    resolved, _ = resolve(asked, catalog, "byteplus")
    assert resolved.webhook_events == (*FINAL_EVENTS, "started")
    plain, _ = resolve(VideoRequest(prompt="a fox"), catalog, "byteplus")
    assert "webhook_events" not in plain.model_dump(mode="json")
    for request in (resolved, plain):
        record = _record(request)
        stored = json.loads(record.to_store_json())["r"]
        assert JobRecord.from_store_json(record.to_store_json(), record.id) == record
        assert ("wu" in stored) == (request is resolved)
    assert {"wu", "we", "oc", "oq"} <= set(json.loads(_record(resolved).to_store_json())["r"])


def _record(request: Any) -> JobRecord:
    now = utcnow()
    return JobRecord(
        id="0c1c0196-aaaa-bbbb-cccc-000000000001",
        status=JobStatus.QUEUED,
        provider="byteplus",
        model=request.model,
        request=request,
        cost_estimate_usd=Decimal("0.1"),
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"webhook_events": ["done"]}, "webhook_events", "unknown event 'done'"),
        ({"webhook_url": "ftp://x.example.com/"}, "webhook_url", "https://"),
        ({"webhook_url": "https://u:p@x.example.com/"}, "webhook_url", "user name or password"),
        ({"on_complete": "not a task name"}, "on_complete", "pattern"),
    ],
)
def test_bad_notification_fields_are_refused(fields: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        VideoRequest(prompt="a fox", **fields)
    assert message in caught.value.problems[field]


def test_fields_given_without_the_one_they_go_with_are_refused() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve(
            VideoRequest(prompt="a fox", webhook_events=["started"], on_complete_queue="q"), load_catalog(), "byteplus"
        )
    assert set(caught.value.problems) == {"webhook_events", "on_complete_queue"}


def test_submit_checks_the_url_and_the_secret() -> None:
    request = seedance_request(webhook_url="http://127.0.0.1:9/hook")
    with pytest.raises(InvalidRequestError, match="WEBHOOK_SECRET is not set"):
        webhooks.check_request(request, Settings())
    with pytest.raises(InvalidRequestError, match="not https"):
        webhooks.check_request(request, Settings(webhook_secret=SECRET))
    with pytest.raises(InvalidRequestError, match=r"loopback.*WEBHOOK_ALLOW_PRIVATE allows"):
        webhooks.check_request(request, Settings(webhook_secret=SECRET, webhook_allow_http=True))
    webhooks.check_request(
        request, Settings(webhook_secret=SECRET, webhook_allow_http=True, webhook_allow_private=True)
    )
    metadata = seedance_request(webhook_url="http://169.254.169.254/latest")
    with pytest.raises(InvalidRequestError, match=r"169\.254\.169\.254") as refused:
        webhooks.check_request(
            metadata, Settings(webhook_secret=SECRET, webhook_allow_http=True, webhook_allow_private=True)
        )
    assert "WEBHOOK_ALLOW_PRIVATE" not in str(refused.value)  # it would not help: metadata is never reached
    with pytest.raises(InvalidRequestError) as refused:
        webhooks.check_request(metadata, Settings(webhook_secret=SECRET, webhook_allow_http=True))
    assert "WEBHOOK_ALLOW_PRIVATE" not in str(refused.value)


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def _job(store: JobStore, **request: Any) -> JobRecord:
    record = _record(seedance_request(**request))
    store.create_many([record])
    return record


def test_the_final_move_writes_its_deliveries_and_says_which(client: Any) -> None:
    store = JobStore(client)
    sent: list[list[str]] = []
    store.on_deliveries = sent.append
    job = _job(
        store, webhook_url="https://h.example.com/", webhook_events=(*FINAL_EVENTS, "started"), on_complete="t.done"
    )
    walk_to(store, job.id, JobStatus.RUNNING, provider_task_id="task-1")
    walk_to(store, job.id, JobStatus.DOWNLOADING)
    store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED, output_uri="file:///v.mp4")
    ids = [f"{job.id}:started", f"{job.id}:succeeded", f"{job.id}:on_complete"]
    assert sent == [ids[:1], ids[1:]]  # no progress event: not asked for
    found = {d.id: d for d in webhooks.deliveries(client, job.id)}
    assert set(found) == set(ids)
    assert found[ids[2]].kind == "task" and found[ids[2]].target == "t.done"
    body = json.loads(client.hget(keys.deliveries_key(job.id), f"{ids[1]}:body"))
    assert body["type"] == "job.succeeded" and body["data"]["status"] == "succeeded"
    assert body["data"]["id"] == job.id
    assert set(client.zrange(keys.DELIVERIES_DUE, 0, -1)) == set(ids)
    assert client.ttl(keys.deliveries_key(job.id)) > 0


def test_a_job_without_notifications_writes_none(client: Any) -> None:
    store = JobStore(client)
    job = _job(store)
    store.transition(job.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    assert client.exists(keys.deliveries_key(job.id)) == 0


def test_an_attempt_is_claimed_once_and_its_outcome_recorded(client: Any) -> None:
    store = JobStore(client)
    job = _job(store, webhook_url="https://h.example.com/")
    store.transition(job.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    delivery_id = f"{job.id}:cancelled"
    first = claim(client, delivery_id, lease_s=30, now=1000.0)
    assert first is not None and first[0].attempts == 1
    assert claim(client, delivery_id, lease_s=30, now=1001.0) is None  # leased
    assert record(client, first[0], Outcome("pending", code=503, retry_in=5.0), now=1002.0, horizon_s=60)
    # Within the horizon a countdown message brings the retry; the index, a grace later.
    assert client.zscore(keys.DELIVERIES_DUE, delivery_id) == 1007.0 + DELIVERY_GRACE_S
    assert claim(client, delivery_id, lease_s=30, now=1003.0) is None  # not yet due
    second = claim(client, delivery_id, lease_s=30, now=1007.0)
    assert second is not None and second[0].attempts == 2
    assert record(client, second[0], Outcome("pending", code=503, retry_in=300.0), now=1008.0, horizon_s=60)
    # Beyond it no message is sent: the sweep sends the retry as soon as it is due.
    assert client.zscore(keys.DELIVERIES_DUE, delivery_id) == 1308.0
    third = claim(client, delivery_id, lease_s=30, now=1308.0)
    assert third is not None and third[0].attempts == 3
    assert record(client, third[0], Outcome("delivered", code=204), now=1309.0, horizon_s=60)
    [done] = webhooks.deliveries(client, job.id)
    assert (done.state, done.attempts, done.last_code) == ("delivered", 3, 204)
    assert client.zscore(keys.DELIVERIES_DUE, delivery_id) is None
    # A replay makes it pending again, same id, attempts reset.
    again = webhooks.replay(client, job.id)
    assert (again.id, again.state, again.attempts) == (delivery_id, "pending", 0)


def test_the_retry_schedule_and_what_is_retried() -> None:
    delivery = webhooks.Delivery(id="j:failed", job_id="j", kind="webhook", type="job.failed", target="x", created_at=0)
    first = delivery.model_copy(update={"attempts": 1})
    assert _webhook_outcome(first, 200, None, SCHEDULE).state == "delivered"
    assert _webhook_outcome(first, None, "timeout", SCHEDULE).retry_in == 5.0
    assert _webhook_outcome(first, 429, None, SCHEDULE).retry_in == 5.0
    assert _webhook_outcome(first.model_copy(update={"attempts": 2}), 502, None, SCHEDULE).retry_in == 300.0
    assert _webhook_outcome(first, 404, None, SCHEDULE).state == "failed"
    assert _webhook_outcome(first, 0, "redirect", SCHEDULE).state == "failed"
    last = first.model_copy(update={"attempts": len(SCHEDULE)})
    assert _webhook_outcome(last, 503, None, SCHEDULE).state == "failed"


def test_the_sweep_sends_what_is_overdue_once_a_grace(client: Any) -> None:
    store = JobStore(client)
    job = _job(store, webhook_url="https://h.example.com/")
    store.transition(job.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)  # owed, its task never sent
    delivery_id = f"{job.id}:cancelled"
    owed_at = client.zscore(keys.DELIVERIES_DUE, delivery_id)
    sent: list[tuple[str, list[str]]] = []

    def send(name: str, args: list[str]) -> None:
        sent.append((name, args))

    assert send_due(client, send, now=owed_at - 1) == []  # within its grace: the worker's send
    assert send_due(client, send, now=owed_at) == [delivery_id]
    assert sent == [("videoqueue.deliver_webhook", [delivery_id])]
    assert send_due(client, send, now=owed_at + 1) == []  # moved on a grace, not sent each tick


def test_a_worker_without_the_secret_makes_no_attempt_and_counts_none(client: Any) -> None:
    store = JobStore(client)
    job = _job(store, webhook_url="https://h.example.com/")
    store.transition(job.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    delivery_id = f"{job.id}:cancelled"
    sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(name: str, **options: Any) -> None:
        sent.append((name, options))

    outcome = attempt(client, delivery_id, Settings(_env_file=None), send_task, now=lambda: 1000.0)
    assert (outcome.state, outcome.counted) == ("pending", False)
    [left] = webhooks.deliveries(client, job.id)
    assert (left.state, left.attempts, left.lease_until) == ("pending", 0, None)
    assert "WEBHOOK_SECRET" in (left.last_error or "")
    # Offered again a grace later (a countdown), never at once: no loop between such workers.
    assert sent == [(TASK_DELIVER, {"args": [delivery_id], "countdown": DELIVERY_GRACE_S})]
