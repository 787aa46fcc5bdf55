"""Reliability suite: S3 goes away in the middle of a run.

40 Seedance jobs (2-4 s renders) run through two workers (concurrency 2 each) into S3
(moto's server over HTTP). Every video is 9 MiB plus the sample, more than one 8 MiB part,
so every transfer is a multipart upload. Once some jobs are stored and an upload is in
progress, S3 becomes unreachable, in one of two ways:

- `moto-restart`: the moto process is killed and, 12 s later, a new one started on the
  same port, where the bucket is made again. moto keeps everything in memory, so objects stored
  before the outage are gone: only jobs that finished after the restart are checked for
  their objects.
- `network-cut`: a TCP relay between the workers and moto drops every open connection
  and refuses new ones for 25 s (longer than boto3's own retries of a part and then of
  the abort), then lets them through again. S3 keeps its state, so every job's
  objects are checked, and an upload cut off half way would still be there.

Workers retry a failed transfer up to STORE_MAX_ATTEMPTS=20 times, 1 s to 4 s apart
(RETRY_BASE_S=1, RETRY_MAX_S=4: attempt n waits between half and all of min(4, 2^(n-1))
s), which outlasts either outage even if every wait is the shortest (35.5 s; with 12
attempts that was 19.5 s, and a job whose attempts were quick to fail ran out of them in a
25 s cut). Then:

- every job is final and succeeded, and some transfers were retried through the outage;
- every stored video has exactly the served size (HEAD), and its manifest names its job;
- nothing else is in the bucket, and no multipart upload is left open
  (`list_multipart_uploads` is empty).

Run: VQ_TEST_REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/pytest -q -s tests/integration/test_suite_storage_faults.py
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from botocore.config import Config

from producer import JobRecord, JobStatus, VideoRequest
from simulator.mp4 import video_size
from simulator.stack import ManagedProcess, free_port, start_moto, wait_until
from tests.integration.conftest import REDIS_URL, Simulator, fresh_stack, running_simulator
from tests.integration.helpers import wait_final
from videoqueue.job import utcnow
from videoqueue.jobstore import JobStore

pytestmark = pytest.mark.integration

JOBS = 40
PAD_BYTES = 9 * 1024 * 1024
OUTAGE_S = 12.0  # moto down (plus its start-up)
# The cut outlasts boto3's own retries of a part upload and then of the abort (up to about
# 6 s each), so the abort boto3 attempts surely fails: what happens to the open upload is
# then up to the product.
CUT_S = 25.0
OUTAGE_WHEN_SUCCEEDED = 6
PREFIX = "renders"
FINISH_TIMEOUT_S = 240.0
# Transfers retried 20 times 1-4 s apart (defaults 8 times, 2-300 s apart): enough to
# outlast either outage, without minutes of back-off after it.
WORKER_ENV = {"STORE_MAX_ATTEMPTS": "20", "RETRY_BASE_S": "1", "RETRY_MAX_S": "4"}
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_REGION": "us-east-1"}


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30),
    )


class Relay:
    """A TCP relay in front of moto that can cut the line: `cut()` drops every open
    connection and refuses new ones until `restore()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.up = True
        self.closed = False
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.sockets |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(256 * 1024):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def cut(self) -> None:
        self.up = False
        with self.lock:
            open_now = list(self.sockets)
        for sock in open_now:
            self._drop(sock)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


@dataclass
class StorageRun:
    """What one run left behind."""

    outage: str
    records: dict[str, JobRecord]
    bucket: str
    objects: dict[str, int]  # key -> size
    uploads: list[dict[str, Any]]  # multipart uploads still open
    manifests: dict[str, str]  # key -> job id it names
    back_at: datetime  # when S3 answered again
    conditions: dict[str, bool]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def checked(self) -> list[str]:
        """Jobs whose objects must be in the bucket: all of them, unless the outage wiped
        S3's memory, then those that finished after it was back."""
        if self.outage == "network-cut":
            return list(self.records)
        return [j for j, r in self.records.items() if r.finished_at is not None and r.finished_at > self.back_at]

    @property
    def summary(self) -> str:
        succeeded = sum(r.status is JobStatus.SUCCEEDED for r in self.records.values())
        retried = [r.store_attempts for r in self.records.values() if r.store_attempts > 1]
        sizes = sorted({self.objects.get(f"{PREFIX}/{j}.mp4", -1) for j in self.checked})
        return (
            f"storage[{self.outage}]: {len(self.records)} jobs, {succeeded} succeeded; S3 down "
            f"{self.seconds['down']:.1f} s from {self.seconds['outage']:.0f} s into the run, with an upload open: "
            f"{self.conditions['multipart upload open']}; {len(retried)} transfers retried through it "
            f"(store attempts max {max(retried, default=1)}); jobs checked in the bucket {len(self.checked)} "
            f"(video sizes {sizes}, expected {video_size(PAD_BYTES)}); objects {len(self.objects)}; "
            f"open multipart uploads {len(self.uploads)}; run {self.seconds['total']:.0f} s"
        )


@pytest.fixture(scope="module")
def storage_simulator(log_dir: Path) -> Iterator[Simulator]:
    args = ["--latency", "2", "--latency-jitter", "2", "--concurrency-per-model", "10000"]
    with running_simulator(log_dir / "storage", *args, "--video-pad-bytes", str(PAD_BYTES)) as sim:
        yield sim


@pytest.fixture(scope="module", params=["moto-restart", "network-cut"])
def storage_run(
    request: pytest.FixtureRequest, storage_simulator: Simulator, redis_client: redis.Redis, log_dir: Path
) -> Iterator[StorageRun]:
    outage: str = request.param
    logs = log_dir / f"storage-{outage}"
    moto_port = free_port()
    motos: list[ManagedProcess] = [start_moto(moto_port, logs)]
    relay = Relay(moto_port) if outage == "network-cut" else None
    endpoint = f"http://127.0.0.1:{relay.port if relay else moto_port}"
    direct = s3_client(f"http://127.0.0.1:{moto_port}")
    bucket = f"vq-{uuid.uuid4().hex[:12]}"
    direct.create_bucket(Bucket=bucket)

    env = {**WORKER_ENV, **AWS, "S3_ENDPOINT_URL": endpoint, "BROKER_URL": ""}
    stack = fresh_stack(storage_simulator, redis_client, logs, f"s3://{bucket}/{PREFIX}", **env)
    try:
        started = time.monotonic()
        stack.start_worker(concurrency=2)
        stack.start_worker(concurrency=2)
        vq = stack.queue(broker_url=None)
        token = uuid.uuid4().hex[:6]
        job_ids = [
            j.id for j in vq.submit_many([VideoRequest(prompt=f"storage {token} clip {i}") for i in range(JOBS)])
        ]
        store = JobStore.from_url(REDIS_URL)

        conditions = {"jobs stored": False, "multipart upload open": False}

        def ready() -> bool:
            done = sum(r is not None and r.status is JobStatus.SUCCEEDED for r in store.get_many(job_ids))
            conditions["jobs stored"] = done >= OUTAGE_WHEN_SUCCEEDED
            if conditions["jobs stored"]:
                conditions["multipart upload open"] = bool(direct.list_multipart_uploads(Bucket=bucket).get("Uploads"))
            return all(conditions.values())

        with contextlib.suppress(TimeoutError):  # the test of the conditions reports it
            wait_until(ready, 120, "an upload in progress", interval=0.05)
        outage_at = time.monotonic()
        if relay is not None:
            relay.cut()
            time.sleep(CUT_S)
            relay.restore()
        else:
            motos[0].kill()
            time.sleep(OUTAGE_S)
            motos.append(start_moto(moto_port, logs))
            direct.create_bucket(Bucket=bucket)
        back_at = utcnow()
        back = time.monotonic()

        records = wait_final(store, job_ids, FINISH_TIMEOUT_S)
        finished = time.monotonic()
        time.sleep(1.0)  # let an abort of a failed upload land, if one is still under way

        objects: dict[str, int] = {}
        for page in direct.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                objects[item["Key"]] = int(direct.head_object(Bucket=bucket, Key=item["Key"])["ContentLength"])
        manifests = {
            key: str(json.loads(direct.get_object(Bucket=bucket, Key=key)["Body"].read())["job_id"])
            for key in objects
            if key.endswith(".json")
        }
        run = StorageRun(
            outage=outage,
            records={r.id: r for r in records if r is not None},
            bucket=bucket,
            objects=objects,
            uploads=list(direct.list_multipart_uploads(Bucket=bucket).get("Uploads", [])),
            manifests=manifests,
            back_at=back_at,
            conditions=conditions,
            seconds={"total": finished - started, "outage": outage_at - started, "down": back - outage_at},
        )
        print(f"\n{run.summary}")
        yield run
    finally:
        stack.stop()
        if relay is not None:
            relay.close()
        for moto in motos:
            moto.stop()


# --------------------------------------------------------------------------- the checks


def test_every_job_succeeds_with_transfers_retried_through_the_outage(storage_run: StorageRun) -> None:
    run = storage_run
    assert all(run.conditions.values()), f"the outage came at the wrong moment: {run.conditions}"
    unfinished = {j: (r.status, r.store_attempts) for j, r in run.records.items() if not r.status.is_final}
    assert not unfinished, f"jobs never finished: {unfinished}"
    failed = {j: (r.status, r.error) for j, r in run.records.items() if r.status is not JobStatus.SUCCEEDED}
    assert not failed, failed
    assert any(r.store_attempts > 1 for r in run.records.values()), "no transfer met the outage"
    assert len(run.checked) >= JOBS // 2


def test_each_stored_job_has_its_whole_video_and_its_manifest_and_nothing_else(storage_run: StorageRun) -> None:
    run = storage_run
    for job_id in run.checked:
        assert run.objects.get(f"{PREFIX}/{job_id}.mp4") == video_size(PAD_BYTES), job_id
        assert run.manifests.get(f"{PREFIX}/{job_id}.json") == job_id
    ours = {f"{PREFIX}/{j}.{ext}" for j in run.records for ext in ("mp4", "json")}
    assert set(run.objects) <= ours, "objects under keys of no job"
    partial = {k: n for k, n in run.objects.items() if k.endswith(".mp4") and n != video_size(PAD_BYTES)}
    assert partial == {}, "partial videos"


def test_no_multipart_upload_is_left_open(storage_run: StorageRun) -> None:
    # A cut-off upload is aborted by the next attempt at the same key (S3Storage.put_video).
    assert storage_run.uploads == [], [(u["Key"], u["Initiated"]) for u in storage_run.uploads]
