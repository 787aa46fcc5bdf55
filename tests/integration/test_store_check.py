"""The store step's check (worker/storage/base.py `MediaCheck`, worker/media.py) through real
worker processes, the simulator over HTTP, local storage and S3 (moto): an undecodable video
(`[sim:badvideo]`: an MP4 by its first box only) is refused and nothing is left where it was
to go; real clips pass, and a movie's stored scenes decode and join."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer import ErrorCode, JobStatus, VideoRequest
from tests.integration.conftest import S3Server, Stack
from tests.integration.helpers import local_path, wait_status
from worker import media

pytestmark = pytest.mark.integration

# Two attempts, retried within a second, so the refused job ends within the test
# (defaults: 8 attempts, 2-300 s apart).
FAST_GIVE_UP = {"STORE_MAX_ATTEMPTS": "2", "RETRY_BASE_S": "0.2", "RETRY_MAX_S": "0.5"}
FINAL = {"succeeded", "failed", "cancelled", "expired"}


def test_an_undecodable_video_is_refused_in_local_storage(local_stack: Stack, tmp_path: Path) -> None:
    local_stack.start_worker(concurrency=2, pool=None, **FAST_GIVE_UP)
    vq = local_stack.queue()
    good = vq.submit(VideoRequest(prompt="a decodable clip", duration=4, ratio="9:16"))
    bad = vq.submit(VideoRequest(prompt="a clip that does not decode [sim:badvideo]"))

    done_good = wait_status(vq, good.id, FINAL, timeout=90)
    done_bad = wait_status(vq, bad.id, FINAL, timeout=90)

    assert done_good.status is JobStatus.SUCCEEDED, done_good.error
    info = media.probe(local_path(done_good.output_uri or ""))
    assert abs(info.duration_s - 4) < 0.1 and info.has_audio and info.height > info.width
    assert done_bad.status is JobStatus.FAILED and done_bad.error is not None
    assert done_bad.error.code is ErrorCode.STORAGE
    assert done_bad.store_attempts == 2
    assert "VideoDecodeError" in done_bad.error.message and "not a decodable video" in done_bad.error.message
    folder = local_path(done_good.output_uri or "").parent
    # The refused job keeps its manifest (a failed job's record), no video, no temporary file.
    assert sorted(p.name for p in folder.iterdir()) == sorted([f"{good.id}.json", f"{good.id}.mp4", f"{bad.id}.json"])


def test_an_undecodable_video_is_refused_and_deleted_in_s3(s3_stack: tuple[Stack, S3Server, str]) -> None:
    stack, s3, bucket = s3_stack
    stack.start_worker(concurrency=2, pool=None, **FAST_GIVE_UP)
    vq = stack.queue()
    good = vq.submit(VideoRequest(prompt="a decodable clip in s3"))
    bad = vq.submit(VideoRequest(prompt="an s3 clip that does not decode [sim:badvideo]"))

    done_good = wait_status(vq, good.id, FINAL, timeout=90)
    done_bad = wait_status(vq, bad.id, FINAL, timeout=90)

    assert done_good.status is JobStatus.SUCCEEDED, done_good.error
    assert done_bad.status is JobStatus.FAILED and done_bad.error is not None
    assert done_bad.error.code is ErrorCode.STORAGE and "VideoDecodeError" in done_bad.error.message
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="renders/").get("Contents", [])
    keys = {obj["Key"] for obj in listed}
    assert {f"renders/{good.id}.json", f"renders/{good.id}.mp4"} <= keys and f"renders/{bad.id}.mp4" not in keys


def test_stored_scenes_join_into_one_film(local_stack: Stack, tmp_path: Path) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"scene {n}", duration=4) for n in range(3)])
    done = vq.wait([job.id for job in jobs], timeout=90)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 3, [job.error for job in done]
    scenes = [local_path(job.output_uri or "") for job in done]

    result = media.join(scenes, tmp_path / "movie.mp4")

    assert result.copied  # the simulator's clips of one shape share their codec parameters
    info = media.probe(tmp_path / "movie.mp4")
    assert abs(info.duration_s - 12) <= 0.1 and info.has_audio
    assert media.last_frame_png(tmp_path / "movie.mp4") == media.last_frame_png(scenes[-1])
