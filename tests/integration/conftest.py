"""Real parts for integration tests: Redis, the simulator over HTTP, moto's S3 server
over HTTP and `celery worker` processes. Nothing of ours is mocked."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from pydantic import AliasChoices

from producer import Settings, VideoQueue
from simulator.stack import ManagedProcess, free_port, start_moto, start_simulator, start_worker
from videoqueue import keys, namespace

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("VQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
# The suite is a deployment of its own, whatever VQ_NAMESPACE the shell or a .env names: it
# never takes a real fleet's jobs, nor gives it its own. Workers it starts inherit it.
TEST_NAMESPACE = os.environ.get("VQ_TEST_NAMESPACE", "test")
os.environ["VQ_NAMESPACE"] = TEST_NAMESPACE
namespace.use(TEST_NAMESPACE)
# Kombu's hash of delivered, unacknowledged messages, named by the namespace too.
UNACKED = keys.broker_transport_options().get("unacked_key", "unacked")
SIM_KEY = "sim-test-key-0d9c1e"
SIM_GOOGLE_KEY = "sim-google-key-5b7a20"
# The worker settings the suite shortens, and why. A test that needs the defaults as users
# get them asks for `default_stack` instead (tests/integration/test_defaults.py).
SUITE_TUNING = {
    # The simulator renders in about a second and the suite runs hundreds of jobs: polls
    # 0.5-2 s apart instead of the cold schedule (first poll after POLL_MIN_S=2 s, intervals
    # growing to POLL_MAX_S=60 s) keep each test seconds long.
    "POLL_INITIAL_S": "1",
    "POLL_MIN_S": "0.5",
    "POLL_MAX_S": "2",
    # Injected faults (429s, 5xx, cut connections) are retried 0.5-4 s apart, not 2-300 s.
    "RETRY_BASE_S": "0.5",
    "RETRY_MAX_S": "4",
    # The fleet-wide limits get their own tests; elsewhere they must not pace jobs.
    "MAX_IN_FLIGHT_PER_MODEL": "100000",
    "CREATES_PER_MINUTE_PER_MODEL": "100000",
}
# The reliability suites' recovery, for runs that strand jobs (a killed worker, Redis
# restarted): the sweep runs every 3 s and takes back a job 10 s overdue, a store attempt
# or a submit lease is stale after 15 s and a provider call times out after 10 s
# (defaults: 60 s, 60 s, 1500 s, 180 s and 30 s; minutes per stranded job). Polls 1-3 s
# apart, so that a worker on Redis holds countdown polls when it dies.
FAST_RECOVERY = {
    "SWEEP_INTERVAL_S": "3",
    "RECOVER_AFTER_S": "10",
    "STORE_BUSY_S": "15",
    "SUBMIT_LEASE_S": "15",
    "PROVIDER_TIMEOUT_S": "10",
    "POLL_INITIAL_S": "3",
    "POLL_MIN_S": "1",
    "POLL_MAX_S": "3",
}
# The simulator's stand-in images and the suite's own test servers listen on loopback, which
# the URL guard refuses by default: the suite's workers and producers trust it (only it).
# Tests of the guard itself set their own allow-list (tests/integration/test_urlguard.py).
SUITE_FETCH_ALLOW_HOSTS = "127.0.0.1"


def setting_variables() -> set[str]:
    """Every environment variable (upper case) that sets a videoqueue setting."""
    names: set[str] = set()
    for field_name, info in Settings.model_fields.items():
        names.add(field_name.upper())
        if isinstance(info.validation_alias, AliasChoices):
            names |= {c.upper() for c in info.validation_alias.choices if isinstance(c, str)}
    return names


# What every test starts from: whatever an earlier test set is undone.
CLEAN_SIMULATOR: dict[str, Any] = {
    "latency": 1.0,
    "latency_jitter": 0.0,
    "concurrency_per_model": 50,
    "video_pad_bytes": 0,
    "video_trickle_s": 0.0,
    "retry_after_s": 1.0,
    "create_429_rate": 0.0,
    "create_5xx_rate": 0.0,
    "get_5xx_rate": 0.0,
    "fail_rate": 0.0,
    "expire_rate": 0.0,
    "seed": None,
    "callback_delay_s": 0.0,
    "callback_loss_rate": 0.0,
    "callback_duplicate_rate": 0.0,
}


@dataclass
class Simulator:
    """The running simulator and its control endpoints."""

    url: str
    process: ManagedProcess

    @property
    def ark_base_url(self) -> str:
        return f"{self.url}/api/v3"

    def stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/_sim/stats", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def configure(self, **config: Any) -> None:
        httpx.post(f"{self.url}/_sim/config", json=config, timeout=5).raise_for_status()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_sim/reset", timeout=5).raise_for_status()

    def task(self, task_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.ark_base_url}/contents/generations/tasks/{task_id}",
            headers={"Authorization": f"Bearer {SIM_KEY}"},
            timeout=5,
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


@dataclass
class S3Server:
    """moto's S3 server."""

    endpoint: str
    process: ManagedProcess

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing-secret",
        )

    def new_bucket(self) -> str:
        name = f"vq-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@contextmanager
def running_simulator(log_dir: Path, *args: str) -> Iterator[Simulator]:
    """A simulator of its own (command-line options `args`) that takes the suite's keys,
    logging into `log_dir`; stopped at the end of the block."""
    port = free_port()
    env = {**os.environ, "SIM_API_KEY": SIM_KEY, "SIM_GOOGLE_API_KEY": SIM_GOOGLE_KEY}
    proc = start_simulator(port, log_dir, list(args), env=env)
    try:
        yield Simulator(url=f"http://127.0.0.1:{port}", process=proc)
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def simulator(log_dir: Path) -> Iterator[Simulator]:
    with running_simulator(log_dir, "--latency", "1.0") as sim:
        yield sim


@pytest.fixture(scope="session")
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    port = free_port()
    proc = start_moto(port, log_dir)
    yield S3Server(endpoint=f"http://127.0.0.1:{port}", process=proc)
    proc.stop()


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.ping()
    return client


STORAGE_SETTINGS = ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "S3_CHECKSUMS")
"""The settings of where a stack's storage is, beside STORAGE_URL."""


@dataclass
class Stack:
    """One test's system: a clean Redis database, the shared simulator, its workers."""

    simulator: Simulator
    redis: redis.Redis
    log_dir: Path
    storage_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[ManagedProcess] = field(default_factory=list)
    defaults: bool = False  # every setting but where the parts are at its default (no SUITE_TUNING)

    def connection_env(self) -> dict[str, str]:
        """Where the stack's parts are: the settings every process of it needs."""
        return {
            "VQ_NAMESPACE": TEST_NAMESPACE,
            "REDIS_URL": REDIS_URL,
            "BYTEPLUS_BASE_URL": self.simulator.ark_base_url,
            "BYTEPLUS_API_KEY": SIM_KEY,
            "GOOGLE_API_KEY": SIM_GOOGLE_KEY,
            "VEO_BASE_URL": f"{self.simulator.url}/",
            "STORAGE_URL": self.storage_url,
            "FETCH_ALLOW_HOSTS": SUITE_FETCH_ALLOW_HOSTS,
        }

    def env(self, **overrides: str) -> dict[str, str]:
        if self.defaults:  # nothing the shell or the suite sets either
            own = setting_variables()
            env = {k: v for k, v in os.environ.items() if k.upper() not in own}
        else:
            env = {**os.environ, **SUITE_TUNING, "LOG_LEVEL": "INFO"}
        env.update(self.connection_env())
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def keys(self, pattern: str) -> list[str]:
        found: list[str] = self.redis.keys(pattern)  # type: ignore[assignment]
        return sorted(found)

    def start_worker(self, concurrency: int = 2, pool: str | None = None, **env: str) -> ManagedProcess:
        name = f"w{len(self.workers) + 1}-{uuid.uuid4().hex[:6]}"
        proc = start_worker(name, self.env(**env), self.log_dir, concurrency=concurrency, pool=pool)
        self.workers.append(proc)
        return proc

    def queue(self, **settings: Any) -> VideoQueue:
        # The producer puts image files into the stack's storage (videoqueue.inputs), with
        # the stack's S3 endpoint and credentials when it has them.
        settings.setdefault("fetch_allow_hosts", SUITE_FETCH_ALLOW_HOSTS)
        storage = {k.lower(): v for k, v in self.extra_env.items() if k in STORAGE_SETTINGS}
        return VideoQueue(
            Settings(redis_url=REDIS_URL, storage_url=self.storage_url, _env_file=None, **{**storage, **settings})
        )

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def local_stack(simulator: Simulator, redis_client: redis.Redis, log_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    redis_client.flushdb()
    simulator.reset()
    simulator.configure(**CLEAN_SIMULATOR)
    stack = Stack(simulator, redis_client, log_dir, storage_url=f"file://{tmp_path / 'videos'}")
    yield stack
    stack.stop()


@pytest.fixture
def default_stack(local_stack: Stack) -> Stack:
    """local_stack whose workers and CLI run every setting at its default: only where Redis,
    the simulator and the folder are is set (SUITE_TUNING and the shell's settings are not)."""
    local_stack.defaults = True
    return local_stack


def fresh_stack(simulator: Simulator, client: redis.Redis, logs: Path, storage_url: str, **env: str) -> Stack:
    """A stack for one run of a reliability suite: an empty database and a simulator with
    nothing in flight; `env` for its workers on top of the suite's."""
    client.flushdb()
    simulator.reset()
    return Stack(simulator, client, logs, storage_url=storage_url, extra_env=dict(env))


@pytest.fixture
def s3_stack(
    simulator: Simulator, redis_client: redis.Redis, log_dir: Path, s3_server: S3Server
) -> Iterator[tuple[Stack, S3Server, str]]:
    redis_client.flushdb()
    simulator.reset()
    simulator.configure(**CLEAN_SIMULATOR)
    bucket = s3_server.new_bucket()
    stack = Stack(
        simulator,
        redis_client,
        log_dir,
        storage_url=f"s3://{bucket}/renders",
        extra_env={
            "S3_ENDPOINT_URL": s3_server.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_REGION": "us-east-1",
        },
    )
    yield stack, s3_server, bucket
    stack.stop()
