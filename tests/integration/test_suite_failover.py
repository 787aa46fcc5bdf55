"""Reliability suite: the Redis primary dies under load and Sentinel promotes its replica.

A Redis of the suite's own: a primary, one replica (`--replicaof`) and three sentinels
(`redis-server --sentinel` with config files written here, quorum 2), on free ports, no
persistence (a failover, not a restart, is what keeps the data). The job store and the
broker of two real `celery worker` processes and of the producer are configured by
REDIS_SENTINELS and REDIS_SENTINEL_MASTER only (REDIS_URL gives the database); none of them
is told the primary's address.

A producer submits Seedance jobs continuously (a few every half second, each with its own
client job id, retried with the same id after an error, as a producer should); once some
have finished, the primary is killed with SIGKILL. Then: every job ends `succeeded`, the
simulator saw exactly one create per job, the ledger holds exactly one entry per job and
the folder one video and one manifest per job (helpers.assert_each_job_once). The test
prints the figures docs/reliability.md quotes: the jobs, the time from the kill to a new
primary and to every job final, the records the failover set back (older on the new
primary than read just before the kill), the jobs the sweep recovered and the WAITs no
replica confirmed.

A second run sends the replica's link through a proxy (tests/integration/replproxy.py)
that drops the replication stream 1 s before the kill: the writes of that second die with
the primary for sure, and the run shows them found (records older on the new primary than
read just before the kill) and recovered, every job still created and billed once.

Every worker must live through the failover: losing the primary's connection is the same
event as a Redis restart for them (worker/broker_transport.py keeps kombu's close from
killing the worker), and the sentinel transport then finds the new primary.

Run: VQ_TEST_REDIS_URL=redis://127.0.0.1:6395/12 .venv/bin/pytest -q -s tests/integration/test_suite_failover.py
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel

from producer import JobRecord, JobStatus, Settings, VideoQueue, VideoRequest
from simulator.mp4 import video_size
from simulator.stack import ManagedProcess, free_port, wait_until
from tests.integration.conftest import FAST_RECOVERY, Simulator, fresh_stack, running_simulator
from tests.integration.helpers import assert_each_job_once, visible_files, wait_final
from tests.integration.replproxy import ReplicationProxy
from videoqueue import keys, redisconn
from videoqueue.jobstore import JobStore
from videoqueue.ledger import Ledger
from videoqueue.replicawait import DEFAULT_TIMEOUT_MS

pytestmark = pytest.mark.integration

MASTER = "vq-failover"
JOBS = 60
BATCH = 3
BATCH_EVERY_S = 0.5
KILL_WHEN_SUCCEEDED = 6
FINISH_TIMEOUT_S = 150.0
PAD_BYTES = 64 * 1024
# Sentinel's defaults (a primary is down after 30 s without an answer; a failover may take
# 3 min) would make the run wait half a minute before the failover even starts: 1 s and
# 10 s make it happen within seconds of the kill, as it would with a tuned production setup.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 10000
# With the replica behind the proxy, Sentinel sees it replicate from an address that is not
# the master's and, once failover-timeout has passed, points it at the master itself
# ("+fix-slave-config"), around the proxy: a hold then drops nothing (a CI run lost no write).
# Sentinel's default (3 min) keeps it on the proxy for the whole run; the failover itself is
# no slower with a single replica to promote.
PROXIED_FAILOVER_TIMEOUT_MS = 180000


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    return binary


@dataclass
class SentinelCluster:
    """A primary, one replica and three sentinels, each a process of its own."""

    root: Path
    primary_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    via_proxy: bool = False
    sentinel_password: str | None = None
    proxy: ReplicationProxy | None = None

    @property
    def sentinels(self) -> str:
        """REDIS_SENTINELS for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    @property
    def url(self) -> str:
        """REDIS_URL: only its database is used with REDIS_SENTINELS."""
        return f"redis://127.0.0.1:{self.primary_port}/0"

    def _start(self, name: str, argv: list[str]) -> None:
        self.processes[name] = ManagedProcess(name, argv, os.environ, self.root / f"{name}.log")

    def _server(self, name: str, port: int, *extra: str) -> None:
        data = self.root / name
        data.mkdir()
        base = [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        self._start(name, [*base, "--save", "", "--appendonly", "no", *extra])
        wait_until(lambda: _answers(port), 30, name)

    def start(self) -> None:
        self._server("primary", self.primary_port)
        upstream = self.primary_port
        if self.via_proxy:
            self.proxy = ReplicationProxy(self.primary_port)
            upstream = self.proxy.port
        self._server("replica", self.replica_port, "--replicaof", "127.0.0.1", str(upstream))
        for index, port in enumerate(self.sentinel_ports):
            # Sentinel rewrites its config file as it learns: each gets a file of its own.
            failover_timeout_ms = PROXIED_FAILOVER_TIMEOUT_MS if self.via_proxy else FAILOVER_TIMEOUT_MS
            conf = self.root / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.root}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {MASTER} 1\n"
                # The sentinels' own password, which they also give each other.
                + (
                    f"requirepass {self.sentinel_password}\nsentinel sentinel-pass {self.sentinel_password}\n"
                    if self.sentinel_password
                    else ""
                )
            )
            self._start(f"sentinel-{index}", [_redis_server(), str(conf), "--sentinel"])
        wait_until(self.ready, 60, "the sentinels to know the replica and each other", interval=0.5)

    def ready(self) -> bool:
        """The replica is in sync, and every sentinel monitors the primary, knows its
        replica and the two other sentinels."""
        primary = redis.Redis(port=self.primary_port, decode_responses=True, socket_timeout=1)
        try:
            info: dict[str, Any] = primary.info("replication")  # type: ignore[assignment]
        except redis.RedisError:
            return False
        finally:
            primary.close()
        replica = info.get("slave0", {})
        if not isinstance(replica, dict) or replica.get("state") != "online":
            return False
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, decode_responses=True, socket_timeout=1, password=self.sentinel_password)
            try:
                replicas = client.sentinel_slaves(MASTER)  # type: ignore[no-untyped-call]
                others = client.sentinel_sentinels(MASTER)  # type: ignore[no-untyped-call]
            except redis.RedisError:
                return False
            finally:
                client.close()
            if len(replicas) != 1 or len(others) != 2:
                return False
        return True

    def primary(self) -> int | None:
        """The port of the primary as a client finds it (redis-py's `discover_master`: the
        first sentinel that names a master it holds up and running); None while none does.
        SENTINEL GET-MASTER-ADDR-BY-NAME names the promoted replica already while the
        failover is under way, before clients can use it."""
        nodes = [("127.0.0.1", port) for port in self.sentinel_ports]
        try:
            asking = {"password": self.sentinel_password, "socket_timeout": 1}
            found = Sentinel(nodes, socket_timeout=1, sentinel_kwargs=asking)  # type: ignore[no-untyped-call]
            _host, port = found.discover_master(MASTER)  # type: ignore[no-untyped-call]
        except redis.RedisError:
            return None
        return int(port)

    def kill_primary(self) -> None:
        """SIGKILL: no goodbye to the replica, the sentinels or the clients."""
        self.processes["primary"].kill()

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop(timeout=10)
        if self.proxy is not None:
            self.proxy.close()


def _answers(port: int) -> bool:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@contextmanager
def sentinel_cluster(
    root: Path, *, via_proxy: bool = False, sentinel_password: str | None = None
) -> Iterator[SentinelCluster]:
    root.mkdir()
    nodes = SentinelCluster(root, via_proxy=via_proxy, sentinel_password=sentinel_password)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with sentinel_cluster(tmp_path / "sentinel-cluster") as nodes:
        yield nodes


SENTINEL_SECRET = "sentinel-secret-7f3a"


@pytest.fixture
def guarded_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """Sentinels that ask for a password (REDIS_SENTINEL_PASSWORD)."""
    with sentinel_cluster(tmp_path / "sentinel-cluster", sentinel_password=SENTINEL_SECRET) as nodes:
        yield nodes


@pytest.fixture
def lagging_cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    """The replica's link to the primary goes through a ReplicationProxy."""
    with sentinel_cluster(tmp_path / "sentinel-cluster", via_proxy=True) as nodes:
        yield nodes


@pytest.fixture
def failover_simulator(log_dir: Path) -> Iterator[Simulator]:
    args = ["--latency", "3", "--latency-jitter", "2", "--concurrency-per-model", "10000"]
    with running_simulator(log_dir / "failover", *args, "--video-pad-bytes", str(PAD_BYTES)) as sim:
        yield sim


class Producer(threading.Thread):
    """Submits BATCH jobs every BATCH_EVERY_S until JOBS are in; a batch that fails (the
    primary is gone, a failover is under way) is sent again with the same client job ids,
    which return the jobs already stored instead of storing them twice."""

    def __init__(self, vq: VideoQueue, token: str) -> None:
        super().__init__(name="failover-producer", daemon=True)
        self.vq = vq
        self.prompts = [f"failover {token} clip {i}: a kestrel over a motorway verge" for i in range(JOBS)]
        self.client_ids = [f"failover-{token}-{i}" for i in range(JOBS)]
        self.job_ids: list[str] = []
        self.errors: list[str] = []

    def run(self) -> None:
        for start in range(0, JOBS, BATCH):
            batch = zip(self.prompts[start : start + BATCH], self.client_ids[start : start + BATCH], strict=True)
            requests = [VideoRequest(prompt=p, client_job_id=c) for p, c in batch]
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.job_ids += [job.id for job in self.vq.submit_many(requests)]
                    break
                except Exception as exc:  # any failure: retried with the same ids
                    self.errors.append(type(exc).__name__)
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.5)
            time.sleep(BATCH_EVERY_S)


def test_primary_killed_under_load_every_job_once(
    cluster: SentinelCluster, failover_simulator: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    run_failover("failover", cluster, failover_simulator, log_dir, tmp_path, hold_s=0.0)


# The replication stream is dropped this long before the kill: the writes of that second are
# on the primary only, and die with it. The WAITs outlast it (REDIS_REPLICA_WAIT_MS 3 s, not
# 500 ms), so every durable write of that second is still waiting when the primary dies: its
# step fails with a Redis error and runs again, instead of going on with a write no replica
# holds. (With a WAIT shorter than the lag, a create intent could be lost after its create
# was sent: reliability.md says what that costs.)
HOLD_S = 1.0
HOLD_WAIT_MS = "3000"


def test_writes_lost_at_the_failover_are_found_and_recovered(
    lagging_cluster: SentinelCluster, failover_simulator: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    lost = run_failover(
        "failover-lagging", lagging_cluster, failover_simulator, log_dir, tmp_path, hold_s=HOLD_S, wait_ms=HOLD_WAIT_MS
    )
    assert lost > 0, "no write was lost: the replication stream was not held"


def run_failover(
    name: str,
    cluster: SentinelCluster,
    simulator: Simulator,
    log_dir: Path,
    tmp_path: Path,
    *,
    hold_s: float,
    wait_ms: str | None = None,
) -> int:
    """One run: the producer, two workers, the primary killed (`hold_s` after the replication
    stream is dropped, if > 0); asserts every job once and returns how many of the records
    read just before the kill were older (or gone) after it."""
    started = time.monotonic()
    videos = tmp_path / "videos"
    where = {
        "REDIS_URL": cluster.url,
        "REDIS_SENTINELS": cluster.sentinels,
        "REDIS_SENTINEL_MASTER": MASTER,
        "BROKER_URL": "",
    }
    if wait_ms is not None:
        where["REDIS_REPLICA_WAIT_MS"] = wait_ms
    settings = Settings(
        redis_url=cluster.url,
        redis_sentinels=cluster.sentinels,
        redis_sentinel_master=MASTER,
        redis_replica_wait_ms=where.get("REDIS_REPLICA_WAIT_MS", DEFAULT_TIMEOUT_MS),
        _env_file=None,
    )
    assert settings.effective_broker_url.startswith("sentinel://")
    store = JobStore.from_settings(settings)
    logs = log_dir / name
    stack = fresh_stack(simulator, store.redis, logs, f"file://{videos}", **FAST_RECOVERY, **where)
    workers = [stack.start_worker(concurrency=4) for _ in range(2)]
    try:
        producer = Producer(VideoQueue(settings), uuid.uuid4().hex[:6])
        producer.start()

        def enough_done() -> bool:
            done = [r for r in store.get_many(producer.job_ids) if r is not None and r.status is JobStatus.SUCCEEDED]
            return len(done) >= KILL_WHEN_SUCCEEDED

        wait_until(enough_done, 90, f"{KILL_WHEN_SUCCEEDED} jobs succeeded", interval=0.2)
        if hold_s > 0:
            assert cluster.proxy is not None
            replica = redis.Redis(port=cluster.replica_port, decode_responses=True, socket_timeout=2)
            link: dict[str, Any] = replica.info("replication")  # type: ignore[assignment]
            replica.close()
            assert link.get("master_port") == cluster.proxy.port, f"the replica left the proxy: {link}"
            ids = list(producer.job_ids)
            before_hold = {r.id: r.updated_at for r in store.get_many(ids) if r is not None}
            cluster.proxy.hold()
            time.sleep(hold_s)

            # Polls come every few seconds and may all fall outside the held second (CI saw
            # a run with none): wait for a job write the replica cannot have, else nothing
            # is there to lose and the test would show no recovery.
            def a_job_moved_while_held() -> bool:
                return any(
                    r is not None and r.updated_at > before_hold[r.id] for r in store.get_many(list(before_hold))
                )

            wait_until(a_job_moved_while_held, 20, "a job write while replication is held", interval=0.1)
        submitted_at_kill = len(producer.job_ids)
        seen_at_kill = [r for r in store.get_many(producer.job_ids[:submitted_at_kill]) if r is not None]
        at_kill = Counter(r.status.value for r in seen_at_kill)
        killed = time.monotonic()
        cluster.kill_primary()
        wait_until(lambda: cluster.primary() == cluster.replica_port, 60, "the replica promoted", interval=0.1)
        promoted = time.monotonic()
        # Written with each WAIT (TTL 60 s), it reached the replica: the durable writes before
        # the kill did wait for it.
        waited_before_kill = bool(store.redis.exists(keys.REPLICA_WAIT_MARK))
        # Writes lost at the failover, as far as a reader can see: records the new primary
        # holds in an older version than the old one showed just before the kill (or not at all).
        after = dict(zip((r.id for r in seen_at_kill), store.get_many([r.id for r in seen_at_kill]), strict=True))
        lost = [r.id for r in seen_at_kill if (now := after[r.id]) is None or now.updated_at < r.updated_at]
        went_back = Counter(
            f"{r.status.value}->{now.status.value if (now := after[r.id]) else 'gone'}"
            for r in seen_at_kill
            if r.id in lost
        )
        producer.join(timeout=120)
        assert not producer.is_alive(), "the producer never got its jobs in"
        final = wait_final(store, producer.job_ids, FINISH_TIMEOUT_S)
        finished = time.monotonic()
        alive = sum(worker.alive() for worker in workers)
        fatal = [line for w in workers for line in w.log_text().splitlines() if "Unrecoverable error" in line]
        unconfirmed = sum(w.log_text().count("no replica confirmed a write") for w in stack.workers)
    finally:
        stack.stop()

    records: dict[str, JobRecord] = {r.id: r for r in final if r is not None}
    stats = simulator.stats()
    ledger = Counter(e.job_id for e in Ledger(store.redis).entries())
    recovered = {r.id: r.recoveries for r in records.values() if r.recoveries > 0}
    creates = [stats["creates_by_prompt"].get(p, 0) for p in producer.prompts]
    print(
        f"\n{name}: {JOBS} jobs ({submitted_at_kill} submitted when the primary was killed, "
        f"[{' '.join(f'{s}={n}' for s, n in sorted(at_kill.items()))}]), "
        f"{sum(r.status is JobStatus.SUCCEEDED for r in records.values())} succeeded; "
        f"creates/job max {max(creates)}, ledger entries/job max {max(ledger[j] for j in records)}, "
        f"files/job {sorted(Counter(n.split('.')[0] for n in visible_files(videos)).values())[-1:]}; "
        f"kill -> new primary {promoted - killed:.1f} s, kill -> all final {finished - killed:.1f} s; "
        + (f"replication stream dropped {hold_s:g} s before the kill; " if hold_s > 0 else "")
        + f"{len(lost)} of {len(seen_at_kill)} records read before the kill older after it "
        f"[{' '.join(f'{k}={n}' for k, n in sorted(went_back.items()))}]; "
        f"{len(recovered)} jobs recovered by the sweep ({sum(recovered.values())} recoveries); "
        f"WAITs before the kill: {'yes' if waited_before_kill else 'none'}, {unconfirmed} unconfirmed; "
        f"{len(producer.errors)} producer batches retried ({', '.join(sorted(set(producer.errors)))}); "
        f"{alive} of {len(workers)} workers alive; run {finished - started:.0f} s"
    )
    assert len(producer.job_ids) == JOBS
    assert alive == len(workers) and not fatal, f"a worker did not live through the failover: {fatal}"
    assert waited_before_kill, "no durable write waited for the replica"
    assert_each_job_once(
        records,
        producer.prompts,
        stats["creates_by_prompt"],
        stats["creates_total"],
        ledger,
        videos,
        video_size(PAD_BYTES),
    )
    return len(lost)


def test_doctor_shows_the_primary_its_replica_and_the_sentinels(guarded_cluster: SentinelCluster) -> None:
    from kombu import Connection

    from worker import doctor

    cluster = guarded_cluster
    settings = Settings(
        redis_url=cluster.url,
        redis_sentinels=cluster.sentinels,
        redis_sentinel_master=MASTER,
        redis_sentinel_password=SENTINEL_SECRET,
        _env_file=None,
    )
    # The job store and the broker both get through the sentinels' password.
    assert JobStore.from_settings(settings).redis.ping()
    with Connection(settings.effective_broker_url, transport_options=redisconn.broker_transport_options(settings)) as c:
        c.ensure_connection(max_retries=1)
        assert c.default_channel.client.ping()  # type: ignore[attr-defined] # kombu's Redis channel
    primary = f"primary 127.0.0.1:{cluster.primary_port} of master {MASTER!r}"
    redis_check = doctor.check_redis(settings)
    assert primary in redis_check.detail, redis_check
    replication = doctor.check_replication(settings)
    assert replication.status is doctor.Status.OK, replication
    assert f"1 replica(s): 127.0.0.1:{cluster.replica_port} online" in replication.detail
    sentinels = doctor.check_sentinels(settings)
    assert sentinels.status is doctor.Status.OK, sentinels
    assert sentinels.detail.startswith(f"3 of 3 sentinel(s) know {MASTER!r}")
    assert sentinels.detail.count(f"primary 127.0.0.1:{cluster.primary_port}, 2 other sentinel(s)") == 3
    report = doctor.run_doctor(settings)
    assert [c.name for c in report.checks][:4] == ["namespace", "redis", "replication", "sentinels"]

    unknown = doctor.check_sentinels(settings.model_copy(update={"redis_sentinel_master": "nobody"}))
    assert unknown.status is doctor.Status.FAIL
    assert "no sentinel answers for master 'nobody'" in unknown.detail
    assert f"does not monitor 'nobody' (it knows: {MASTER})" in unknown.detail

    refused = doctor.check_sentinels(settings.model_copy(update={"redis_sentinel_password": None}))
    assert refused.status is doctor.Status.FAIL
    assert refused.detail.count("unreachable: Authentication required") == 3, refused.detail
    assert SENTINEL_SECRET not in sentinels.detail + refused.detail

    gone = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    unreachable = doctor.check_sentinels(settings.model_copy(update={"redis_sentinels": gone}))
    assert unreachable.status is doctor.Status.FAIL
    assert unreachable.detail.count("unreachable") == 2, unreachable.detail
