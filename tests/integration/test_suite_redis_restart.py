"""Reliability suite: Redis restarts in the middle of a run.

A redis-server of the suite's own (free port, temporary directory, AOF on with
`appendfsync always`, so whatever Redis acknowledged survives the restart) is the broker
and the job store of the workers and of the producer.

1. 100 Seedance jobs (3-5 s renders, 1 MiB videos into a local folder) are enqueued to one
   worker (concurrency 4); once 15 have finished and the others are queued, rendering or
   downloading, Redis is stopped (SIGTERM), kept down for 5 s and started again on the same
   port and directory. Then the worker is up and reconnected, every job is final and
   succeeded, the simulator saw exactly one create per job, the ledger holds exactly one
   entry per job, and the folder one `<id>.mp4` and one `<id>.json` per job.
2. Five Redis restarts under load: two workers (a thread pool and a prefork pool) while a
   producer submits jobs all along (through the outages too, retrying each submit with its
   client job id); Redis is restarted every few seconds (1 s down), and after each restart
   every worker must be alive, without "Unrecoverable error" in its log, and reconnected.
   Then every job is judged as in 1. Until worker/broker_transport.py, a worker died on
   about one restart in three (kombu; that module says how).

The workers sweep for stranded jobs every 3 s and recover a job 10 s past its due time
(SWEEP_INTERVAL_S=3, RECOVER_AFTER_S=10; STORE_BUSY_S=15, SUBMIT_LEASE_S=15), since
countdown messages a Redis-broker worker held when the connection broke are only given
back by the broker after its visibility timeout.

Run: VQ_TEST_REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/pytest -q -s tests/integration/test_suite_redis_restart.py
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from producer import EnqueueError, JobRecord, JobStatus, Settings, VideoQueue, VideoRequest
from simulator.mp4 import video_size
from simulator.stack import ManagedProcess, free_port, wait_until
from tests.integration.conftest import FAST_RECOVERY, UNACKED, Simulator, Stack, fresh_stack, running_simulator
from tests.integration.helpers import assert_each_job_once, visible_files, wait_final
from videoqueue.jobstore import JobStore
from videoqueue.ledger import Ledger
from worker.broker_transport import LOST_BRPOP_MESSAGE

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


def fatal_lines(log: str) -> list[str]:
    """The lines where Celery gave up on the worker (it exits after them)."""
    return [line for line in log.splitlines() if "Unrecoverable error" in line]


def reconnections(log: str) -> int:
    """How many times the worker connected to the broker (the first connection included)."""
    return log.count("Connected to redis://")


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

        final = wait_final(store, job_ids, FINISH_TIMEOUT_S)
        records = [r for r in final if r is not None]
        finished = time.monotonic()
        alive = worker.alive()
        log = worker.log_text()
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
        + (f"reconnected ({reconnects - 1}x)" if alive else "exited")
        + f"; {recovered} jobs recovered by the sweep; restart->all final {finished - restarted:.1f} s; "
        f"run {finished - started:.0f} s"
    )

    assert_each_job_once(
        by_id, prompts, stats["creates_by_prompt"], stats["creates_total"], ledger, videos, video_size(PAD_BYTES)
    )
    assert alive and not fatal_lines(log), f"the worker did not survive the restart: {fatal_lines(log)}"
    assert reconnects >= 2, "the worker never reconnected"


# --------------------------------------------------------------------------- restart after restart

RESTARTS = 5
LOAD_S = 4.0  # submits, polls and stores under way before each restart
RESTART_DOWN_S = 1.0
RECONNECT_TIMEOUT_S = 60.0
SUBMIT_EVERY_S = 0.25


class Submitter(threading.Thread):
    """A producer submitting one job every SUBMIT_EVERY_S until stopped. Each request has a
    client job id, so a submit that failed (Redis down) is repeated as it is until Redis
    takes it: the job is stored once, whatever the outage interrupted."""

    def __init__(self, vq: VideoQueue, token: str) -> None:
        super().__init__(daemon=True)
        self.vq = vq
        self.token = token
        self.prompts: list[str] = []
        self.job_ids: list[str] = []
        self.failed_submits = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                n = len(self.prompts)
                prompt = f"restarts {self.token} clip {n}: gulls over a harbour"
                request = VideoRequest(prompt=prompt, client_job_id=f"restarts-{self.token}-{n}")
                while True:
                    try:
                        job = self.vq.submit(request)
                        break
                    except (redis.RedisError, EnqueueError):
                        self.failed_submits += 1
                        time.sleep(0.2)
                self.prompts.append(prompt)
                self.job_ids.append(job.id)
                self._stop_event.wait(SUBMIT_EVERY_S)
        except BaseException as exc:  # the test reports it
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(60)


def test_every_worker_stays_up_through_five_redis_restarts(
    own_redis: RedisServer, restart_simulator: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    videos = tmp_path / "videos"
    stack = restart_stack(restart_simulator, own_redis, log_dir / "redis-restarts", videos)
    # Both kinds of worker of docker-compose.yml: a thread pool (submits, polls) and prefork
    # (transfers); here each consumes every queue, so both hold countdown polls when Redis goes.
    workers = {"threads": stack.start_worker(concurrency=8, pool="threads"), "prefork": stack.start_worker()}
    submitter = Submitter(
        VideoQueue(Settings(redis_url=own_redis.url, broker_url=None, _env_file=None)), uuid.uuid4().hex[:6]
    )
    store = JobStore.from_url(own_redis.url)
    reconnect_s: list[float] = []
    try:
        submitter.start()
        for restart in range(1, RESTARTS + 1):
            time.sleep(LOAD_S)
            before = {kind: reconnections(w.log_text()) for kind, w in workers.items()}
            own_redis.stop()
            time.sleep(RESTART_DOWN_S)
            own_redis.start()
            restarted = time.monotonic()

            def all_back(before: dict[str, int] = before) -> bool:
                return all(not w.alive() or reconnections(w.log_text()) > before[kind] for kind, w in workers.items())

            wait_until(
                all_back, RECONNECT_TIMEOUT_S, f"every worker reconnecting after restart {restart}", interval=0.2
            )
            reconnect_s.append(time.monotonic() - restarted)
            down = {kind: fatal_lines(w.log_text()) or "exited" for kind, w in workers.items() if not w.alive()}
            assert not down, f"restart {restart}: workers did not survive: {down}"
        time.sleep(LOAD_S)  # the last jobs are submitted with Redis up
        submitter.stop()
        assert submitter.error is None, f"the producer failed: {submitter.error!r}"
        job_ids, prompts = submitter.job_ids, submitter.prompts
        final = wait_final(store, job_ids, FINISH_TIMEOUT_S)
        finished = time.monotonic()
        logs = {kind: w.log_text() for kind, w in workers.items()}
        alive = {kind: w.alive() for kind, w in workers.items()}
    finally:
        submitter.stop()
        stack.stop()

    records = [r for r in final if r is not None]
    stats = restart_simulator.stats()
    ledger = Counter(e.job_id for e in Ledger(stack.redis).entries())
    recovered = sum(r.recoveries > 0 for r in records)
    succeeded = sum(r.status is JobStatus.SUCCEEDED for r in records)
    restored = {kind: log.count("Restoring ") for kind, log in logs.items()}
    # How often the fix of worker/broker_transport.py acted: where kombu alone could have died.
    fixed = {kind: log.count(LOST_BRPOP_MESSAGE) for kind, log in logs.items()}
    print(
        f"\nredis-restarts: {RESTARTS} Redis restarts ({RESTART_DOWN_S:g} s down) under load; {len(job_ids)} jobs "
        f"submitted ({submitter.failed_submits} submit attempts refused while Redis was down, repeated), "
        f"{succeeded} succeeded; workers alive {alive}, connections per worker "
        f"{ {kind: reconnections(log) for kind, log in logs.items()} }, restores of unacked messages tried "
        f"at disconnect {restored}, channel closes past a lost BRPOP (where kombu alone could die) {fixed}; "
        f"restart->every worker reconnected max {max(reconnect_s):.1f} s; "
        f"{recovered} jobs recovered by the sweep; run {finished - started:.0f} s"
    )

    for kind, log in logs.items():
        assert alive[kind] and not fatal_lines(log), f"the {kind} worker exited: {fatal_lines(log)}"
        assert reconnections(log) >= RESTARTS + 1, f"the {kind} worker connected {reconnections(log)} times"
    by_id = {r.id: r for r in records}
    assert_each_job_once(
        by_id, prompts, stats["creates_by_prompt"], stats["creates_total"], ledger, videos, video_size(PAD_BYTES)
    )
