"""The broker on a Redis server of its own (BROKER_URL), the job store on another
(REDIS_URL), as docs/production.md describes for sizing each apart: jobs run end to end,
the messages stay on the broker's server and the jobs on the store's."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer import JobStatus, VideoRequest
from simulator.stack import ManagedProcess, free_port, wait_until
from tests.integration.conftest import UNACKED, Stack
from videoqueue import keys, namespace

pytestmark = pytest.mark.integration


@pytest.fixture
def broker_redis(tmp_path: Path, log_dir: Path) -> Iterator[str]:
    """A second redis-server, for the broker only."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(tmp_path), "--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]
    proc = ManagedProcess("redis-broker", argv, {}, log_dir / f"redis-broker-{port}.log")
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return not proc.alive()

    wait_until(answers, 20, "the broker's redis-server")
    assert proc.alive(), proc.log_text()[-2000:]
    yield url
    proc.stop()


def test_jobs_run_with_the_broker_on_another_redis_server(
    local_stack: Stack, broker_redis: str, tmp_path: Path
) -> None:
    local_stack.extra_env["BROKER_URL"] = broker_redis
    local_stack.start_worker()
    vq = local_stack.queue(broker_url=broker_redis)
    image = tmp_path / "first.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x05" * 256)
    broker = redis.Redis.from_url(broker_redis, decode_responses=True)

    jobs = vq.submit_many([VideoRequest(prompt="split, plain"), VideoRequest(prompt="split", image_file=str(image))])
    submit, poll, _store = namespace.queues()
    wait_until(lambda: bool(broker.keys("_kombu.binding.*")), 30, "kombu's bindings on the broker")
    done = vq.wait([j.id for j in jobs], timeout=90)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 2, [j.error for j in done]
    bindings = set(broker.keys("_kombu.binding.*"))  # type: ignore[arg-type]
    assert {f"_kombu.binding.{submit}", f"_kombu.binding.{poll}"} <= bindings, bindings
    # Nothing of the broker's on the job store's server, and no job on the broker's.
    store_keys = local_stack.keys("*")
    assert not [k for k in store_keys if k.startswith("_kombu") or k in {submit, poll, UNACKED}], store_keys
    # `wait` returns at the final move (the event stream): the step that made it is acked
    # just after, and until then kombu holds its message in its own keys on the broker.
    wait_until(lambda: not broker.exists(f"{keys.PREFIX}unacked"), 10, "the last step acked")
    assert broker.keys(f"{keys.PREFIX}*") == []
    assert all(local_stack.redis.exists(keys.job_key(j.id)) for j in jobs)
