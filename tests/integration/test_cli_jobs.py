"""Client job ids as idempotency keys, `videoqueue retry`, `fetch` and `url`, as a user runs
them: real Redis, real `celery worker` processes, the simulator and moto's S3 server."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import InvalidRequestError, JobRecord, VideoRequest
from tests.integration.conftest import S3Server, Stack
from tests.integration.helpers import assert_mp4, local_path
from tests.integration.test_cli import CLI, _queue_state, run
from videoqueue import keys, namespace
from videoqueue.jobstore import DuplicateClientJobIdError
from videoqueue.resolved import ResolvedRequest

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _wide_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "20000")  # rich wraps stderr at 80 columns when it is not a terminal


def flat(result: subprocess.CompletedProcess[str]) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_a_reused_client_job_id_returns_the_job_or_refuses(local_stack: Stack, tmp_path: Path) -> None:
    """Seen: reusing a --client-job-id was an error, where a retrying script wants its job."""
    first = run(local_stack, "submit", "a fox", "--duration", "5", "--client-job-id", "order-7", "--json")
    assert first.returncode == 0, first.stderr
    [job] = json.loads(first.stdout)  # submit --json: always a list
    before = _queue_state(local_stack)

    again = run(local_stack, "submit", "a fox", "--client-job-id", "order-7", "--json")  # defaults: same request
    assert again.returncode == 0, again.stderr
    assert [r["id"] for r in json.loads(again.stdout)] == [job["id"]]
    assert f"note: order-7 was already submitted as job {job['id']} (queued)" in flat(again)
    plain = run(local_stack, "submit", "a fox", "--client-job-id", "order-7")
    assert (plain.returncode, plain.stdout) == (0, job["id"] + "\n")

    differs = run(local_stack, "submit", "a fox", "--duration", "10", "--client-job-id", "order-7")
    assert differs.returncode == 2
    assert f"already used by job {job['id']} for a different request: duration (5 stored, 10 now)" in flat(differs)
    assert _queue_state(local_stack) == before

    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"prompt": "a fox", "client_job_id": "order-7"}\n{"prompt": "new", "client_job_id": "order-8"}\n')
    batch = run(local_stack, "submit", "--file", str(lines))
    assert batch.returncode == 0, batch.stderr
    ids = batch.stdout.split()
    assert ids[0] == job["id"] and ids[1] != job["id"]
    after_batch = _queue_state(local_stack)
    lines.write_text('{"prompt": "newer"}\n{"prompt": "changed", "client_job_id": "order-8"}\n')
    refused = run(local_stack, "submit", "--file", str(lines))
    assert refused.returncode == 2 and "prompt" in flat(refused) and "nothing was enqueued" in flat(refused)
    assert _queue_state(local_stack) == after_batch

    vq = local_stack.queue()
    assert vq.submit(VideoRequest(prompt="a fox", client_job_id="order-7")).id == job["id"]
    with pytest.raises(DuplicateClientJobIdError) as info:
        vq.submit(VideoRequest(prompt="a wolf", client_job_id="order-7"))
    assert isinstance(info.value, InvalidRequestError)
    assert list(info.value.conflicts[0].differences) == ["prompt"]
    assert _queue_state(local_stack) == after_batch


def test_producers_retrying_at_once_with_one_client_id_get_one_job(local_stack: Stack) -> None:
    producers = 8
    start = threading.Barrier(producers)
    results: list[Any] = [None] * producers

    def submit(index: int) -> None:
        vq = local_stack.queue()
        start.wait()
        try:
            results[index] = vq.submit(VideoRequest(prompt="once only", client_job_id="race-7")).id
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(producers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(r, str) for r in results), results
    assert len(set(results)) == 1
    assert local_stack.keys(keys.job_key("*")) == [keys.job_key(results[0])]
    assert local_stack.redis.llen(namespace.queue("submit")) == 1


def test_retry_a_failed_job_then_fetch_its_video(local_stack: Stack, tmp_path: Path) -> None:
    local_stack.start_worker()
    image = tmp_path / "first.png"
    image.write_bytes(PNG)
    local_stack.simulator.configure(fail_rate=1.0)
    submitted = run(local_stack, "submit", "a fox", "--image-file", str(image), "--client-job-id", "shot-1")
    old_id = submitted.stdout.strip()
    vq = local_stack.queue()
    [old] = vq.wait([old_id], timeout=60)
    assert old.status.value == "failed", old
    local_stack.simulator.configure(fail_rate=0.0)

    refused = run(local_stack, "fetch", old_id, "-o", str(tmp_path / "x.mp4"))
    assert refused.returncode == 2 and "ended failed with no stored video" in flat(refused)

    retried = run(local_stack, "retry", old_id, "--json")
    assert retried.returncode == 0, retried.stderr
    [new] = json.loads(retried.stdout)
    assert new["retry_of"] == old_id
    # The same request, its image a copy under the new job's own key.
    assert ResolvedRequest.model_validate(new["request"]).json_fields() == old.request.json_fields()
    assert new["request"]["images"]["first_frame"]["uri"].endswith(f"/inputs/{new['id']}/first_frame.png")
    assert vq.get(old_id).retried_by == [new["id"]]
    [done] = vq.wait([new["id"]], timeout=60)
    assert done.status.value == "succeeded", done

    twice = run(local_stack, "retry", old_id)
    assert twice.returncode == 2 and f"already retried by {new['id']}" in flat(twice)
    succeeded = run(local_stack, "retry", done.id)
    assert succeeded.returncode == 2 and "it succeeded" in flat(succeeded)
    assert vq.get(old_id).retried_by == [new["id"]]
    # The client id now names the attempt that succeeded.
    assert vq.submit(VideoRequest(prompt="a fox", image_file=str(image), client_job_id="shot-1")).id == done.id

    _fetch_local(local_stack, done, tmp_path)


def _fetch_local(stack: Stack, done: JobRecord, tmp_path: Path) -> None:
    assert done.output_uri is not None
    stored = local_path(done.output_uri).read_bytes()
    target = tmp_path / "out"
    target.mkdir()
    fetched = run(stack, "fetch", done.id, "-o", str(target))
    assert fetched.returncode == 0, fetched.stderr
    path = target / f"{done.id}.mp4"
    assert fetched.stdout == f"{path}\n"
    assert path.read_bytes() == stored
    assert_mp4(stored)
    path.write_bytes(b"mine")
    kept = run(stack, "fetch", done.id, "-o", str(path))
    assert kept.returncode == 2 and "already exists (give --force" in flat(kept)
    assert path.read_bytes() == b"mine"
    assert run(stack, "fetch", done.id, "-o", str(path), "--force").returncode == 0
    assert path.read_bytes() == stored
    assert sorted(p.name for p in target.iterdir()) == [path.name]  # no temporary file left

    link = run(stack, "url", done.id)
    assert link.returncode == 2 and f"not in S3 but at {done.output_uri}" in flat(link)


def test_fetch_and_url_from_s3(s3_stack: tuple[Stack, S3Server, str], tmp_path: Path) -> None:
    stack, s3, bucket = s3_stack
    stack.start_worker()
    job_id = run(stack, "submit", "a fox in S3").stdout.strip()
    [done] = stack.queue().wait([job_id], timeout=60)
    assert done.status.value == "succeeded" and done.output_uri == f"s3://{bucket}/renders/{job_id}.mp4"
    stored = s3.client().get_object(Bucket=bucket, Key=f"renders/{job_id}.mp4")["Body"].read()
    assert_mp4(stored)

    fetched = run(stack, "fetch", job_id, "-o", str(tmp_path / "clip.mp4"))
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "clip.mp4").read_bytes() == stored

    link = run(stack, "url", job_id, "--expires", "600")
    assert link.returncode == 0, link.stderr
    url = link.stdout.strip()
    assert (
        url.startswith(f"{s3.endpoint}/{bucket}/renders/{job_id}.mp4?")
        and "X-Amz-Expires=600" in url
        and "X-Amz-Signature=" in url
    )
    assert "testing-secret" not in url
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.content == stored

    down = stack.env(S3_ENDPOINT_URL="http://127.0.0.1:9")
    unreachable = _run_env(down, "fetch", job_id, "-o", str(tmp_path / "down.mp4"))
    assert unreachable.returncode == 2 and "S3 unreachable (http://127.0.0.1:9)" in flat(unreachable)
    assert "Traceback" not in flat(unreachable) and not (tmp_path / "down.mp4").exists()
    no_keys = stack.env(
        AWS_ACCESS_KEY_ID="",
        AWS_SECRET_ACCESS_KEY="",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    for args in (["fetch", job_id, "-o", str(tmp_path / "nokeys.mp4")], ["url", job_id]):
        missing = _run_env(no_keys, *args)
        assert missing.returncode == 2, (args, missing.stderr)
        assert "no S3 credentials" in flat(missing), (args, missing.stderr)


def _run_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_retry_names_the_job_of_each_refusal(local_stack: Stack) -> None:
    # Seen: `retry A B C` refused by a budget printed three identical lines naming no job.
    local_stack.start_worker()
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"fails {i} [sim:fail]", tags=("camp",)) for i in range(3)])
    assert {j.status.value for j in vq.wait([j.id for j in jobs], timeout=60)} == {"failed"}
    assert run(local_stack, "budget", "set", "--tag", "camp=0.10").returncode == 0

    refused = run(local_stack, "retry", *(j.id for j in jobs))
    assert refused.returncode == 2 and refused.stdout == ""
    lines = refused.stderr.splitlines()
    assert len(lines) == 3, refused.stderr
    for job, line in zip(jobs, lines, strict=True):
        assert line.startswith(f"refused {job.id}: budget tag:camp would be exceeded"), line
