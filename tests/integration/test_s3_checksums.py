"""S3-compatible stores that refuse boto3's checksum headers (issue 12).

Since boto3 1.36 every PutObject and UploadPart carries `x-amz-sdk-checksum-algorithm` /
`x-amz-checksum-crc32`, and CreateMultipartUpload `x-amz-checksum-algorithm`; Backblaze
B2, OVH and Qumulo answer 400 InvalidArgument "Unsupported header". Here a proxy in front
of moto's S3 server (tests/integration/s3proxy.py) does the same, and real `celery worker`
processes and the real `videoqueue` CLI talk to it."""

from __future__ import annotations

import json
import subprocess

import pytest

from producer import ErrorCode, JobStatus, VideoRequest
from tests.integration.conftest import S3Server, Stack
from tests.integration.helpers import assert_mp4, served_size
from tests.integration.s3proxy import checksum_refusing_proxy
from tests.integration.test_cli import CLI

pytestmark = pytest.mark.integration

PAD = 9 * 1024 * 1024  # more than one 8 MiB part: a real multipart upload


def test_videos_and_manifests_go_through_a_store_that_refuses_checksum_headers(
    s3_stack: tuple[Stack, S3Server, str],
) -> None:
    stack, s3, bucket = s3_stack
    with checksum_refusing_proxy(s3.endpoint) as (proxy, log):
        # S3_CHECKSUMS unset: with S3_ENDPOINT_URL set it defaults to when_required.
        stack.start_worker(S3_ENDPOINT_URL=proxy)
        vq = stack.queue()
        small = vq.submit(VideoRequest(prompt="single-part clip"))
        assert vq.wait([small.id], timeout=90)[0].status is JobStatus.SUCCEEDED, vq.get(small.id).error
        stack.simulator.configure(video_pad_bytes=PAD)
        big = vq.submit(VideoRequest(prompt="multipart clip"))
        done = vq.wait([big.id], timeout=120)[0]
        assert done.status is JobStatus.SUCCEEDED, done.error

    assert log.refused == []
    methods = {(method, path.split("?", 1)[1] if "?" in path else "") for method, path in log.forwarded}
    assert ("POST", "uploads") in methods  # CreateMultipartUpload went through the proxy
    assert any(m == "PUT" and "partNumber=" in q for m, q in methods)  # and UploadPart

    client = s3.client()  # straight to moto, to see what was stored
    sizes = {small.id: served_size(small), big.id: served_size(big, PAD)}
    for job_id, size in sizes.items():
        head = client.head_object(Bucket=bucket, Key=f"renders/{job_id}.mp4")
        assert head["ContentLength"] == size
        body = client.get_object(Bucket=bucket, Key=f"renders/{job_id}.mp4", Range="bytes=0-1023")["Body"].read()
        assert_mp4(body)
        manifest = json.loads(client.get_object(Bucket=bucket, Key=f"renders/{job_id}.json")["Body"].read())
        assert manifest["video"]["bytes"] == size
    assert client.head_object(Bucket=bucket, Key=f"renders/{big.id}.mp4")["ETag"].strip('"').endswith("-2")


def test_with_when_supported_the_store_fails_and_doctor_names_the_setting(
    s3_stack: tuple[Stack, S3Server, str],
) -> None:
    stack, s3, bucket = s3_stack
    with checksum_refusing_proxy(s3.endpoint) as (proxy, log):
        env = {"S3_ENDPOINT_URL": proxy, "S3_CHECKSUMS": "when_supported"}
        stack.start_worker(2, STORE_MAX_ATTEMPTS="2", **env)  # the refused store fails after 2 tries, not 8
        vq = stack.queue()
        job = vq.submit(VideoRequest(prompt="refused clip"))
        done = vq.wait([job.id], timeout=90)[0]

        assert done.status is JobStatus.FAILED
        assert done.error is not None and done.error.code is ErrorCode.STORAGE
        assert "Unsupported header" in done.error.message
        assert "set S3_CHECKSUMS=when_required" in done.error.message
        assert log.refused, "the proxy refused nothing"

        doctor = subprocess.run(
            [CLI, "doctor"], env=stack.env(**env), capture_output=True, text=True, timeout=120, check=False
        )
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        storage_lines = [line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["storage"]]
        assert len(storage_lines) == 1, doctor.stdout
        assert storage_lines[0].startswith("fail")
        assert "Unsupported header" in storage_lines[0]
        assert "set S3_CHECKSUMS=when_required" in storage_lines[0]

        # The setting it names is the fix: the same store, the same client, the default.
        fixed = subprocess.run(
            [CLI, "doctor"],
            env=stack.env(S3_ENDPOINT_URL=proxy, S3_CHECKSUMS="when_required"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "ok    storage" in fixed.stdout, fixed.stdout
    assert client_keys(s3, bucket) == []  # nothing stored by the refused job, the probes deleted


def client_keys(s3: S3Server, bucket: str) -> list[str]:
    listing = s3.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]
