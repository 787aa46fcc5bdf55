"""Scenario 4, transfer: one large video (1 GiB; 32 MiB in quick mode) through the real
store step of a celery worker (prefork, one pool child) into S3 (moto's server) and into
a local folder, against boto3's own `upload_fileobj` (and a plain file write) of the same
URL in a fresh process.

Memory: the pool child's VmHWM (the kernel's high-water mark of its RSS) is reset after a
warm-up job through the same storage, so what counts is the growth over the RSS the child
had before the large job. Time: Celery's runtime of the store task, from the worker log
("Task videoqueue.store[...] succeeded in Xs"): download, upload, read-back of the size
and the manifest. The reference times only its download and upload.

moto's server keeps every part in memory and joins them on completion: its memory and
CPU are not the worker's, but they share this machine's two cores with it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import psutil

from bench.harness import S3_BUCKET, BenchStack, bench_s3_settings
from bench.transfer_reference import MIB, proc_status_kib, reset_peak
from producer import VideoRequest
from simulator.mp4 import video_size
from simulator.stack import ManagedProcess, wait_until
from videoqueue.job import TASK_STORE, JobRecord, JobStatus
from worker.storage.s3 import s3_client

FULL_BYTES = 1024 * MIB
QUICK_BYTES = 32 * MIB
TARGET_GROWTH_MIB = 100.0
TARGET_RATIO = 0.8
_RUNTIME = re.compile(rf"Task {re.escape(TASK_STORE)}\[[^\]]+\] succeeded in ([0-9.]+)s")


def _pool_child(worker: ManagedProcess) -> psutil.Process:
    """The one pool process of a `--concurrency=1` prefork worker."""
    children = psutil.Process(worker.proc.pid).children()
    if len(children) != 1:
        raise RuntimeError(f"expected one pool child of {worker.name}, found {len(children)}")
    return children[0]


def _store_runtime(worker: ManagedProcess, job_id: str) -> float:
    """Celery's runtime of the store task of `job_id`, from the worker's JSON log."""
    found: list[float] = []

    def logged() -> bool:
        for line in worker.log_text().splitlines():
            if job_id not in line or not line.startswith("{"):
                continue
            match = _RUNTIME.search(json.loads(line).get("message", ""))
            if match:
                found.append(float(match.group(1)))
                return True
        return False

    wait_until(logged, 10, f"store task runtime of {job_id} in the log")
    return found[0]


def _one_job(stack: BenchStack, env: dict[str, str], prompt: str, timeout: float) -> JobRecord:
    vq = stack.producer(env)
    job = vq.submit(VideoRequest(prompt=prompt, provider="byteplus"))
    [done] = vq.wait([job.id], timeout=timeout, poll_interval=0.2)
    if done.status is not JobStatus.SUCCEEDED:
        raise RuntimeError(f"job {job.id} ended {done.status.value}: {done.error}")
    return done


def _worker_case(stack: BenchStack, storage_url: str, pad: int, timeout: float) -> dict[str, Any]:
    """The large job through a fresh worker storing into `storage_url`."""
    env = stack.env(storage_url=storage_url, poll_initial_s=0.2, poll_min_s=0.2, log_format="json")
    [worker] = stack.start_workers(1, concurrency=1, env=env)
    try:
        child = _pool_child(worker)
        # Warm-up: the child imports and builds its provider and storage clients.
        stack.sim_config(video_pad_bytes=0)
        _one_job(stack, env, "transfer warm-up", 60)
        stack.sim_config(video_pad_bytes=pad)
        reset_peak(child.pid)
        before_kib = proc_status_kib("VmRSS", child.pid)
        done = _one_job(stack, env, "transfer", timeout)
        hwm_kib = proc_status_kib("VmHWM", child.pid)
        if _pool_child(worker).pid != child.pid:
            raise RuntimeError("the pool child was replaced during the job")
        seconds = _store_runtime(worker, done.id)
    finally:
        stack.stop_workers()
    assert done.provider_done_at is not None and done.finished_at is not None
    return {
        "bytes": video_size(pad),
        "seconds": seconds,
        "record_seconds": (done.finished_at - done.provider_done_at).total_seconds(),
        "rss_before_mib": before_kib / 1024,
        "hwm_mib": hwm_kib / 1024,
        "peak_rss_growth_mib": (hwm_kib - before_kib) / 1024,
        "video_url": f"{stack.sim_url}/files/{done.provider_task_id}.mp4",
    }


def _reference_case(env: dict[str, str], kind: str, url: str, target: str, timeout: float) -> dict[str, Any]:
    """One reference transfer in a fresh process (bench/transfer_reference.py)."""
    argv = [sys.executable, "-m", "bench.transfer_reference", kind, url, target]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"reference {kind} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _row(case: str, measured: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    mib_per_s = measured["bytes"] / MIB / measured["seconds"]
    row: dict[str, Any] = {
        "case": case,
        "bytes": measured["bytes"],
        "seconds": round(measured["seconds"], 2),
        "mib_per_s": round(mib_per_s, 1),
        "peak_rss_growth_mib": round(measured["peak_rss_growth_mib"], 1),
    }
    if reference is not None:
        row["ratio_to_reference"] = round(mib_per_s / (reference["bytes"] / MIB / reference["seconds"]), 2)
    return row


def _detail(case: str, measured: dict[str, Any]) -> str:
    text = f"{case}: RSS {measured['rss_before_mib']:.1f} MiB before, peak {measured['hwm_mib']:.1f} MiB"
    if "record_seconds" in measured:
        text += f"; job record provider_done_at -> finished_at {measured['record_seconds']:.2f} s"
    return text


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """Store one large video into each backend, then run the references on its URL."""
    size = QUICK_BYTES if quick else FULL_BYTES
    pad = size - video_size(0)
    timeout = 120.0 if quick else 1800.0
    stack.sim_config(latency=0, latency_jitter=0)
    notes = [
        f"one {size / MIB:g} MiB video (ModelArk/Seedance path: Veo answers inline base64, "
        "whole in memory, not meant for this size)",
        "seconds: Celery's runtime of the store task (download, upload, size read-back, "
        "manifest), from the worker log; the job record's provider_done_at -> finished_at "
        "(with the store message's queueing, without the manifest) is in the notes below",
        "peak_rss_growth_mib: VmHWM minus VmRSS of the process, after a warm-up transfer; "
        "for videoqueue the celery pool child that ran the job",
        f"targets: peak RSS growth < {TARGET_GROWTH_MIB:g} MB for 1 GiB, throughput >= "
        f"{TARGET_RATIO:.0%} of the reference",
        "S3 reference source: the stdlib's HTTP response, handed to upload_fileobj as the "
        "file object (httpx offers no file object); local: httpx as the worker uses it, and "
        "the stdlib (ratio_to_stdlib_reference) to show what the HTTP client costs",
    ]
    rows: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    cases: list[tuple[str, dict[str, Any]]] = []
    if stack.s3_endpoint:
        ours = _worker_case(stack, f"s3://{S3_BUCKET}/transfer", pad, timeout)
        target = f"s3://{S3_BUCKET}/reference.mp4"
        boto = _reference_case(stack.env(), "s3", ours["video_url"], target, timeout)
        rows.append(_row("videoqueue store -> S3", ours, boto))
        references.append(_row("reference: boto3 upload_fileobj -> S3", boto, None))
        cases += [("videoqueue store -> S3", ours), ("reference -> S3", boto)]
        _empty_bucket(stack)
    else:
        notes.append("the stack has no S3 server (moto=False): S3 cases skipped")

    local_dir = stack.root / "transfer"
    local_dir.mkdir(parents=True, exist_ok=True)
    ours = _worker_case(stack, f"file://{local_dir}", pad, timeout)
    target = str(local_dir / "reference.mp4")
    plain = _reference_case(stack.env(), "file", ours["video_url"], target, timeout)
    stdlib = _reference_case(stack.env(), "file-stdlib", ours["video_url"], target, timeout)
    row = _row("videoqueue store -> local folder", ours, plain)
    row["ratio_to_stdlib_reference"] = _row("", ours, stdlib)["ratio_to_reference"]
    rows.append(row)
    references.append(_row("reference: httpx stream -> file", plain, None))
    references.append(_row("reference: stdlib urlopen -> file", stdlib, None))
    cases += [("videoqueue store -> local folder", ours), ("httpx -> file", plain), ("stdlib -> file", stdlib)]
    for path in local_dir.iterdir():
        path.unlink()
    notes += [_detail(case, measured) for case, measured in cases]
    return {"rows": [*rows, *references], "notes": notes}


def _empty_bucket(stack: BenchStack) -> None:
    """Drop the stored videos, a GiB each in moto's memory."""
    assert stack.s3_endpoint is not None
    client = s3_client(bench_s3_settings(stack.s3_endpoint))
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=S3_BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=S3_BUCKET, Key=item["Key"])
