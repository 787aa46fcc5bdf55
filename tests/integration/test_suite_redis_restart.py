"""Reliability suite: Redis restarts in the middle of a run.

A redis-server of the suite's own (free port, temporary directory, AOF on with
`appendfsync always`, so whatever Redis acknowledged survives the restart) is the broker
and the job store of one worker (concurrency 4) and of the producer.

1. 100 Seedance jobs (3-5 s renders, 1 MiB videos into a local folder) are enqueued;
   once 15 have finished and the others are queued, rendering or downloading, Redis is
   stopped (SIGTERM), kept down for 5 s and started again on the same port and directory.
   Then every job is final and succeeded, the simulator saw exactly one create per job,
   the ledger holds exactly one entry per job, and the folder one `<id>.mp4` and one
   `<id>.json` per job. (Should the worker not survive the restart, a new worker takes
   over and the line says so: test 2 is about that.)
2. The worker must come back by itself after every restart: Redis is restarted up to 12
   times (1 s down each, with jobs in flight), and the worker must reconnect each time.

The worker sweeps for stranded jobs every 3 s and recovers a job 10 s past its due time
(SWEEP_INTERVAL_S=3, RECOVER_AFTER_S=10; STORE_BUSY_S=15, SUBMIT_LEASE_S=15), since
countdown messages a Redis-broker worker held when the connection broke are only given
back by the broker after its visibility timeout.

Run: VQ_TEST_REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/pytest -q -s tests/integration/test_suite_redis_restart.py
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from producer import JobRecord, JobStatus, Settings, VideoQueue, VideoRequest
from simulator.mp4 import video_size
from simulator.stack import ManagedProcess, free_port, wait_until
from tests.integration.conftest import FAST_RECOVERY, UNACKED, Simulator, Stack, fresh_stack, running_simulator
from tests.integration.helpers import assert_each_job_once, visible_files, wait_final
from videoqueue.jobstore import JobStore
from videoqueue.ledger import Ledger

pytestmark = pytest.mark.integration

JOBS = 100
PAD_BYTES = 1024 * 1024
DOWN_S = 5.0
RESTART_WHEN_SUCCEEDED = 15
FINISH_TIMEOUT_S = 240.0


class RedisServer:
    """A redis-server with AOF (`appendfsync always`) in a directory of its own."""

    def __init__(self, port: int, data_dir: Path, log_dir: Path) -> None:
        self.port = port
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.process: ManagedProcess | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.starts += 1
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ]
        self.process = ManagedProcess(
            f"redis-{self.starts}", argv, os.environ, self.log_dir / f"redis-{self.starts}.log"
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return self.process is not None and not self.process.alive()

        wait_until(answers, 30, "redis-server")
        assert self.process.alive(), self.process.log_text()[-2000:]

    def stop(self) -> None:
        """SIGTERM: Redis flushes the AOF and exits."""
        if self.process is not None:
            self.process.stop(timeout=20)


@pytest.fixture
def own_redis(tmp_path: Path, log_dir: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    server = RedisServer(free_port(), data_dir, log_dir / "redis-restart")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def restart_simulator(log_dir: Path) -> Iterator[Simulator]:
    args = ["--latency", "3", "--latency-jitter", "2", "--concurrency-per-model", "10000"]
    with running_simulator(log_dir / "redis-restart", *args, "--video-pad-bytes", str(PAD_BYTES)) as sim:
        yield sim


def restart_stack(simulator: Simulator, redis_server: RedisServer, logs: Path, folder: Path) -> Stack:
    """The stack of a restart run: Redis is the suite's own server, broker and job store."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    env = {**FAST_RECOVERY, "REDIS_URL": redis_server.url, "BROKER_URL": ""}
    return fresh_stack(simulator, client, logs, f"file://{folder}", **env)


@dataclass
class Snapshot:
    """How many jobs were in each status."""

    counts: dict[str, int]

    def __str__(self) -> str:
        return " ".join(f"{status}={n}" for status, n in sorted(self.counts.items()) if n)


def _snapshot(records: list[JobRecord]) -> Snapshot:
    return Snapshot(dict(Counter(r.status.value for r in records)))


def test_redis_restart_mid_run_loses_nothing(
    own_redis: RedisServer, restart_simulator: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    videos = tmp_path / "videos"
    stack = restart_stack(restart_simulator, own_redis, log_dir / "redis-restart", videos)
    client = stack.redis
    worker = stack.start_worker(concurrency=4)
    try:
        vq = VideoQueue(Settings(redis_url=own_redis.url, broker_url=None, _env_file=None))
        store = JobStore.from_url(own_redis.url)
        token = uuid.uuid4().hex[:6]
        prompts = [f"redis restart {token} clip {i}: a heron at dawn" for i in range(JOBS)]
        jobs = vq.submit_many([VideoRequest(prompt=p) for p in prompts])
        job_ids = [j.id for j in jobs]

        def enough_done() -> bool:
            done = [r for r in store.get_many(job_ids) if r is not None and r.status is JobStatus.SUCCEEDED]
            return len(done) >= RESTART_WHEN_SUCCEEDED

        wait_until(enough_done, 120, f"{RESTART_WHEN_SUCCEEDED} jobs succeeded", interval=0.2)
        at_restart = _snapshot([r for r in store.get_many(job_ids) if r is not None])
        unacked_before: int = client.hlen(UNACKED)  # type: ignore[assignment]
        stopped = time.monotonic()
        own_redis.stop()
        time.sleep(DOWN_S)
        own_redis.start()
        restarted = time.monotonic()
        survived = store.get_many(job_ids)
        assert all(r is not None for r in survived), "job records lost across the restart"

        # Whether the worker comes back by itself is what the next test checks (it often does
        # not: a Celery/kombu bug). Here, if it died, a new one takes over, so that what Redis
        # kept (records, ledger, queues) is judged either way.
        first_worker, replaced = worker, False

        def replace_a_dead_worker() -> None:
            nonlocal worker, replaced
            if not worker.alive() and not replaced:
                worker, replaced = stack.start_worker(concurrency=4), True

        final = wait_final(store, job_ids, FINISH_TIMEOUT_S, between=replace_a_dead_worker)
        records = [r for r in final if r is not None]
        finished = time.monotonic()
        log = first_worker.log_text()
    finally:
        stack.stop()

    stats = restart_simulator.stats()
    ledger = Counter(e.job_id for e in Ledger(client).entries())
    by_id = {r.id: r for r in records}
    creates = [stats["creates_by_prompt"].get(p, 0) for p in prompts]
    per_job = Counter(n.split(".")[0] for n in visible_files(videos))
    reconnects = log.count("Connected to redis://")
    recovered = sum(r.recoveries > 0 for r in records)
    succeeded = sum(r.status is JobStatus.SUCCEEDED for r in records)
    files_per_job = sorted({per_job[j] for j in job_ids})
    print(
        f"\nredis-restart: {JOBS} jobs, {succeeded} succeeded, creates/job max {max(creates)}, "
        f"ledger entries/job max {max(ledger[j] for j in job_ids)}, files/job {files_per_job}; "
        f"restarted at {stopped - started:.0f} s with [{at_restart}], {unacked_before} messages unacked; "
        f"down {restarted - stopped:.1f} s; the worker "
        + ("exited (Unrecoverable error) and was replaced" if replaced else f"reconnected ({reconnects - 1}x)")
        + f"; {recovered} jobs recovered by the sweep; restart->all final {finished - restarted:.1f} s; "
        f"run {finished - started:.0f} s"
    )

    assert_each_job_once(
        by_id, prompts, stats["creates_by_prompt"], stats["creates_total"], ledger, videos, video_size(PAD_BYTES)
    )
    assert replaced or reconnects >= 2, "the worker neither reconnected nor exited"


# --------------------------------------------------------------------------- restart after restart

RESTART_ROUNDS = 12
JOBS_PER_ROUND = 10


@pytest.mark.xfail(
    strict=False,  # it hits about one restart in three: the run may or may not meet it
    reason="upstream bug (Celery 5.7 / kombu 5.7 Redis transport as configured by videoqueue.celeryconfig): when the "
    "consumer's pub/sub (remote control) connection reports the lost Redis before its BRPOP connection, "
    "Consumer.on_connection_error_after_connected -> connection.collect() leaves the channel half closed "
    "(_brpop_read raises) and clears the transport's client; connection.close() then closes the channel again, "
    "whose restore of the unacked messages needs a new pool and dies in kombu Channel._connparams with "
    "AttributeError(\"'NoneType' object has no attribute 'hostname'\"), which Celery treats as unrecoverable: "
    "the worker process exits and never reconnects. It hits about one Redis restart in three, so the test "
    f"restarts Redis up to {RESTART_ROUNDS} times",
)
def test_the_worker_reconnects_after_every_redis_restart(
    own_redis: RedisServer, restart_simulator: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    stack = restart_stack(restart_simulator, own_redis, log_dir / "redis-restarts", tmp_path / "videos")
    worker = stack.start_worker(concurrency=4)
    vq = VideoQueue(Settings(redis_url=own_redis.url, broker_url=None, _env_file=None))
    rounds = 0
    hung = False
    try:
        while rounds < RESTART_ROUNDS and worker.alive():
            rounds += 1
            vq.submit_many([VideoRequest(prompt=f"restart round {rounds} clip {i}") for i in range(JOBS_PER_ROUND)])
            time.sleep(3.0)  # submits, polls and stores under way
            connected = worker.log_text().count("Connected to redis://")
            own_redis.stop()
            time.sleep(1.0)
            own_redis.start()

            def reconnected_or_dead(before: int = connected) -> bool:
                return not worker.alive() or worker.log_text().count("Connected to redis://") > before

            try:
                wait_until(reconnected_or_dead, 30, "the worker reconnecting (or exiting)", interval=0.2)
            except TimeoutError:
                hung = True
                break
        alive = worker.alive()
        log = worker.log_text()
    finally:
        stack.stop()
    fatal = [line for line in log.splitlines() if "Unrecoverable error" in line]
    print(
        f"\nredis-restarts: {rounds} Redis restart(s); the worker "
        + ("came back after each" if alive and not hung else "did not come back after the last")
        + (f" (it exited: {fatal[0][24:]})" if fatal else "")
        + (" (it hung without reconnecting)" if hung else "")
    )
    assert alive and not hung, f"the worker did not come back after restart {rounds}: {fatal or 'hung'}"
