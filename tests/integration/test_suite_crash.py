"""Reliability suite: a worker killed with `kill -9` in the middle of a busy run.

Three workers (concurrency 2 each) run 300 Seedance jobs against the simulator (3-5 s
renders, 6 MiB videos into a local folder) while a producer process keeps enqueueing
(6 jobs a second, about what the fleet takes; every 15th job's create call takes 3 s at
the provider). One worker is killed (SIGKILL to its whole process group) once 60+ jobs are
enqueued, at a moment when, by its own log and the job store, one of its pool slots is in
a create call at the provider and the other is half way through writing a video, and (on
Redis, where a worker holds countdown messages until they are due) it holds countdown
polls; a replacement worker starts at once. Run once with Redis as the broker and once
with RabbitMQ (a fresh vhost per run; countdowns wait in the broker there).

The workers sweep for stranded jobs every 3 s and recover a job 10 s past its due time
(SWEEP_INTERVAL_S=3, RECOVER_AFTER_S=10); a store attempt and a submit lease count as
stale after 15 s (STORE_BUSY_S=15, SUBMIT_LEASE_S=15), so every stranded job must be back
on its way within the test. Then:

- every job is final and succeeded;
- the simulator saw exactly one create per job (no duplicate paid task), including the
  job whose create was cut off by the kill;
- the cost ledger holds exactly one entry per job;
- the folder holds exactly one `<id>.mp4` (of the served size) and one `<id>.json` per
  job, and nothing else: no leftover temporary file of the killed transfer.

The figure printed is the time from the kill to the last job the killed worker held
making progress again (a status, poll, store or create step recorded in its job record).

Run: VQ_TEST_REDIS_URL=redis://127.0.0.1:6379/9 .venv/bin/pytest -q -s tests/integration/test_suite_crash.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from simulator.mp4 import video_size
from simulator.stack import ManagedProcess
from tests.integration.conftest import FAST_RECOVERY, REDIS_URL, Simulator, Stack, fresh_stack, running_simulator
from tests.integration.helpers import assert_each_job_once, visible_files, wait_final
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from videoqueue.ledger import Ledger

pytestmark = pytest.mark.integration

JOBS = 300
# The producer enqueues BATCH jobs every BATCH_PAUSE_S (about what the fleet can take),
# so submits keep arriving around the kill.
BATCH = 6
BATCH_PAUSE_S = 1.0
MIN_ENQUEUED_AT_KILL = 60
SLOW_EVERY = 15  # every 15th job's create call takes SLOW_CREATE_S at the provider
SLOW_CREATE_S = 3
PAD_BYTES = 6 * 1024 * 1024
WORKERS = 3
CONCURRENCY = 2
KILL_TIMEOUT_S = 120.0
FINISH_TIMEOUT_S = 300.0
WORKER_ENV = {
    **FAST_RECOVERY,
    "LOG_FORMAT": "text",  # the kill moment is read from the "Task ... received" lines
}
RABBITMQ = ("127.0.0.1", 5672)
SUBMIT, POLL, STORE = "videoqueue.submit", "videoqueue.poll", "videoqueue.store"

# The producer runs as its own process: Celery's settings (quorum queues on RabbitMQ) are
# read from the environment when `videoqueue.celeryconfig` is first imported.
PRODUCER = """
import json, sys, time
from producer import VideoQueue, VideoRequest
prompts = json.load(open(sys.argv[1]))
batch, pause = int(sys.argv[2]), float(sys.argv[3])
vq = VideoQueue()
for start in range(0, len(prompts), batch):
    for job in vq.submit_many([VideoRequest(prompt=p) for p in prompts[start:start + batch]]):
        print(job.id, flush=True)
    time.sleep(pause)
"""

_RECEIVED = re.compile(r"Task (videoqueue\.\w+)\[([0-9a-f-]{36})\] received job_id=([0-9a-f-]{36})")
_TRACED = re.compile(r"celery\.app\.trace Task videoqueue\.\w+\[([0-9a-f-]{36})\]")


# --------------------------------------------------------------------------- brokers


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120, check=False)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for one run (deleted afterwards); skips without RabbitMQ."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ variant: rabbitmqctl not found (CI machines have RabbitMQ running)")
    try:
        socket.create_connection(RABBITMQ, timeout=2).close()
    except OSError as exc:
        pytest.skip(f"RabbitMQ variant: nothing listens on {RABBITMQ[0]}:{RABBITMQ[1]} ({exc})")
    vhost = f"vq-test-{uuid.uuid4().hex[:10]}"
    added = _rabbitmqctl("add_vhost", vhost)
    if added.returncode != 0:
        pytest.skip(f"RabbitMQ variant: rabbitmqctl add_vhost failed: {(added.stderr or added.stdout).strip()}")
    try:
        allowed = _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        assert allowed.returncode == 0, allowed.stderr
        yield f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


# --------------------------------------------------------------------------- the killed worker


class LogFollower:
    """Reads a worker's log as it grows and tells which messages it holds: received (a
    reserved or countdown message, or a task running) and not yet traced as done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._tail = ""
        self.received: dict[str, tuple[str, str]] = {}  # task id -> (task name, job id)
        self.traced: set[str] = set()

    def held(self) -> dict[str, tuple[str, str]]:
        with self.path.open("r", errors="replace") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
            self._offset = fh.tell()
        text = self._tail + chunk
        cut = text.rfind("\n") + 1
        self._tail = text[cut:]
        for match in _RECEIVED.finditer(text[:cut]):
            self.received[match.group(2)] = (match.group(1), match.group(3))
        self.traced.update(m.group(1) for m in _TRACED.finditer(text[:cut]))
        return {task_id: held for task_id, held in self.received.items() if task_id not in self.traced}


def _progress(record: JobRecord) -> tuple[Any, ...]:
    """What changes when a step of the job gets done (not when the sweep claims it)."""
    return (record.status, record.poll_seq, record.store_attempts, record.attempts, record.provider_task_id)


class ProgressWatch(threading.Thread):
    """Samples the jobs a killed worker held until each made progress after the kill;
    records when (the record's `updated_at` at the first sample that shows it)."""

    def __init__(self, store: JobStore, baseline: dict[str, JobRecord]) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.baseline = baseline
        self.moved: dict[str, datetime] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        pending = [j for j, r in self.baseline.items() if not r.status.is_final]
        while pending and not self.stop.is_set():
            for job_id, record in zip(pending, self.store.get_many(pending), strict=True):
                if record is not None and _progress(record) != _progress(self.baseline[job_id]):
                    self.moved[job_id] = record.updated_at
            pending = [j for j in pending if j not in self.moved]
            time.sleep(0.2)


# --------------------------------------------------------------------------- the run


@dataclass
class CrashRun:
    """Everything one run left behind, for the tests to judge."""

    broker: str
    job_ids: list[str]
    prompts: list[str]
    records: dict[str, JobRecord]
    creates_by_prompt: dict[str, int]
    creates_total: int
    ledger: Counter[str]
    videos: Path
    files: set[str]
    hidden: list[str]
    kill: KillMoment
    moved_s: dict[str, float]  # job id -> seconds from the kill to its progress
    stranded: list[str]  # held, active at the kill, and never moved again
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        succeeded = sum(r.status is JobStatus.SUCCEEDED for r in self.records.values())
        creates = max((self.creates_by_prompt.get(p, 0) for p in self.prompts), default=0)
        entries = max((self.ledger[j] for j in self.job_ids), default=0)
        per_job = Counter(name.split(".")[0] for name in self.files)
        objects = sorted({per_job[j] for j in self.job_ids})
        moving = max(self.moved_s.values(), default=float("nan"))
        kinds = {
            "create in flight": self.kill.creating,
            "transfer": self.kill.writing,
            "submit": self.kill.held[SUBMIT] - self.kill.creating,
            "poll": self.kill.held[POLL],
        }
        held = ", ".join(f"{len(jobs)} {kind}" for kind, jobs in kinds.items())
        by_kind = ", ".join(
            f"{kind} {max(self.moved_s.get(j, float('inf')) for j in jobs):.1f}" for kind, jobs in kinds.items() if jobs
        )
        recovered = sum(r.recoveries > 0 for r in self.records.values())
        return (
            f"crash[{self.broker}]: {len(self.job_ids)} jobs, {succeeded} succeeded, creates/job max {creates}, "
            f"ledger entries/job max {entries}, files/job {objects} (mp4+json), leftover temp files "
            f"{len(self.hidden)}; killed at {self.seconds['kill']:.0f} s ({self.kill.enqueued} enqueued) holding "
            f"{held}; kill->last stranded job moving {moving:.1f} s ({by_kind}); {recovered} jobs recovered by "
            f"the sweep; run {self.seconds['total']:.0f} s"
        )


@pytest.fixture(scope="module")
def crash_simulator(log_dir: Path) -> Iterator[Simulator]:
    args = ["--latency", "3", "--latency-jitter", "2", "--concurrency-per-model", "10000"]
    with running_simulator(log_dir / "crash", *args, "--video-pad-bytes", str(PAD_BYTES)) as sim:
        yield sim


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def crash_run(
    request: pytest.FixtureRequest,
    crash_simulator: Simulator,
    redis_client: redis.Redis,
    log_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[CrashRun]:
    broker: str = request.param
    with ExitStack() as cleanup:
        broker_url = cleanup.enter_context(rabbitmq_vhost()) if broker == "rabbitmq" else ""
        tmp = tmp_path_factory.mktemp(f"crash-{broker}")
        videos = tmp / "videos"
        logs = log_dir / f"crash-{broker}"
        stack = fresh_stack(
            crash_simulator, redis_client, logs, f"file://{videos}", **WORKER_ENV, BROKER_URL=broker_url
        )
        cleanup.callback(shutil.rmtree, videos, True)
        cleanup.callback(_stop_all, stack)
        yield _run(broker, stack, videos, tmp)


def _stop_all(stack: Stack) -> None:
    threads = [threading.Thread(target=w.stop) for w in stack.workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _run(broker: str, stack: Stack, videos: Path, tmp: Path) -> CrashRun:
    started = time.monotonic()
    store = JobStore.from_url(REDIS_URL)
    token = uuid.uuid4().hex[:6]
    prompts = [
        f"crash {broker} {token} clip {i}: a fox in snow"
        + (f" [sim:slowcreate={SLOW_CREATE_S}]" if i % SLOW_EVERY == 0 else "")
        for i in range(JOBS)
    ]
    for _ in range(WORKERS):
        stack.start_worker(concurrency=CONCURRENCY)
    victim = stack.workers[0]

    prompts_file = tmp / "prompts.json"
    prompts_file.write_text(json.dumps(prompts))
    with (tmp / "producer.log").open("w") as producer_log:
        producer = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(prompts_file), str(BATCH), str(BATCH_PAUSE_S)],
            env=stack.env(),
            stdout=subprocess.PIPE,
            stderr=producer_log,
            text=True,
        )
        kill = _kill_at_the_right_moment(victim, store, videos, holds_polls=broker == "redis")
        killed_after = time.monotonic() - started
        watch = ProgressWatch(JobStore.from_url(REDIS_URL), kill.baseline)
        watch.start()
        stack.start_worker(concurrency=CONCURRENCY)  # the replacement
        out, _ = producer.communicate(timeout=120)
    assert producer.returncode == 0, (tmp / "producer.log").read_text()[-3000:]
    job_ids = out.split()
    assert len(job_ids) == JOBS

    records = {r.id: r for r in wait_final(store, job_ids, FINISH_TIMEOUT_S) if r is not None}
    finished = time.monotonic()
    watch.join(timeout=5)
    watch.stop.set()

    stats = stack.simulator.stats()
    ledger = Counter(e.job_id for e in Ledger(stack.redis).entries())
    names = sorted(os.listdir(videos)) if videos.is_dir() else []
    moved_s = {j: (at - kill.at).total_seconds() for j, at in watch.moved.items()}
    stranded = [j for j, r in kill.baseline.items() if not r.status.is_final and j not in watch.moved]
    run = CrashRun(
        broker=broker,
        job_ids=job_ids,
        prompts=prompts,
        records=records,
        creates_by_prompt=stats["creates_by_prompt"],
        creates_total=stats["creates_total"],
        ledger=ledger,
        videos=videos,
        files=visible_files(videos),
        hidden=[n for n in names if n.startswith(".")],
        kill=kill,
        moved_s=moved_s,
        stranded=stranded,
        seconds={"total": finished - started, "kill": killed_after},
    )
    print(f"\n{run.summary}")
    return run


@dataclass
class KillMoment:
    """What the killed worker was doing when it died."""

    at: datetime
    held: dict[str, set[str]]  # task name -> job ids of messages it had received and not finished
    creating: set[str]  # jobs whose create call it had in flight
    writing: set[str]  # jobs whose video it was half way through writing
    conditions: dict[str, bool]
    baseline: dict[str, JobRecord]  # records of the jobs it held, just before the kill
    enqueued: int  # jobs the producer had enqueued by then


def _kill_at_the_right_moment(
    victim: ManagedProcess, store: JobStore, videos: Path, *, holds_polls: bool
) -> KillMoment:
    """Wait until the victim runs a create call (in one pool slot) and writes a video
    (in the other) and, on a broker where workers hold countdown messages, holds a poll;
    then SIGKILL it."""
    follower = LogFollower(victim.log_path)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while True:
        held: dict[str, set[str]] = {SUBMIT: set(), POLL: set(), STORE: set()}
        for name, job_id in follower.held().values():
            held.setdefault(name, set()).add(job_id)
        now = utcnow()
        creating = {
            r.id
            for r in store.get_many(sorted(held[SUBMIT]))
            if r is not None
            and r.status is JobStatus.SUBMITTING
            and r.submit_lease_until is not None
            and r.submit_lease_until > now
        }
        partial = {n[1:37] for n in os.listdir(videos) if n.startswith(".")} if videos.is_dir() else set()
        enqueued = sum(store.count_by_status().values())
        conditions = {
            f"{MIN_ENQUEUED_AT_KILL}+ jobs enqueued": enqueued >= MIN_ENQUEUED_AT_KILL,
            "create in flight": bool(creating),
            "transfer half written": bool(partial & held[STORE]),
        }
        if holds_polls:
            conditions["countdown poll held"] = bool(held[POLL])
        if all(conditions.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    held_jobs = sorted(set().union(*held.values()))
    baseline = {r.id: r for r in store.get_many(held_jobs) if r is not None}
    at = utcnow()
    victim.kill()
    return KillMoment(at, held, creating, partial & held[STORE], conditions, baseline, enqueued)


# --------------------------------------------------------------------------- the checks


def test_every_job_succeeds_with_one_create_one_cost_and_one_video(crash_run: CrashRun) -> None:
    run = crash_run
    assert len(run.records) == JOBS
    assert_each_job_once(
        run.records,
        run.prompts,
        run.creates_by_prompt,
        run.creates_total,
        run.ledger,
        run.videos,
        video_size(PAD_BYTES),
    )
    assert all(r.provider_task_id for r in run.records.values())
    for job_id in run.job_ids[:: JOBS // 10]:
        manifest = json.loads((run.videos / f"{job_id}.json").read_text())
        assert manifest["job_id"] == job_id


def test_the_kill_hit_creates_polls_and_transfers_and_nothing_stays_stranded(crash_run: CrashRun) -> None:
    run = crash_run
    assert all(run.kill.conditions.values()), f"the kill came at the wrong moment: {run.kill.conditions}"
    assert not run.stranded, {j: run.records[j].status for j in run.stranded}
    slow = [p for p in run.prompts if "slowcreate" in p]
    assert all(run.creates_by_prompt.get(p) == 1 for p in slow)


def test_the_killed_transfer_leaves_no_partial_file(crash_run: CrashRun) -> None:
    assert crash_run.hidden == [], f"partial files left in {crash_run.videos}: {crash_run.hidden}"
