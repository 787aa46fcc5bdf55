"""The image's and the compose file's commands, run for real outside Docker: the worker's
CMD and HEALTHCHECK from the Dockerfile, its warm shutdown, and Flower as compose starts it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from celery import Celery

from producer import VideoRequest
from simulator.stack import ManagedProcess, free_port, http_ok, wait_until
from tests.integration.conftest import REDIS_URL, UNACKED, Stack
from tests.unit.test_deploy_files import (
    COMPOSE,
    as_argv,
    dockerfile_cmd,
    dockerfile_healthcheck,
    healthcheck_argv,
    load,
)
from videoqueue import namespace
from videoqueue.job import JobStatus

pytestmark = pytest.mark.integration

BIN = str(Path(sys.executable).parent)


def container_env(stack: Stack, **extra: str) -> dict[str, str]:
    """The stack's worker environment as a container has it: HOSTNAME is the hostname
    (what %h expands to) and the image's tools are on PATH."""
    return stack.env(HOSTNAME=socket.gethostname(), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra)


def start_image_worker(stack: Stack, env: dict[str, str], name: str) -> ManagedProcess:
    proc = ManagedProcess(name, dockerfile_cmd(), env, stack.log_dir / f"{name}.log")
    stack.workers.append(proc)
    wait_until(lambda: " ready." in proc.log_text() or not proc.alive(), 60, f"worker {name}")
    assert proc.alive(), proc.log_text()[-3000:]
    return proc


def healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dockerfile_healthcheck(), env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_image_command_starts_a_worker_its_healthcheck_finds(local_stack: Stack) -> None:
    worker_name = f"fleet-{uuid.uuid4().hex[:6]}"
    env = container_env(local_stack, WORKER_NAME=worker_name, WORKER_CONCURRENCY="1")
    proc = start_image_worker(local_stack, env, "image-cmd")
    assert f"{worker_name}@{socket.gethostname()} ready." in proc.log_text()
    assert healthcheck(env).returncode == 0
    # Another node name (another replica's hostname) is not this worker: unhealthy.
    other = healthcheck({**env, "HOSTNAME": "not-this-container"})
    assert other.returncode != 0


def test_without_worker_name_the_default_node_name_matches_too(local_stack: Stack) -> None:
    env = container_env(local_stack, WORKER_CONCURRENCY="1")
    env.pop("WORKER_NAME", None)
    proc = start_image_worker(local_stack, env, "image-default")
    assert f"worker@{socket.gethostname()} ready." in proc.log_text()
    assert healthcheck(env).returncode == 0


def test_the_compose_split_threads_for_polls_prefork_for_stores_runs_jobs(local_stack: Stack) -> None:
    """docker-compose.yml's two kinds of worker, as the image's command starts them: submits
    and polls on a thread pool, stores on prefork. Every job succeeds, created once."""
    compose = load(COMPOSE)["services"]
    kinds = {}
    for service in ("worker", "store-worker"):
        env = compose[service]["environment"]
        kinds[service] = {
            "WORKER_NAME": f"{service}-{uuid.uuid4().hex[:6]}",
            "WORKER_QUEUES": env["WORKER_QUEUES"],
            "WORKER_POOL": env["WORKER_POOL"].removeprefix("${WORKER_POOL:-").removesuffix("}"),
            "WORKER_CONCURRENCY": "8" if service == "worker" else "1",
        }
    assert kinds["worker"]["WORKER_POOL"] == "threads"
    banners = {"worker": ".> concurrency: 8 (thread)", "store-worker": ".> concurrency: 1 (prefork)"}
    for service, extra in kinds.items():
        proc = start_image_worker(local_stack, container_env(local_stack, **extra), service)
        assert banners[service] in proc.log_text()
    local_stack.simulator.configure(latency=2.0)
    records = local_stack.queue().submit_many([VideoRequest(prompt=f"split {i}") for i in range(24)])
    done = local_stack.queue().wait([r.id for r in records], timeout=120, poll_interval=0.5)
    assert [r.status for r in done] == [JobStatus.SUCCEEDED] * 24
    stats = local_stack.simulator.stats()
    assert stats["creates_total"] == 24 and stats["max_in_flight"] > 8, "more jobs in flight than slots"
    logs = {service: proc.log_text() for service, proc in zip(kinds, local_stack.workers, strict=True)}
    # Each ran only its own queues' tasks (the banner lists every registered task; these
    # are the lines of tasks received).
    assert "Task videoqueue.poll[" in logs["worker"] and "Task videoqueue.store[" not in logs["worker"]
    assert "Task videoqueue.store[" in logs["store-worker"] and "Task videoqueue.poll[" not in logs["store-worker"]


def test_sigterm_hands_held_countdown_messages_back(local_stack: Stack) -> None:
    """What stop_grace_period waits for: on SIGTERM the worker finishes its tasks and puts
    the countdown messages it holds back on their queue, at once, for the other workers."""
    env = container_env(local_stack, WORKER_CONCURRENCY="1")
    proc = start_image_worker(local_stack, env, "image-warm")
    sender = Celery("sender", broker=REDIS_URL, set_as_current=False)
    job_ids = [str(uuid.uuid4()) for _ in range(3)]
    for job_id in job_ids:
        sender.send_task("videoqueue.poll", args=(job_id, 1), countdown=600, queue=namespace.queue("poll"))
    sender.close()
    r = local_stack.redis
    wait_until(lambda: r.hlen(UNACKED) == 3, 20, "the worker to hold the countdown messages")
    assert r.llen(namespace.queue("poll")) == 0
    os.kill(proc.proc.pid, signal.SIGTERM)  # what `docker stop` sends to the container's main process
    proc.proc.wait(30)
    assert r.hlen(UNACKED) == 0
    assert r.llen(namespace.queue("poll")) == 3
    assert "Restoring 3 unacknowledged message(s)" in proc.log_text()


def test_flower_as_compose_runs_it(local_stack: Stack, tmp_path: Path) -> None:
    flower = load(COMPOSE)["services"]["flower"]
    port = free_port()
    db = tmp_path / "flower.db"
    replaced = {"--port": f"--port={port}", "--db": f"--db={db}"}
    argv = [replaced.get(arg.split("=")[0], arg) for arg in as_argv(flower["command"])]
    argv.append("--address=127.0.0.1")
    password = uuid.uuid4().hex
    env = container_env(local_stack, FLOWER_BASIC_AUTH=f"admin:{password}")
    proc = ManagedProcess("flower", argv, env, local_stack.log_dir / "flower.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck") or not proc.alive(), 60, "flower")
        assert proc.alive(), proc.log_text()[-3000:]
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=("admin", "wrong"), timeout=5).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/", auth=("admin", password), timeout=5).status_code == 200
        check = [arg.replace(":5555/", f":{port}/") for arg in healthcheck_argv(flower["healthcheck"])]
        assert subprocess.run(check, env=env, timeout=30, check=False).returncode == 0
        assert password not in " ".join(proc.argv)
    finally:
        proc.stop()
    assert list(tmp_path.glob("flower.db*")), "persistent state is written to --db"
