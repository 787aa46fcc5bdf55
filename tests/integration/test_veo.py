"""Veo end to end through real workers, the real google-genai SDK over HTTP to the
simulator's Vertex AI API, and real storage (local folder, moto S3 over HTTP)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from producer import ErrorCode, JobStatus, VideoRequest
from tests.integration.conftest import S3Server, Stack
from tests.integration.helpers import assert_mp4, local_path, read_manifest, served_size, served_video
from videoqueue.catalog import load_catalog

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_veo_text_and_image_to_video_into_a_local_folder(local_stack: Stack, tmp_path: Path) -> None:
    local_stack.start_worker(concurrency=3)
    vq = local_stack.queue()
    first = tmp_path / "first.png"
    first.write_bytes(PNG)
    jobs = vq.submit_many(
        [
            VideoRequest(prompt="veo text", provider="veo", duration=6, resolution="1080p"),
            VideoRequest(prompt="veo image", provider="veo", image_file=str(first), audio=False),
            VideoRequest(
                prompt="veo frames",
                provider="veo",
                model="veo-3.1-generate-001",
                image_file=str(first),
                last_frame_file=str(first),
                duration=8,
                negative_prompt="blur",
                person_generation="dont_allow",
            ),
        ]
    )

    done = vq.wait([j.id for j in jobs], timeout=120)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 3, [j.error for j in done]
    expected = [Decimal("0.72"), Decimal("0.32"), Decimal("3.20")]  # 6 s x $0.12, 4 s x $0.08, 8 s x $0.40
    assert [j.cost_usd for j in done] == [j.cost_estimate_usd for j in done] == expected
    for job in done:
        assert job.provider_task_id and job.provider_task_id.startswith(
            f"publishers/google/models/{job.model}/operations/"
        )
        assert job.billed_units == job.request.duration
        video = local_path(job.output_uri or "")
        assert video.stat().st_size == served_size(job)
        assert_mp4(video.read_bytes(), job)
        manifest = read_manifest(local_path(job.manifest_uri or ""))
        assert manifest["cost"] == {
            "estimate_usd": float(job.cost_estimate_usd),
            "actual_usd": float(job.cost_estimate_usd),
            "billed_units": job.billed_units,
            "unit": "second",
        }
    assert local_stack.simulator.stats()["creates_total"] == 3


def test_veo_into_s3(s3_stack: tuple[Stack, S3Server, str], tmp_path: Path) -> None:
    stack, s3, bucket = s3_stack
    stack.start_worker()
    vq = stack.queue()
    first = tmp_path / "first.png"
    first.write_bytes(PNG)
    jobs = vq.submit_many(
        [
            VideoRequest(prompt="veo s3 text", provider="veo"),
            VideoRequest(prompt="veo s3 image", provider="veo", image_file=str(first), ratio="9:16"),
        ]
    )

    done = vq.wait([j.id for j in jobs], timeout=120)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 2, [j.error for j in done]
    client = s3.client()
    for job in done:
        body = client.get_object(Bucket=bucket, Key=f"renders/{job.id}.mp4")["Body"].read()
        assert body == served_video(job)
        manifest = json.loads(client.get_object(Bucket=bucket, Key=f"renders/{job.id}.json")["Body"].read())
        assert manifest["job"]["provider"] == "veo"
        assert manifest["cost"]["actual_usd"] == float(job.cost_usd or 0) == 0.4  # 4 s x $0.10 at 720p with audio


@pytest.mark.parametrize("prompt", ["unsafe [sim:fail]", "unsafe [sim:fail] [sim:reasonsonly]"])
def test_a_safety_filtered_veo_result_fails_with_content_filtered(local_stack: Stack, prompt: str) -> None:
    # The second form sends the filter's reasons without raiMediaFilteredCount (issue 12).
    local_stack.start_worker()
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt=prompt, provider="veo"))

    done = vq.wait([job.id], timeout=60)[0]

    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.code is ErrorCode.CONTENT_FILTERED
    assert "Responsible AI" in done.error.message
    assert done.output_uri is None and done.cost_usd is None


def test_a_mixed_batch_of_seedance_and_veo_all_finish_with_their_own_costs(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=4)
    vq = local_stack.queue()
    requests = []
    for i in range(8):
        requests.append(VideoRequest(prompt=f"seedance {i}", duration=4 + i % 5, audio=i % 2 == 0))
        requests.append(VideoRequest(prompt=f"veo {i}", provider="veo", duration=(4, 6, 8)[i % 3], audio=i % 2 == 0))
    jobs = vq.submit_many(requests)

    done = vq.wait([j.id for j in jobs], timeout=180)

    assert all(j.status is JobStatus.SUCCEEDED for j in done), [(j.provider, j.error) for j in done]
    catalog = load_catalog()
    for job in done:
        spec = catalog.models[job.model]
        units, cost = spec.estimate(job.request)
        assert (job.billed_units, job.cost_usd) == (units, cost), job.id
    by_provider = {p: sum(j.cost_usd or 0 for j in done if j.provider == p) for p in ("byteplus", "veo")}
    assert by_provider["veo"] == sum(
        catalog.models["veo-3.1-fast-generate-001"].estimate(j.request)[1] for j in done if j.provider == "veo"
    )
    assert len({j.provider for j in done}) == 2
