"""The image's and the compose file's commands, run for real outside Docker: the worker's
CMD and HEALTHCHECK from the Dockerfile, its warm shutdown, and Flower as compose starts it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import redis
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


def test_the_compose_redis_takes_its_password_on_stdin_and_its_healthcheck_passes(tmp_path: Path) -> None:
    """The redis service's script, run by sh as in the container: the official image's
    docker-entrypoint.sh (which drops root, then execs its arguments) is stood in for by one
    that adds a free port, a loopback bind and a scratch directory. The server must demand
    the password, redis-server's command line must not hold it, and the healthcheck's
    `redis-cli ping` must pass on REDISCLI_AUTH alone."""
    server = shutil.which("redis-server")
    if server is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed")
    redis_service = load(COMPOSE)["services"]["redis"]
    port = free_port()
    shim = tmp_path / "bin" / "docker-entrypoint.sh"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "$@" --port {port} --bind 127.0.0.1 --dir {tmp_path} --save ""\n')
    shim.chmod(0o755)
    password = uuid.uuid4().hex
    # What compose hands the container: the script with $$ turned into $, and the environment.
    argv = [arg.replace("$$", "$") for arg in as_argv(redis_service["command"])]
    env = {"PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "REDISCLI_AUTH": password}
    assert redis_service["environment"]["REDISCLI_AUTH"].startswith("${REDIS_PASSWORD:?")
    proc = ManagedProcess("compose-redis", argv, env, tmp_path / "redis.log")
    url = f"redis://:{password}@127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    try:
        wait_until(lambda: answers() or not proc.alive(), 20, "the compose redis")
        assert proc.alive(), proc.log_text()[-2000:]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(f"redis://127.0.0.1:{port}/0").ping()
        assert redis.Redis.from_url(url).config_get("appendonly") == {"appendonly": "yes"}
        cmdline = Path(f"/proc/{proc.proc.pid}/cmdline").read_bytes().decode(errors="replace")
        assert "redis-server" in cmdline and password not in cmdline, "sh must exec redis-server"
        check = healthcheck_argv(redis_service["healthcheck"])
        assert check == ["redis-cli", "ping"]
        ping = subprocess.run(
            [check[0], "-p", str(port), *check[1:]], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert ping.returncode == 0 and ping.stdout.strip() == "PONG", ping.stdout + ping.stderr
        refused = subprocess.run(
            [check[0], "-p", str(port), *check[1:]],
            env={"PATH": env["PATH"]},
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert "NOAUTH" in refused.stdout + refused.stderr
    finally:
        proc.stop()
