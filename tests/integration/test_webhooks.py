"""Webhooks and completion tasks through real workers: a receiver on loopback (a real HTTP
server) gets each job's end signed and verifies it with `producer.webhooks.verify`; a
receiver down for a while gets it later; a replay comes with the same webhook-id; a
completion task of the producer's own Celery app (its own `celery worker`) runs once with
the final record; URLs the settings do not allow are refused before anything is stored."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from producer import InvalidRequestError, JobStatus, VideoRequest
from producer.webhooks import verify
from simulator.stack import ManagedProcess, _bin, wait_until
from tests.integration.conftest import REDIS_URL, Stack
from tests.integration.receiver import Receiver
from tests.integration.test_cli import run
from videoqueue import keys

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"videoqueue-test-webhook-secret!!").decode()
# The receiver listens on loopback over http: the suite's workers and producers allow both.
WEBHOOK_ENV = {"WEBHOOK_SECRET": SECRET, "WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_ALLOW_PRIVATE": "true"}
PRODUCER = {"webhook_secret": SECRET, "webhook_allow_http": True, "webhook_allow_private": True}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def _verified(receiver: Receiver) -> list[dict[str, Any]]:
    return [verify(r.headers, r.body, SECRET) for r in receiver.received]


def test_each_final_job_gets_one_signed_webhook(local_stack: Stack, receiver: Receiver) -> None:
    local_stack.start_worker(concurrency=4, **WEBHOOK_ENV)
    vq = local_stack.queue(**PRODUCER)
    jobs = vq.submit_many([VideoRequest(prompt=f"clip {i}: a fox", webhook_url=receiver.url) for i in range(4)])
    started = vq.submit(VideoRequest(prompt="a fox", webhook_url=receiver.url, webhook_events=["final", "started"]))
    cancelled = vq.submit(VideoRequest(prompt="a fox", webhook_url=receiver.url))
    vq.cancel(cancelled.id)  # a producer's end is told too

    done = vq.wait([j.id for j in [*jobs, started, cancelled]], timeout=120)
    # The cancel may reach the job at the provider or after it ended: any end is told.
    assert [j.status for j in done[:5]] == [JobStatus.SUCCEEDED] * 5
    wait_until(lambda: len(receiver.received) >= 7, 60, "7 webhooks")

    events = _verified(receiver)
    ids = [r.headers["webhook-id"] for r in receiver.received]
    assert len(ids) == len(set(ids)) == 7, ids
    by_id = dict(zip(ids, events, strict=True))
    for job in done:
        event = by_id[f"{job.id}:{job.status.value}"]
        assert event["type"] == f"job.{job.status.value}"
        assert event["data"]["id"] == job.id and event["data"]["status"] == job.status.value
        if job.status is JobStatus.SUCCEEDED:
            assert event["data"]["output_uri"] == job.output_uri
    assert by_id[f"{started.id}:started"]["data"]["status"] == "running"
    [delivery] = [d for d in vq.webhook_status(jobs[0].id)]
    assert (delivery.state, delivery.attempts, delivery.last_code) == ("delivered", 1, 200)


def test_a_receiver_down_for_a_while_gets_the_delivery_later(local_stack: Stack) -> None:
    down = Receiver()  # not listening yet: every attempt meets a refused connection
    # Svix's schedule (5 s, 5 min, 30 min...) would keep this test an hour: one second apart.
    local_stack.start_worker(concurrency=2, WEBHOOK_RETRY_SCHEDULE_S="[0, 1, 1, 1, 1, 1, 1, 1, 1, 1]", **WEBHOOK_ENV)
    vq = local_stack.queue(**PRODUCER)
    job = vq.submit(VideoRequest(prompt="a fox", webhook_url=down.url))
    vq.wait([job.id], timeout=60)

    wait_until(lambda: _attempts(vq, job.id) >= 2, 30, "two failed attempts")
    [failing] = vq.webhook_status(job.id)
    assert failing.state == "pending" and failing.last_error and "unreachable" in failing.last_error
    down.start()
    try:
        wait_until(lambda: len(down.received) >= 1, 30, "the delivery after the receiver came back")
        [event] = _verified(down)
        assert event["data"]["id"] == job.id and down.received[0].headers["webhook-id"] == f"{job.id}:succeeded"
        wait_until(lambda: vq.webhook_status(job.id)[0].state == "delivered", 10, "the delivery recorded")
        assert vq.webhook_status(job.id)[0].attempts >= 3
    finally:
        down.stop()


def _attempts(vq: Any, job_id: str) -> int:
    found = vq.webhook_status(job_id)
    return found[0].attempts if found else 0


def test_a_receiver_refusing_with_a_4xx_is_not_retried(local_stack: Stack) -> None:
    refusing = Receiver(status=410).start()
    try:
        local_stack.start_worker(concurrency=2, WEBHOOK_RETRY_SCHEDULE_S="[0, 1, 1]", **WEBHOOK_ENV)
        vq = local_stack.queue(**PRODUCER)
        job = vq.submit(VideoRequest(prompt="a fox", webhook_url=refusing.url))
        vq.wait([job.id], timeout=60)
        wait_until(
            lambda: bool(vq.webhook_status(job.id)) and vq.webhook_status(job.id)[0].state != "pending", 30, "ended"
        )
        [delivery] = vq.webhook_status(job.id)
        assert (delivery.state, delivery.attempts, delivery.last_code) == ("failed", 1, 410)
        assert len(refusing.received) == 1
    finally:
        refusing.stop()


def test_replay_delivers_again_with_the_same_webhook_id(local_stack: Stack, receiver: Receiver) -> None:
    local_stack.start_worker(concurrency=2, **WEBHOOK_ENV)
    vq = local_stack.queue(**PRODUCER)
    job = vq.submit(VideoRequest(prompt="a fox", webhook_url=receiver.url))
    vq.wait([job.id], timeout=60)
    wait_until(lambda: len(receiver.received) == 1, 30, "the first delivery")

    replayed = vq.webhook_replay(job.id)

    assert replayed.attempts == 0
    wait_until(lambda: len(receiver.received) == 2, 30, "the replay")
    first, again = _verified(receiver)
    assert receiver.received[0].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]
    assert first == again
    wait_until(lambda: vq.webhook_status(job.id)[0].state == "delivered", 10, "the replay recorded")


def test_a_completion_task_of_the_producers_own_app_runs_once_with_the_record(local_stack: Stack, log_dir: Any) -> None:
    queue = f"completion-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "COMPLETION_BROKER_URL": REDIS_URL}
    own = ManagedProcess(
        f"completion-{queue}",
        [
            _bin("celery"),
            "-A",
            "tests.integration.completion_app",
            "worker",
            "-Q",
            queue,
            "--concurrency=1",
            "--loglevel=INFO",
            f"--hostname={queue}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        env,
        log_dir / f"{queue}.log",
    )
    try:
        wait_until(lambda: " ready." in own.log_text() or not own.alive(), 60, "the producer's own worker")
        local_stack.start_worker(concurrency=2)
        vq = local_stack.queue()
        job = vq.submit(VideoRequest(prompt="a fox", on_complete="completion_test.on_video", on_complete_queue=queue))
        [done] = vq.wait([job.id], timeout=60)
        results: Any = redis.Redis.from_url(REDIS_URL)
        wait_until(lambda: results.llen("completion-test:records") >= 1, 30, "the completion task")
        wait_until(lambda: vq.webhook_status(job.id)[0].state == "delivered", 10, "the delivery recorded")
        [delivery] = vq.webhook_status(job.id)
        assert (delivery.kind, delivery.attempts) == ("task", 1)
        records = [json.loads(raw) for raw in results.lrange("completion-test:records", 0, -1)]
        assert len(records) == 1
        assert records[0]["id"] == job.id and records[0]["status"] == done.status.value == "succeeded"
        assert records[0]["output_uri"] == done.output_uri
    finally:
        own.stop()


@pytest.mark.parametrize(
    ("url", "settings", "why"),
    [
        ("http://127.0.0.1:9/h", {"webhook_secret": SECRET}, "not https://"),
        ("http://127.0.0.1:9/h", {"webhook_secret": SECRET, "webhook_allow_http": True}, "a loopback address"),
        ("https://10.1.2.3/h", {"webhook_secret": SECRET}, "a private address"),
        ("https://169.254.169.254/h", {**PRODUCER}, "169.254.169.254"),
        ("http://127.0.0.1:9/h", {"webhook_allow_http": True, "webhook_allow_private": True}, "WEBHOOK_SECRET"),
    ],
)
def test_webhook_urls_the_settings_do_not_allow_are_refused_before_anything_is_stored(
    local_stack: Stack, url: str, settings: dict[str, Any], why: str
) -> None:
    vq = local_stack.queue(**settings)
    with pytest.raises(InvalidRequestError) as caught:
        vq.submit(VideoRequest(prompt="a fox", webhook_url=url))
    assert why in caught.value.problems["webhook_url"]
    assert vq.list() == []
    allowed = local_stack.queue(**PRODUCER)
    assert allowed.submit(VideoRequest(prompt="a fox", webhook_url="http://127.0.0.1:9/h")).status is JobStatus.QUEUED


def test_the_cli_submits_with_a_webhook_shows_its_deliveries_and_replays(
    local_stack: Stack, receiver: Receiver
) -> None:
    local_stack.extra_env.update(WEBHOOK_ENV)
    local_stack.start_worker(concurrency=2)
    submitted = run(
        local_stack,
        "submit",
        "a fox",
        "--webhook-url",
        receiver.url,
        "--webhook-event",
        "started",
        "--webhook-event",
        "final",
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert run(local_stack, "wait", job_id).returncode == 0
    wait_until(lambda: len(receiver.received) == 2, 30, "started and succeeded")
    assert sorted(e["type"] for e in _verified(receiver)) == ["job.started", "job.succeeded"]
    wait_until(
        lambda: "delivered" in run(local_stack, "webhooks", "status", job_id).stdout.split("job.succeeded")[-1],
        10,
        "the delivery recorded",
    )
    shown = run(local_stack, "webhooks", "status", job_id[:8])
    assert f"{job_id}:succeeded" in shown.stdout and "attempts 1" in shown.stdout and "last code 200" in shown.stdout
    replayed = run(local_stack, "webhooks", "replay", job_id)
    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: len(receiver.received) == 3, 30, "the replay")
    assert receiver.received[2].headers["webhook-id"] == f"{job_id}:succeeded"
    bad = run(local_stack, "submit", "a fox", "--webhook-url", receiver.url, "--webhook-event", "done")
    assert bad.returncode == 2 and "webhook_events" in bad.stderr and "nothing was enqueued" in bad.stderr


def test_a_delivery_no_task_was_sent_for_is_sent_by_the_sweep(local_stack: Stack, receiver: Receiver) -> None:
    """What a worker killed between a move and its send leaves: the delivery written with
    the move, no task. Here the producer ends the job (a queued one cancelled) and sends
    nothing; the sweep finds it overdue in the delivery index."""
    vq = local_stack.queue(**PRODUCER)
    vq.store.on_deliveries = None  # the send that a crash would lose
    job = vq.submit(VideoRequest(prompt="a fox", webhook_url=receiver.url))
    assert vq.cancel(job.id).status is JobStatus.CANCELLED
    # The sweep sends a delivery DELIVERY_GRACE_S (30 s) after it was owed; the test makes
    # it due now instead of waiting, as that time passing would.
    delivery_id = f"{job.id}:cancelled"
    assert local_stack.redis.zadd(keys.DELIVERIES_DUE, {delivery_id: time.time() - 1}, xx=True) == 0
    local_stack.start_worker(concurrency=2, SWEEP_INTERVAL_S="1", **WEBHOOK_ENV)
    wait_until(lambda: len(receiver.received) == 1, 30, "the swept delivery")
    [event] = _verified(receiver)
    assert event["type"] == "job.cancelled" and receiver.received[0].headers["webhook-id"] == delivery_id
