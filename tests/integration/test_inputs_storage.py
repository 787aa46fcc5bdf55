"""Input images in object storage, not Redis (videoqueue.inputs): uploaded with the job
under its key, sent to the provider from there by a real `celery worker`, gone with the job.
Into a local folder and into S3 (moto's server over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producer import JobRecord, JobStatus, VideoQueue, VideoRequest
from tests.integration.conftest import REDIS_URL, S3Server, Stack
from tests.integration.helpers import redis_value, wait_for
from tests.unit.helpers import walk_to
from videoqueue import inputs, keys
from videoqueue.resolved import ImageUpload

pytestmark = pytest.mark.integration

# Random bytes do not compress: a Redis key holding either image would be this big.
IMAGE_BYTES = 300_000


def _image(folder: Path, name: str, signature: bytes) -> Path:
    path = folder / name
    path.write_bytes(signature + os.urandom(IMAGE_BYTES))
    return path


def _images(folder: Path) -> tuple[Path, Path]:
    return _image(folder, "first.png", b"\x89PNG\r\n\x1a\n"), _image(folder, "last.jpg", b"\xff\xd8\xff\xe0")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_no_key_holds_the_images(images: tuple[Path, Path]) -> None:
    """Every key of the database (the namespace's and the broker's) is small and holds
    neither image, raw or base64."""
    markers = [p.read_bytes()[100:140] for p in images]
    markers += [base64.b64encode(m)[4:40] for m in markers]
    raw = redis.Redis.from_url(REDIS_URL)
    sizes: dict[str, int] = {}
    for key in raw.scan_iter(count=1000):
        sizes[key.decode()] = int(raw.memory_usage(key) or 0)  # type: ignore[arg-type]
        for value in _flat(redis_value(raw, key)):
            assert not any(m in value for m in markers), f"{key!r} holds image bytes"
    assert sizes and max(sizes.values()) < IMAGE_BYTES // 10, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def _uploaded(record: JobRecord, role: str) -> ImageUpload:
    """The record's reference to its uploaded `role` image."""
    image = record.request.images[role]  # type: ignore[index]
    assert isinstance(image, ImageUpload) and image.uri is not None, image
    return image


def _flat(value: object) -> list[bytes]:
    """Every bytes item inside `value` (nested tuples, as `redis_value` gives them)."""
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, tuple):
        return [b for item in value for b in _flat(item)]
    return []


def _sent_images(stack: Stack, prompt: str) -> dict[str, str]:
    """The images the simulator received with the create of `prompt`."""
    tasks: dict[str, dict[str, Any]] = httpx.get(f"{stack.simulator.url}/_sim/tasks", timeout=5).json()
    [sent] = [t["images"] for t in tasks.values() if t["prompt"] == prompt]
    return dict(sent)


def _run(stack: Stack, vq: VideoQueue, tmp_path: Path, exists: Callable[[str], bool]) -> None:
    """Submit a job with two image files that renders for a few seconds, and one that
    fails; check where the images are while it runs and after it ends. `exists` tells
    whether the storage holds a URI's object."""
    stack.start_worker()
    first, last = _images(tmp_path)
    # [sim:latency=4]: the job runs 4 s at the provider, time to look while it is active.
    prompt = "a fox from two frames [sim:latency=4]"
    job = vq.submit(VideoRequest(prompt=prompt, image_file=str(first), last_frame_file=str(last)))
    failing = vq.submit(VideoRequest(prompt="a fox that fails [sim:fail]", image_file=str(first)))

    up_first, up_last = _uploaded(job, "first_frame"), _uploaded(job, "last_frame")
    first_uri, last_uri = str(up_first.uri), str(up_last.uri)
    assert first_uri.endswith(f"inputs/{job.id}/first_frame.png")
    assert last_uri.endswith(f"inputs/{job.id}/last_frame.jpg")
    assert (up_first.sha256, up_last.sha256) == (_sha(first), _sha(last))
    assert exists(first_uri) and exists(last_uri)
    wait_for(lambda: vq.get(job.id).status is JobStatus.RUNNING, 30, "the job at the provider")
    _assert_no_key_holds_the_images((first, last))

    assert _sent_images(stack, prompt) == {"first_frame": f"sha256:{_sha(first)}", "last_frame": f"sha256:{_sha(last)}"}
    done, failed = vq.wait([job.id, failing.id], timeout=90)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert failed.status is JobStatus.FAILED
    # A success's inputs go with its final move (after it: `wait`, told by the event
    # stream, returns at the move, so this waits for both the objects and the index entry).
    wait_for(
        lambda: (
            not exists(first_uri)
            and not exists(last_uri)
            and stack.redis.zscore(keys.INPUTS_RELEASE_INDEX, job.id) is None
        ),
        10,
        "the inputs deleted",
    )
    # A failed job's are kept a day, for a retry, which gets its own copy.
    failed_uri = str(_uploaded(failed, "first_frame").uri)
    assert exists(failed_uri)
    assert failed.finished_at is not None
    assert stack.redis.zscore(keys.INPUTS_RELEASE_INDEX, failed.id) == pytest.approx(
        failed.finished_at.timestamp() + inputs.RETRY_GRACE_S
    )
    retry = vq.retry(failed.id)
    retried_uri = str(_uploaded(retry, "first_frame").uri)
    assert retried_uri.endswith(f"inputs/{retry.id}/first_frame.png")
    assert exists(retried_uri) and exists(failed_uri)


def test_images_go_to_the_storage_folder_not_redis_and_go_with_the_job(local_stack: Stack, tmp_path: Path) -> None:
    vq = local_stack.queue()

    def exists(uri: str) -> bool:
        assert uri.startswith("file://"), uri
        return Path(uri.removeprefix("file://")).is_file()

    _run(local_stack, vq, tmp_path, exists)
    folder = Path(local_stack.storage_url.removeprefix("file://"))
    assert (folder / "inputs").is_dir()


def test_images_go_to_s3_not_redis_and_go_with_the_job(s3_stack: tuple[Stack, S3Server, str], tmp_path: Path) -> None:
    stack, s3, bucket = s3_stack
    vq = stack.queue()
    client = s3.client()

    def exists(uri: str) -> bool:
        prefix = f"s3://{bucket}/"
        assert uri.startswith(prefix), uri
        listed = client.list_objects_v2(Bucket=bucket, Prefix=uri.removeprefix(prefix))
        return int(listed.get("KeyCount", 0)) == 1

    _run(stack, vq, tmp_path, exists)
    listed = client.list_objects_v2(Bucket=bucket, Prefix="renders/inputs/").get("Contents", [])
    assert len(listed) == 2  # the failed job's image and its retry's copy


def test_the_sweep_deletes_inputs_a_worker_left_after_the_final_move(local_stack: Stack, tmp_path: Path) -> None:
    # As if the worker that made the final move died before deleting: the move (here the
    # producer's process, which deletes nothing) lists the inputs; only the sweep is left.
    vq = local_stack.queue()
    first, _ = _images(tmp_path)
    job = vq.submit(VideoRequest(prompt="ended elsewhere", image_file=str(first)))  # no worker yet
    uri = str(_uploaded(job, "first_frame").uri)
    assert Path(uri.removeprefix("file://")).is_file()
    assert walk_to(vq.store, job.id, JobStatus.SUCCEEDED) is not None
    assert local_stack.redis.zscore(keys.INPUTS_RELEASE_INDEX, job.id) is not None

    # SWEEP_INTERVAL_S 1 instead of 60: the sweep's first pass comes within the test.
    local_stack.start_worker(SWEEP_INTERVAL_S="1")
    wait_for(lambda: not Path(uri.removeprefix("file://")).exists(), 30, "the sweep to delete the inputs")
    wait_for(lambda: local_stack.redis.zscore(keys.INPUTS_RELEASE_INDEX, job.id) is None, 10, "the entry gone")
