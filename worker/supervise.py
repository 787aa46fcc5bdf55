"""Keep a worker running on a host without a process manager (`make worker`): run a command,
start it again whenever it exits, with a growing pause between quick exits, until stopped.

    python -m worker.supervise [--backoff-min S] [--backoff-max S] -- celery -A worker worker ...

Signals: SIGINT (Ctrl-C), SIGTERM and SIGQUIT stop the loop and are passed to the worker
once each, so Celery does what it does with them (SIGTERM or a first Ctrl-C: warm shutdown,
running tasks finish; a second Ctrl-C or SIGQUIT: cold shutdown); the loop then exits with
the worker's exit status. The worker runs in a session of its own so that a Ctrl-C in the
terminal reaches it only through here, once, not twice.

The pause after an exit starts at `--backoff-min` seconds and doubles after each further
exit up to `--backoff-max`; a worker that ran `--stable-after` seconds starts the count
again. Exit status 2 (the worker's settings are unusable: videoqueue prints which) and 64
(EX_USAGE: a bad command line) end the loop, since starting again cannot mend them.

Under systemd, Kubernetes or docker compose (`restart: unless-stopped`) the platform
restarts workers itself: run `celery -A worker worker` there, not this.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import TextIO

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)
# Exits a restart cannot mend: videoqueue's unusable settings (worker/app.py) and EX_USAGE.
NO_RESTART_CODES = frozenset({2, 64})
POLL_S = 0.1


def next_delay(delay: float, backoff_max: float) -> float:
    """The pause after the next quick exit, in seconds: `delay` doubled, at most `backoff_max`."""
    return min(delay * 2, backoff_max)


def describe_exit(code: int) -> str:
    """`code` as Popen reports it (negative: killed by that signal) in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class Supervisor:
    """Runs `argv` again and again until a stop signal (see the module docstring).

    `backoff_min`, `backoff_max` and `stable_after` are seconds; `out` receives one line per
    start, exit and stop."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        backoff_min: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 60.0,
        out: TextIO = sys.stderr,
    ) -> None:
        if not argv:
            raise ValueError("no command to supervise")
        if not 0 < backoff_min <= backoff_max:
            raise ValueError("need 0 < backoff_min <= backoff_max")
        self.argv = list(argv)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.out = out
        self.child: subprocess.Popen[bytes] | None = None
        self.child_signalled = False
        self.stop_signal: int | None = None

    def say(self, text: str) -> None:
        print(f"supervise: {text}", file=self.out, flush=True)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """Stop the loop; pass the signal to the worker, which decides how to shut down."""
        self.stop_signal = signum
        if self.child is not None and self.child.poll() is None:
            os.kill(self.child.pid, signum)
            self.child_signalled = True

    def run(self) -> int:
        """Supervise until stopped; the worker's last exit status (128 + N if signal N
        killed it), or 0 when stopped between two runs."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_signal)
        delay = self.backoff_min
        while True:
            started = time.monotonic()
            self.child_signalled = False
            self.child = subprocess.Popen(self.argv, start_new_session=True)  # noqa: S603 - the operator's command
            self.say(f"worker started (pid {self.child.pid}; this loop: pid {os.getpid()})")
            if self.stop_signal is not None and not self.child_signalled:  # it came during the start
                os.kill(self.child.pid, self.stop_signal)
            code = self.child.wait()
            ran = time.monotonic() - started
            status = code if code >= 0 else 128 - code
            if self.stop_signal is not None:
                self.say(
                    f"stopped by {signal.Signals(self.stop_signal).name}; the worker ended ({describe_exit(code)})"
                )
                return status
            if code in NO_RESTART_CODES:
                self.say(f"worker ended ({describe_exit(code)}): a restart cannot mend that, not restarting")
                return status
            if ran >= self.stable_after:
                delay = self.backoff_min
            self.say(f"worker ended ({describe_exit(code)}) after {ran:.1f} s; restarting in {delay:g} s")
            if self.pause(delay):
                self.say(f"stopped by {signal.Signals(self.stop_signal or signal.SIGTERM).name} before the restart")
                return 0
            delay = next_delay(delay, self.backoff_max)

    def pause(self, seconds: float) -> bool:
        """Wait `seconds`; True as soon as a stop signal came."""
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return self.stop_signal is not None


def main(args: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.supervise",
        description="Run a worker command, restarting it whenever it exits, until SIGINT/SIGTERM.",
    )
    parser.add_argument("--backoff-min", type=float, default=1.0, help="first pause after an exit, s (1)")
    parser.add_argument("--backoff-max", type=float, default=60.0, help="longest pause, s (60)")
    parser.add_argument(
        "--stable-after", type=float, default=60.0, help="a run this long resets the pause to the first, s (60)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command, e.g. celery -A worker worker")
    options = parser.parse_args(args)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    try:
        supervisor = Supervisor(
            command,
            backoff_min=options.backoff_min,
            backoff_max=options.backoff_max,
            stable_after=options.stable_after,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
