"""Flower tells about jobs: every task with its job id as the argument and where the job
stands (status, next step, cost) as its result; the step that ended a job failed or
expired is a FAILURE task with the job's error, counted once in Flower's Failed tile.
Flower runs as a real process, started the way the README and the compose file start it,
behind their login, next to a real worker and the simulator."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import VideoRequest
from simulator.stack import ManagedProcess, free_port, http_ok, wait_until
from tests.integration.conftest import REDIS_URL, UNACKED, Stack
from tests.integration.helpers import wait_for
from tests.unit.test_deploy_files import COMPOSE, ROOT, as_argv, compose_command
from videoqueue.job import JobRecord, JobStatus

pytestmark = pytest.mark.integration

CELERY = str(Path(sys.executable).with_name("celery"))
Task = dict[str, Any]


def readme_flower_argv() -> list[str]:
    """The README's Flower command line, as written."""
    lines = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("celery -A worker flower")
    ]
    assert len(lines) == 1, lines
    return shlex.split(lines[0], comments=True)


def on_port(argv: list[str], port: int, db: Path | None = None) -> list[str]:
    """`argv` with its own celery, a free port instead of 5555, a file of the test's as
    --db, and bound to 127.0.0.1."""
    replaced = {"--port": f"--port={port}", "--db": f"--db={db}"}
    out = [CELERY if arg == "celery" else replaced.get(arg.split("=")[0], arg) for arg in argv]
    assert f"--port={port}" in out
    return out if "--address=127.0.0.1" in out else [*out, "--address=127.0.0.1"]


class Flower:
    """A running Flower's HTTP API, with the login it was started with."""

    def __init__(self, port: int, auth: tuple[str, str]) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.auth = auth

    def get(self, path: str, auth: tuple[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{self.base}{path}", auth=auth or self.auth, timeout=10)

    def tasks(self) -> list[Task]:
        response = self.get("/api/tasks")
        response.raise_for_status()
        tasks: dict[str, Task] = response.json()
        return list(tasks.values())

    def of_job(self, job_id: str) -> list[Task]:
        return [task for task in self.tasks() if task.get("args") and job_id in str(task["args"])]

    def failed_count(self) -> int:
        """The sum of the Failed tile over every worker."""
        workers = self.get("/workers?json=1").json()["data"]
        return sum(int(worker.get("task-failed", 0)) for worker in workers)


@contextmanager
def flower(argv: list[str], env: Mapping[str, str], log: Path, auth: tuple[str, str], port: int) -> Iterator[Flower]:
    env = {name: value for name, value in env.items() if name != "FLOWER_UNAUTHENTICATED_API"}
    proc = ManagedProcess("flower", argv, env, log)
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck") or not proc.alive(), 60, "flower")
        assert proc.alive(), proc.log_text()[-3000:]
        assert auth[1] not in " ".join(argv), "the password is never on the command line"
        yield Flower(port, auth)
    finally:
        proc.stop()


def run_jobs(stack: Stack) -> tuple[JobRecord, JobRecord]:
    """One job that succeeds and one the simulator fails (content filter), both final."""
    vq = stack.queue()
    good = vq.submit(VideoRequest(prompt="a fox seen by flower")).id
    bad = vq.submit(VideoRequest(prompt="a fox seen by flower [sim:fail] [sim:latency=0.5]")).id
    done = {job.id: job for job in vq.wait([good, bad], timeout=90)}
    assert done[good].status is JobStatus.SUCCEEDED, done[good]
    assert done[bad].status is JobStatus.FAILED and done[bad].error is not None, done[bad]
    return done[good], done[bad]


def assert_failure_shown(api: Flower, stack: Stack, job: JobRecord) -> None:
    """The task that ended the job is FAILURE with the job's error; its others succeeded."""
    assert job.error is not None
    wait_for(lambda: any(t["state"] == "FAILURE" for t in api.of_job(job.id)), 30, "the failed task in flower")
    tasks = api.of_job(job.id)
    failures = [t for t in tasks if t["state"] == "FAILURE"]
    assert len(failures) == 1, tasks
    assert job.error.code.value in str(failures[0]["exception"]), failures[0]
    assert "JobFailed" in str(failures[0]["exception"])
    assert all(t["state"] == "SUCCESS" for t in tasks if t is not failures[0]), tasks
    # Acknowledged (before the task-failed event is sent), never to be delivered again.
    held: list[str] = stack.redis.hvals(UNACKED)  # type: ignore[assignment]
    assert not [message for message in held if job.id in message]
    # One INFO line for the expected end, no ERROR and no traceback in the worker's log.
    log = "\n".join(worker.log_text() for worker in stack.workers)
    assert log.count(f"raised expected: JobFailed('job {job.id} ") == 1, log[-3000:]
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]


def test_flower_as_the_readme_starts_it_shows_job_status_cost_and_failures(local_stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    auth = ("ops", uuid.uuid4().hex)
    env = local_stack.env(FLOWER_BASIC_AUTH=":".join(auth))
    with flower(on_port(readme_flower_argv(), port), env, local_stack.log_dir / "flower-readme.log", auth, port) as api:
        assert api.get("/api/tasks", auth=("ops", "wrong")).status_code == 401
        assert httpx.get(f"{api.base}/api/tasks", timeout=10).status_code == 401
        local_stack.start_worker()
        good, bad = run_jobs(local_stack)

        assert_failure_shown(api, local_stack, bad)
        assert api.failed_count() == 1, "Flower's Failed tile counts the failed job once"

        wait_for(
            lambda: any(t["name"] == "videoqueue.store" and t.get("result") for t in api.of_job(good.id)),
            30,
            "the store task in flower",
        )
        tasks = api.of_job(good.id)
        assert {t["name"] for t in tasks} >= {"videoqueue.submit", "videoqueue.poll", "videoqueue.store"}
        for task in tasks:
            assert task["state"] == "SUCCESS", task
            assert f"'job_id': '{good.id}'" in task["result"] and "'status': " in task["result"]
            assert "'next': " in task["result"] and "'estimate_usd': " in task["result"]
        store = next(t for t in tasks if t["name"] == "videoqueue.store")
        assert "'status': 'succeeded'" in store["result"] and "'next': None" in store["result"]
        assert f"'cost_usd': '{good.charged_usd}'" in store["result"]
        assert str(good.provider_task_id) in store["result"]
        assert any("'next': 'poll'" in t["result"] for t in tasks if t["name"] == "videoqueue.submit")
        assert "fox" not in json.dumps(api.tasks()), "no prompt reaches Flower"


REDIS_PASSWORD = uuid.uuid4().hex


def compose_flower(password: str) -> tuple[list[str], dict[str, str]]:
    """The compose file's Flower service, command and environment as `docker compose
    config` resolves them with FLOWER_BASIC_AUTH=ops:<password> (and REDIS_PASSWORD) in the
    environment."""
    command = compose_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed (set VQ_DOCKER_COMPOSE to its binary)")
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": f"ops:{password}",
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "MINIO_ROOT_USER": "videoqueue",
        "MINIO_ROOT_PASSWORD": uuid.uuid4().hex,
    }
    result = subprocess.run(
        [*command, "--env-file", os.devnull, "-f", str(COMPOSE), "config", "--format", "json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    service = json.loads(result.stdout)["services"]["flower"]
    return as_argv(service["command"]), {name: str(value) for name, value in service["environment"].items()}


def test_the_compose_flower_service_answers_its_api_with_the_compose_login(local_stack: Stack, tmp_path: Path) -> None:
    password = uuid.uuid4().hex
    argv, compose_env = compose_flower(password)
    assert compose_env["FLOWER_BASIC_AUTH"] == f"ops:{password}"
    port = free_port()
    # The service's environment, with the test's Redis for the stack's.
    assert compose_env["REDIS_URL"] == f"redis://:{REDIS_PASSWORD}@redis:6379/0"
    assert REDIS_PASSWORD not in " ".join(argv), "Flower's command line holds no Redis password"
    env = {**os.environ, **compose_env, "REDIS_URL": REDIS_URL}
    auth = ("ops", password)
    log = local_stack.log_dir / "flower-compose.log"
    with flower(on_port(argv, port, tmp_path / "flower.db"), env, log, auth, port) as api:
        assert httpx.get(f"{api.base}/api/tasks", timeout=10).status_code == 401
        page = api.get("/tasks")
        assert page.status_code == 200
        for column in ("args", "result", "exception"):
            assert f'data-column="{column}"' in page.text, f"the tasks page shows {column}"
        local_stack.start_worker()
        _, bad = run_jobs(local_stack)
        # A job still queued at the provider at its deadline: cancelled there, `expired`.
        vq = local_stack.queue(job_deadline_s=4.0)
        held = vq.wait([vq.submit(VideoRequest(prompt="never starts [sim:hold]")).id], timeout=60)[0]
        assert held.status is JobStatus.EXPIRED, held
        assert_failure_shown(api, local_stack, bad)
        assert_failure_shown(api, local_stack, held)
        assert api.failed_count() == 2, "Flower's Failed tile counts each failed or expired job once"
