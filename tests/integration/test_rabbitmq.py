"""RabbitMQ as the broker (job store still on Redis): quorum queues, native delayed
delivery for the countdown polls."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from producer import JobStatus, VideoRequest
from tests.integration.conftest import Stack
from videoqueue import namespace

pytestmark = pytest.mark.integration


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def rabbit_vhost() -> Iterator[str]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not installed: no RabbitMQ on this machine")
    vhost = f"vq-test-{uuid.uuid4().hex[:8]}"
    try:
        _ctl("add_vhost", vhost)
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"RabbitMQ is not running: {exc.stderr!r}")
    yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    _ctl("delete_vhost", vhost)


def test_jobs_run_end_to_end_on_rabbitmq_with_quorum_queues(local_stack: Stack, rabbit_vhost: str) -> None:
    local_stack.extra_env["BROKER_URL"] = rabbit_vhost
    local_stack.start_worker(concurrency=3)
    vq = local_stack.queue(broker_url=rabbit_vhost)
    jobs = vq.submit_many([VideoRequest(prompt=f"rabbit {i}", duration=4 + i % 3) for i in range(12)])

    done = vq.wait([j.id for j in jobs], timeout=120)

    assert all(j.status is JobStatus.SUCCEEDED for j in done), [j.error for j in done]
    assert set(local_stack.simulator.stats()["creates_by_prompt"].values()) == {1}
    assert local_stack.redis.llen(namespace.queue("submit")) == 0  # nothing went through Redis as a broker
    vhost = rabbit_vhost.rsplit("/", 1)[1]
    queues = subprocess.run(
        ["rabbitmqctl", "list_queues", "-p", vhost, "name", "type"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    for name in namespace.queues():
        assert any(line.split() == [name, "quorum"] for line in queues.splitlines()), queues
