"""`make stack` (python -m simulator.devstack) keeps Redis, the simulator and a worker up
until stopped and prints what another shell must export; a job submitted there with the
real CLI is processed. Seen: after `make demo` nothing runs, and the README showed no way
to keep a local stack up."""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.localredis import answers
from simulator.stack import free_port
from videoqueue.settings import Settings, env_name

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("videoqueue"))


def _clean_env(**more: str) -> dict[str, str]:
    """The environment without any videoqueue setting (this shell's .env-free view)."""
    names = {env_name(n) for n in Settings.model_fields} | {"VQ_NAMESPACE", "ARK_API_KEY"}
    return {**{k: v for k, v in os.environ.items() if k.upper() not in names}, **more}


class Lines:
    """The stack's stdout, line by line, read on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def until(self, marker: str, timeout: float) -> list[str]:
        seen: list[str] = []
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                raise AssertionError("the stack exited before: " + marker + "\n" + "\n".join(seen))
            seen.append(line)
            if marker in line:
                return seen


@pytest.fixture
def stack_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines, str]]:
    redis_url = f"redis://127.0.0.1:{free_port()}/0"  # nothing answers there: the stack starts it
    env = _clean_env(REDIS_URL=redis_url, STORAGE_URL="file://./videos", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.devstack", "--sim-port", "0", "--latency", "1"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, Lines(proc), redis_url
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)  # each child leads its own process group (its pool children too)
    except ProcessLookupError:
        return True
    return False


def test_the_stack_processes_a_job_from_another_shell_and_stops_cleanly(
    stack_run: tuple[subprocess.Popen[str], Lines, str], tmp_path: Path
) -> None:
    proc, lines, redis_url = stack_run
    printed = lines.until("stack ready", timeout=180)
    exports = dict(
        shlex.split(line.strip().removeprefix("export "))[0].split("=", 1)
        for line in printed
        if line.strip().startswith("export ")
    )
    assert exports["REDIS_URL"] == redis_url
    assert exports["VQ_NAMESPACE"] == "dev"
    assert exports["STORAGE_URL"] == f"file://{(tmp_path / 'videos').resolve()}"  # absolute: any directory
    assert exports["BYTEPLUS_BASE_URL"].endswith("/api/v3")
    pids = dict(p.split("=") for p in next(line for line in printed if line.startswith("pids: ")).split()[1:])
    assert set(pids) == {"redis", "simulator", "stack-worker"}

    # Another shell: only what the stack printed, from another directory.
    shell = _clean_env(**exports)
    submitted = subprocess.run(
        [CLI, "submit", "a fox from another shell"], env=shell, capture_output=True, text=True, timeout=60, check=False
    )
    assert submitted.returncode == 0, submitted.stderr
    assert "warning" not in submitted.stderr  # the stack's worker consumes the queue
    job_id = submitted.stdout.strip()
    waited = subprocess.run(
        [CLI, "wait", job_id, "--timeout", "120"], env=shell, capture_output=True, text=True, timeout=180, check=False
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert (tmp_path / "videos" / f"{job_id}.mp4").exists()

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, proc.stderr.read() if proc.stderr else ""
    assert all(_gone(int(pid)) for pid in pids.values())
    assert not answers(redis_url)  # the Redis it started stopped with it


def test_a_child_that_dies_stops_the_stack_and_says_which(stack_run: tuple[subprocess.Popen[str], Lines, str]) -> None:
    proc, lines, _ = stack_run
    printed = lines.until("stack ready", timeout=180)
    pids = dict(p.split("=") for p in next(line for line in printed if line.startswith("pids: ")).split()[1:])
    os.killpg(int(pids["simulator"]), signal.SIGKILL)
    assert proc.wait(90) == 1
    assert proc.stderr is not None
    assert "error: simulator exited" in proc.stderr.read()
    assert all(_gone(int(pid)) for pid in pids.values())
