"""Everything a benchmark scenario runs against, started on this machine: a redis-server
for the job store and another for the broker (each on its own port, so their command
counts are told apart), the simulator, optionally moto's S3 server, and N celery workers.

Measurements read from outside the code under test: Redis `INFO`, /proc through psutil,
and the simulator's own counters. Nothing of ours is patched.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil
import redis

from producer import Settings, VideoQueue, VideoRequest
from simulator.stack import ManagedProcess, _bin, free_port, start_moto, start_simulator, wait_until
from videoqueue import namespace
from videoqueue.job import JobStatus
from videoqueue.jobstore import JobStore

KEY = "bench-key"
GOOGLE_KEY = "bench-google-key"
BENCH_NAMESPACE = "bench"
S3_BUCKET = "videoqueue-bench"
FINAL = tuple(status.value for status in JobStatus if status.is_final)


def bench_s3_settings(endpoint: str) -> Settings:
    """Settings for the bench's moto S3 (the same credentials the workers get)."""
    return Settings(
        _env_file=None,
        s3_endpoint_url=endpoint,
        aws_region="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )


def start_redis(name: str, log_dir: Path) -> tuple[ManagedProcess, str]:
    """A throw-away redis-server on a free port, no persistence; returns it and its URL."""
    port = free_port()
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    # --dir: a redis-server loads any dump.rdb in its working directory at start, and the bench
    # runs from the repository, where one was once committed (another run's keys in ours).
    data = log_dir / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)]
    proc = ManagedProcess(name, argv, os.environ, log_dir / f"{name}.log")
    client = redis.Redis(port=port, socket_connect_timeout=0.5)

    def up() -> bool:
        try:
            return bool(client.ping()) or not proc.alive()
        except redis.ConnectionError:
            return not proc.alive()

    wait_until(up, 20, name)
    if not proc.alive():
        raise RuntimeError(f"{name} exited:\n{proc.log_text()}")
    return proc, f"redis://127.0.0.1:{port}/0"


def redis_counters(url: str) -> dict[str, float]:
    """Commands processed, memory used and per-command call counts of a Redis server."""
    client = redis.Redis.from_url(url)
    stats: dict[str, Any] = client.info("stats")  # type: ignore[assignment]
    memory: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
    commands: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    cpu: dict[str, Any] = client.info("cpu")  # type: ignore[assignment]
    out: dict[str, float] = {
        "commands": float(stats["total_commands_processed"]),
        "used_memory": float(memory["used_memory"]),
        "cpu_seconds": float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]),
    }
    for name, values in commands.items():
        out[name.removeprefix("cmdstat_")] = float(values["calls"])
    return out


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its (living) descendants."""
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its (living) descendants, in MiB."""
    total = 0
    for proc in _tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def enqueue(producer: VideoQueue, count: int, prompt: str, batch: int = 500) -> None:
    """Submit `count` default jobs named `prompt N`, `batch` per submit_many call."""
    for first in range(0, count, batch):
        size = min(batch, count - first)
        producer.submit_many([VideoRequest(prompt=f"{prompt} {first + i}") for i in range(size)])


class BenchStack:
    """Context manager owning the processes of one benchmark run."""

    def __init__(self, root: Path, sim_args: list[str] | None = None, moto: bool = False) -> None:
        self.root = root
        self.logs = root / "logs"
        self.out = root / "out"
        self.out.mkdir(parents=True, exist_ok=True)
        self._procs: list[ManagedProcess] = []
        self.workers: list[ManagedProcess] = []
        self._worker_seq = 0
        namespace.use(BENCH_NAMESPACE)  # this process's job store reads the workers' keys
        store, self.store_url = start_redis("redis-store", self.logs)
        self.jobs = JobStore.from_url(self.store_url)
        broker, self.broker_url = start_redis("redis-broker", self.logs)
        self._procs += [store, broker]
        port = free_port()
        env = {**os.environ, "SIM_API_KEY": KEY, "SIM_GOOGLE_API_KEY": GOOGLE_KEY}
        base_args = ["--concurrency-per-model", "1000000"]
        self._procs.append(start_simulator(port, self.logs, [*base_args, *(sim_args or [])], env))
        self.sim_url = f"http://127.0.0.1:{port}"
        self.s3_endpoint: str | None = None
        if moto:
            moto_port = free_port()
            self._procs.append(start_moto(moto_port, self.logs))
            self.s3_endpoint = f"http://127.0.0.1:{moto_port}"
            from worker.storage.s3 import s3_client

            s3_client(bench_s3_settings(self.s3_endpoint)).create_bucket(Bucket=S3_BUCKET)

    def __enter__(self) -> BenchStack:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers, then everything else."""
        self.stop_workers()
        for proc in reversed(self._procs):
            proc.stop(5)
        self._procs.clear()

    # --------------------------------------------------------------- settings

    def env(self, **settings: object) -> dict[str, str]:
        """The environment of a worker or producer of this stack; keyword arguments are
        settings by their lowercase name and win over the defaults here."""
        values: dict[str, object] = {
            "redis_url": self.store_url,
            "broker_url": self.broker_url,
            "byteplus_base_url": f"{self.sim_url}/api/v3",
            "byteplus_api_key": KEY,
            "google_api_key": GOOGLE_KEY,
            "veo_base_url": self.sim_url,
            "storage_url": f"file://{self.out}",
            # The provider's quota is not what is measured here.
            "max_in_flight_per_model": 1_000_000,
            "creates_per_minute_per_model": 1_000_000,
            "check_image_urls": "false",
            # The simulator's stand-in images are on loopback: trusted by the URL guard here only.
            "fetch_allow_hosts": self.sim_url.removeprefix("http://"),
            "log_level": "INFO",
        }
        if self.s3_endpoint:
            values.update(
                s3_endpoint_url=self.s3_endpoint,
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                aws_region="us-east-1",
            )
        values.update(settings)
        # Its own Redis servers, and its own deployment name whatever the shell's (the test
        # suite's included): the bench process and its workers must agree on one.
        values.setdefault("vq_namespace", BENCH_NAMESPACE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VQ_", "CELERY_"))}
        env.update({name.upper(): str(value) for name, value in values.items()})
        return env

    def producer(self, env: dict[str, str]) -> VideoQueue:
        """A producer configured like the workers started with `env`."""
        # Fields with an alias (the API keys) are the workers' business, not the producer's.
        fields = {name for name, field in Settings.model_fields.items() if field.validation_alias is None}
        values = {name.lower(): value for name, value in env.items() if name.lower() in fields}
        return VideoQueue(Settings.model_validate(values))

    # ---------------------------------------------------------------- workers

    def start_workers(
        self,
        count: int,
        *,
        concurrency: int,
        pool: str = "prefork",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        app: str = "worker",
    ) -> list[ManagedProcess]:
        """Start `count` celery worker nodes of `app` with `concurrency` slots each (in a
        `pool` of that kind) and wait until they are ready."""
        started = []
        for _ in range(count):
            self._worker_seq += 1
            name = f"bench{self._worker_seq}"
            argv = [
                _bin("celery"),
                "-A",
                app,
                "worker",
                "--loglevel=INFO",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                f"--hostname={name}@%h",
                "--without-gossip",
                "--without-mingle",
                *(extra_args or []),
            ]
            proc = ManagedProcess(name, argv, env or self.env(), self.logs / f"{name}.log")
            self.workers.append(proc)
            started.append(proc)
        for proc in started:
            wait_until(lambda p=proc: " ready." in p.log_text() or not p.alive(), 60, f"worker {proc.name}")  # type: ignore[misc]
            if not proc.alive():
                raise RuntimeError(f"worker {proc.name} exited:\n{proc.log_text()[-4000:]}")
        return started

    def stop_workers(self) -> None:
        """Stop every worker of this stack."""
        for proc in self.workers:
            proc.stop(30)
        self.workers.clear()

    def workers_cpu_seconds(self) -> float:
        """CPU seconds used so far by all running workers, pool children included."""
        return sum(tree_cpu_seconds(proc.proc.pid) for proc in self.workers)

    # -------------------------------------------------------------- simulator

    def sim_config(self, **changes: object) -> None:
        """Change the simulator's configuration at run time."""
        httpx.post(f"{self.sim_url}/_sim/config", json=changes, timeout=10).raise_for_status()

    def sim_reset(self) -> None:
        """Forget the simulator's tasks and counters."""
        httpx.post(f"{self.sim_url}/_sim/reset", timeout=30).raise_for_status()

    def sim_stats(self) -> dict[str, Any]:
        """The simulator's counters."""
        data: dict[str, Any] = httpx.get(f"{self.sim_url}/_sim/stats", timeout=30).json()
        return data

    # ------------------------------------------------------------------ state

    def flush(self) -> None:
        """Empty both Redis servers (between cases of one scenario)."""
        for url in (self.store_url, self.broker_url):
            redis.Redis.from_url(url).flushall()

    def counts(self) -> dict[str, int]:
        """Jobs by status, from the job store's index."""
        return self.jobs.count_by_status()

    def wait_final(self, expected: int, timeout: float, interval: float = 0.2) -> float:
        """Wait until `expected` jobs are final; returns the time.monotonic() it saw that.
        TimeoutError (with the counts by status) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if sum(counts.get(status, 0) for status in FINAL) >= expected:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise TimeoutError(f"not all {expected} jobs final after {timeout:g} s: {counts}")
            dead = [w.name for w in self.workers if not w.alive()]
            if dead:
                raise RuntimeError(f"workers exited: {dead}")
            time.sleep(interval)
