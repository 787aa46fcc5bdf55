"""`make worker` (worker/supervise.py around `celery -A worker worker`) starts a worker again
when it exits, and SIGTERM to the loop, or a Ctrl-C in its terminal (SIGINT to make and the
loop), ends it with the worker's warm shutdown."""

from __future__ import annotations

import os
import re
import shutil
import signal
import uuid
from pathlib import Path

import pytest

from simulator.stack import ManagedProcess, wait_until
from tests.integration.conftest import Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"supervise: worker started \(pid (\d+); this loop: pid (\d+)\)")


def started(log: str) -> list[tuple[int, int]]:
    """(worker pid, loop pid) of each start the loop reported."""
    return [(int(w), int(s)) for w, s in STARTED.findall(log)]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_make_worker_restarts_a_worker_that_exited_and_a_signal_stops_it(
    stop: str, local_stack: Stack, log_dir: Path
) -> None:
    name = f"supervised-{uuid.uuid4().hex[:6]}"
    args = f"--pool=threads --concurrency=2 --hostname={name}@%h --without-gossip --without-mingle"
    make = ManagedProcess(
        "make-worker",
        ["make", "-C", str(ROOT), "--no-print-directory", "worker", f"WORKER_ARGS={args}"],
        local_stack.env(),
        log_dir / f"{name}.log",
    )
    try:
        wait_until(lambda: " ready." in make.log_text() or not make.alive(), 90, "the first worker")
        assert make.alive(), make.log_text()[-3000:]
        [(first, loop)] = started(make.log_text())

        os.killpg(first, signal.SIGKILL)  # the worker and its pool, as the OOM killer would
        wait_until(lambda: len(started(make.log_text())) == 2 or not make.alive(), 60, "a new worker")
        assert make.alive(), make.log_text()[-3000:]
        second, same_loop = started(make.log_text())[1]
        assert "worker ended (killed by SIGKILL)" in make.log_text()
        assert second != first and same_loop == loop and gone(first)
        wait_until(lambda: make.log_text().count(" ready.") == 2, 90, "the new worker ready")

        if stop == "SIGTERM":
            os.kill(loop, signal.SIGTERM)
        else:  # the terminal signals its foreground process group: make and the loop, not the worker
            os.killpg(make.proc.pid, signal.SIGINT)
        make.proc.wait(60)
        log = make.log_text()
    finally:
        make.stop()
    if stop == "SIGTERM":
        assert "supervise: stopped by SIGTERM; the worker ended (exit status 0)" in log, log[-3000:]
        assert make.proc.returncode == 0, log[-3000:]
    else:  # Celery's status after a Ctrl-C, and make's report of it
        assert "supervise: stopped by SIGINT; the worker ended (exit status 1)" in log, log[-3000:]
    assert "Cold shutdown" not in log  # the worker got the signal once
    assert "Warm shutdown" in log.split("supervise: worker started")[-1]  # Celery's, for the signal
    assert gone(second)
    assert len(started(log)) == 2  # not started again after the stop
