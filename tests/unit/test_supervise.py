"""worker/supervise.py, the loop of `make worker`, around short Python commands."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from collections.abc import Iterator

import pytest

from worker.supervise import STOP_SIGNALS, Supervisor, describe_exit, main, next_delay


@pytest.fixture(autouse=True)
def _restore_signal_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def exits_with(code: int) -> list[str]:
    return [sys.executable, "-c", f"raise SystemExit({code})"]


def test_the_pause_doubles_up_to_the_longest() -> None:
    delays = [0.5]
    for _ in range(5):
        delays.append(next_delay(delays[-1], 3.0))
    assert delays == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_exits_in_words() -> None:
    assert describe_exit(0) == "exit status 0"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"


def test_a_worker_that_keeps_exiting_is_started_again_with_growing_pauses_until_sigterm() -> None:
    out = io.StringIO()
    supervisor = Supervisor(exits_with(1), backoff_min=0.05, backoff_max=0.2, out=out)
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        status = supervisor.run()
    finally:
        timer.cancel()
    lines = out.getvalue().splitlines()
    starts = [line for line in lines if "worker started" in line]
    # Stopped during a pause (0), while the last run was ending (its 1), or while a run was
    # still starting: the signal, passed on, then ends the worker (128 + SIGTERM).
    assert status in (0, 1, 128 + signal.SIGTERM)
    assert len(starts) >= 3
    assert "restarting in 0.05 s" in lines[1] and "restarting in 0.1 s" in lines[3]
    assert any("restarting in 0.2 s" in line for line in lines)
    assert "stopped by SIGTERM" in lines[-1]


@pytest.mark.parametrize("code", [2, 64])
def test_exits_a_restart_cannot_mend_end_the_loop(code: int) -> None:
    out = io.StringIO()
    assert Supervisor(exits_with(code), backoff_min=0.05, out=out).run() == code
    assert out.getvalue().count("worker started") == 1
    assert "not restarting" in out.getvalue()


def test_the_command_line_needs_a_command_and_sane_pauses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--"])
    assert "no command to supervise" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--backoff-min", "5", "--backoff-max", "1", "--", "true"])
    assert "backoff_min <= backoff_max" in capsys.readouterr().err
