"""End to end through real workers: producer -> Redis -> celery worker -> simulator (HTTP,
real Ark SDK) -> storage (local folder or moto S3 over HTTP)."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest

from producer import ErrorCode, InvalidRequestError, JobStatus, VideoRequest
from producer.celery_client import producer_app
from tests.integration.conftest import REDIS_URL, S3Server, Stack
from tests.integration.helpers import assert_mp4, local_path, read_manifest, served_size, wait_for, wait_status
from videoqueue import namespace
from videoqueue.catalog import load_catalog
from videoqueue.job import TASK_SUBMIT
from videoqueue.resolved import ImageUpload, ResolvedRequest

pytestmark = pytest.mark.integration

SHAPES: list[dict[str, Any]] = [
    {"duration": 5},
    {"duration": 4, "ratio": "9:16"},
    {"duration": 8, "resolution": "1080p", "audio": False},
    {"duration": 12, "ratio": "1:1", "resolution": "480p"},
    {"duration": 6, "service_tier": "flex"},
    {"model": "seedance-1-0-pro-250528", "duration": 3},
]


def _expected_cost(request: ResolvedRequest) -> Decimal:
    spec = load_catalog().models[request.model]
    tokens = spec.tokens(request.resolution, request.ratio, request.duration)
    return spec.usd_for_tokens(tokens, audio=request.audio, service_tier=request.service_tier)


def test_many_jobs_end_to_end_into_a_local_folder(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=4)
    vq = local_stack.queue()
    requests = [VideoRequest(prompt=f"clip {i}: a fox in snow", **SHAPES[i % len(SHAPES)]) for i in range(30)]
    jobs = vq.submit_many(requests)

    done = vq.wait([j.id for j in jobs], timeout=180)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 30, [j.error for j in done]
    for job in done:
        assert job.output_uri is not None and job.manifest_uri is not None
        video = local_path(job.output_uri)
        assert video.name == f"{job.id}.mp4"
        assert video.stat().st_size == served_size(job)
        assert_mp4(video.read_bytes(), job)
        manifest = read_manifest(local_path(job.manifest_uri))
        assert manifest["job_id"] == job.id
        expected = _expected_cost(job.request)
        assert job.cost_estimate_usd == expected
        assert job.cost_usd == expected  # the simulator bills by the same token formula
        assert manifest["cost"] == {
            "estimate_usd": float(expected),
            "actual_usd": float(expected),
            "billed_units": job.billed_units,
            "unit": "token",
        }
        assert job.attempts == 1 and job.finished_at is not None
        assert [h["to"] for h in job.history] == ["submitting", "running", "downloading", "succeeded"]
    stats = local_stack.simulator.stats()
    assert stats["creates_total"] == 30
    assert set(stats["creates_by_prompt"].values()) == {1}
    leftovers = [p.name for p in local_path(done[0].output_uri or "").parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_many_jobs_end_to_end_into_s3(s3_stack: tuple[Stack, S3Server, str]) -> None:
    stack, s3, bucket = s3_stack
    # Bigger than one 8 MiB part, so the upload is a real multipart upload.
    stack.simulator.configure(video_pad_bytes=9 * 1024 * 1024)
    stack.start_worker(concurrency=3)
    vq = stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"s3 clip {i}", **SHAPES[i % 5]) for i in range(6)])

    done = vq.wait([j.id for j in jobs], timeout=180)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 6, [j.error for j in done]
    client = s3.client()
    for job in done:
        expected_size = served_size(job, 9 * 1024 * 1024)
        assert job.output_uri == f"s3://{bucket}/renders/{job.id}.mp4"
        head = client.head_object(Bucket=bucket, Key=f"renders/{job.id}.mp4")
        assert head["ContentLength"] == expected_size
        assert head["ContentType"] == "video/mp4"
        first = client.get_object(Bucket=bucket, Key=f"renders/{job.id}.mp4", Range="bytes=0-1023")["Body"].read()
        assert_mp4(first, job)
        manifest = json.loads(client.get_object(Bucket=bucket, Key=f"renders/{job.id}.json")["Body"].read())
        assert manifest["video"] == {"uri": job.output_uri, "bytes": expected_size, "content_type": "video/mp4"}
        assert Decimal(str(manifest["cost"]["actual_usd"])) == job.cost_usd == _expected_cost(job.request)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="renders/")["KeyCount"]
    assert listed == 12


def test_a_submit_delivered_twice_creates_one_provider_task(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=4)
    vq = local_stack.queue()
    prompt = "duplicate delivery [sim:latency=2]"
    job = vq.submit(VideoRequest(prompt=prompt))
    app = producer_app(REDIS_URL)
    for _ in range(4):  # the broker delivering the same message again, several times
        app.send_task(TASK_SUBMIT, args=[job.id])

    done = vq.wait([job.id], timeout=60)[0]

    assert done.status is JobStatus.SUCCEEDED
    assert local_stack.simulator.stats()["creates_by_prompt"] == {prompt: 1}
    assert done.attempts == 1


def test_a_provider_failure_fails_the_job_with_the_providers_code(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    unsafe, broken = vq.submit_many(
        [VideoRequest(prompt="unsafe [sim:fail]"), VideoRequest(prompt="broken [sim:fail=InternalServiceError]")]
    )

    done = {j.id: j for j in vq.wait([unsafe.id, broken.id], timeout=60)}

    assert done[unsafe.id].status is JobStatus.FAILED
    error = done[unsafe.id].error
    assert error is not None
    assert (error.code, error.provider_code) == (ErrorCode.CONTENT_FILTERED, "OutputVideoSensitiveContentDetected")
    assert error.message == "The generated video may contain sensitive content."
    error = done[broken.id].error
    assert error is not None
    assert (error.code, error.provider_code) == (ErrorCode.UPSTREAM, "InternalServiceError")
    assert error.message == "Simulated failure: InternalServiceError"
    for job in done.values():
        assert job.output_uri is None and job.cost_usd is None


def test_cancel_of_a_job_queued_at_the_provider(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="never starts [sim:hold]"))
    running = wait_status(vq, job.id, {"running"})
    assert running.provider_task_id

    vq.cancel(job.id)
    done = vq.wait([job.id], timeout=30)[0]

    assert done.status is JobStatus.CANCELLED
    assert local_stack.simulator.task(running.provider_task_id)["status"] == "cancelled"
    assert done.output_uri is None and done.cost_usd is None


def test_cancel_before_the_provider_is_reached(local_stack: Stack) -> None:
    vq = local_stack.queue()  # no worker yet: the job stays queued
    job = vq.submit(VideoRequest(prompt="cancelled early"))
    assert vq.cancel(job.id).status is JobStatus.CANCELLED
    local_stack.start_worker()
    follower = vq.submit(VideoRequest(prompt="after it"))
    vq.wait([follower.id], timeout=60)
    assert vq.get(job.id).status is JobStatus.CANCELLED
    assert "cancelled early" not in local_stack.simulator.stats()["creates_by_prompt"]


def test_a_job_that_outlives_its_deadline_expires(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue(job_deadline_s=4)
    job = vq.submit(VideoRequest(prompt="takes forever [sim:hold]"))

    done = vq.wait([job.id], timeout=30)[0]

    assert done.status is JobStatus.EXPIRED
    assert done.error is not None and done.error.code is ErrorCode.DEADLINE
    assert done.provider_task_id
    # The provider task was still queued, so it was cancelled there too.
    assert local_stack.simulator.task(done.provider_task_id)["status"] == "cancelled"
    assert (done.finished_at - done.created_at).total_seconds() < 10  # type: ignore[operator]


def test_200_jobs_are_in_flight_at_once_with_two_worker_slots(local_stack: Stack) -> None:
    """Polling by countdown frees the worker between polls: 2 slots keep 200 renders going.
    A thread-per-clip design would have 2 in flight."""
    local_stack.simulator.configure(latency=20.0, concurrency_per_model=1000)
    # 20 s renders: a first poll at 18 s and then every 2-4 s keeps 200 jobs to a few polls
    # each, so the two slots are free between them (what the test is about).
    local_stack.start_worker(concurrency=2, POLL_INITIAL_S="18", POLL_MIN_S="2", POLL_MAX_S="4")
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"fleet clip {i}") for i in range(200)])

    done = vq.wait([j.id for j in jobs], timeout=600, poll_interval=2)

    stats = local_stack.simulator.stats()
    print(f"max_in_flight={stats['max_in_flight']} creates_total={stats['creates_total']}")
    assert stats["max_in_flight"] >= 190
    assert stats["creates_total"] == 200
    assert all(j.status is JobStatus.SUCCEEDED for j in done), {j.status for j in done}


def test_a_job_is_one_message_on_the_submit_queue_carrying_only_its_id(local_stack: Stack) -> None:
    vq = local_stack.queue()  # no worker: look at what the producer put on the broker
    secret_prompt = "a prompt that must not travel in task arguments"
    job = vq.submit(VideoRequest(prompt=secret_prompt))
    r = local_stack.redis
    assert [r.llen(queue) for queue in namespace.queues()] == [1, 0, 0]
    raw = r.lindex(namespace.queue("submit"), 0)
    assert isinstance(raw, str)
    message = json.loads(raw)
    body = json.loads(base64.b64decode(message["body"]))
    assert body[0] == [job.id] and body[1] == {}
    assert message["headers"]["task"] == "videoqueue.submit"
    assert secret_prompt not in raw


def test_a_create_that_times_out_after_reaching_the_provider_is_looked_up_not_repeated(local_stack: Stack) -> None:
    # The provider creates the task at once but answers after 3 s; our client gives up
    # after 1 s. Whether the task exists is unknown: the next attempt must find it.
    local_stack.start_worker(PROVIDER_TIMEOUT_S="1")
    vq = local_stack.queue()
    prompt = "slow answer [sim:slowcreate=3]"
    job = vq.submit(VideoRequest(prompt=prompt))

    done = vq.wait([job.id], timeout=60)[0]

    assert done.status is JobStatus.SUCCEEDED, done.error
    assert local_stack.simulator.stats()["creates_by_prompt"] == {prompt: 1}
    assert done.attempts == 1  # one create call; the second attempt was a lookup
    assert done.submit_errors == 1


def test_seedance_image_to_video_from_a_url_and_a_local_file(local_stack: Stack, tmp_path: Path) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    first = tmp_path / "first.jpg"
    first.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    image = f"{local_stack.simulator.url}/_sim/image.png"  # checked for reachability at submit
    jobs = vq.submit_many(
        [
            VideoRequest(prompt="from a url", image_url=image),
            VideoRequest(prompt="from a file", image_file=str(first), last_frame_url=image),
        ]
    )

    done = vq.wait([j.id for j in jobs], timeout=60)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 2, [j.error for j in done]
    assert isinstance(uploaded := done[1].request.images["first_frame"], ImageUpload)
    assert uploaded.mime_type == "image/jpeg"
    assert uploaded.uri is not None and uploaded.uri.endswith(f"/inputs/{done[1].id}/first_frame.jpg")
    with pytest.raises(InvalidRequestError) as info:
        vq.submit(VideoRequest(prompt="typo", image_url=f"{local_stack.simulator.url}/_sim/imagee.png"))
    assert "answers HTTP 404" in info.value.problems["image_url"]


def test_a_prefork_child_past_its_memory_cap_is_replaced_and_its_jobs_end_once(local_stack: Stack) -> None:
    # WORKER_MAX_MEMORY_PER_CHILD (KiB) is below any child's size here, so each child is
    # replaced after its first task: the cap that bounds a store child's heap (default
    # 512 MiB) must not lose or repeat a step.
    worker = local_stack.start_worker(concurrency=1, pool="prefork", WORKER_MAX_MEMORY_PER_CHILD="1")
    main = psutil.Process(worker.proc.pid)
    children: set[int] = set()
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"replaced child {i}") for i in range(3)])

    def all_final() -> bool:
        children.update(c.pid for c in main.children())
        return all(r.status.is_final for r in vq.get_many([j.id for j in jobs]))

    wait_for(all_final, 120, "jobs final")
    done = vq.get_many([j.id for j in jobs])
    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 3, [j.error for j in done]
    assert len(children) >= 4, children  # 3 jobs of 3 tasks each, a fresh child after each
    assert "WORKER_MAX_MEMORY_PER_CHILD=1 KiB is below a working pool child's size" in worker.log_text()
    # Said in the worker's log, with the child's size: Celery's own line is not.
    assert worker.log_text().count("pool child replaced after a task: past WORKER_MAX_MEMORY_PER_CHILD") >= 3
    assert local_stack.simulator.stats()["creates_total"] == 3
    assert all([h["to"] for h in j.history] == ["submitting", "running", "downloading", "succeeded"] for j in done)
