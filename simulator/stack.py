"""Run the whole system on one machine: the simulator, celery workers and an S3 server
(moto) as child processes. The demo, the integration tests and the benchmark use it, and
so can users who want to load-test a fleet without spending money."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Call `check` until it returns True; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:g} s")


def http_ok(url: str) -> bool:
    """True if GET `url` answers 2xx."""
    try:
        return httpx.get(url, timeout=1.0).is_success
    except httpx.HTTPError:
        return False


class ManagedProcess:
    """A child process with its output in a log file; stopped on `stop()`."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(  # noqa: S603 - argv is built here from fixed parts
            argv,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, not a shutdown)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it does not exit within `timeout`."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self._log.close()


def _python() -> str:
    return sys.executable


def _bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def start_simulator(
    port: int, log_dir: Path, extra_args: list[str] | None = None, env: Mapping[str, str] | None = None
) -> ManagedProcess:
    """Start `python -m simulator` on `port` and wait until it answers."""
    argv = [_python(), "-m", "simulator", "--host", "127.0.0.1", "--port", str(port), *(extra_args or [])]
    proc = ManagedProcess("simulator", argv, env or os.environ, log_dir / "simulator.log")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_sim/health") or not proc.alive(), 30, "simulator")
    if not proc.alive():
        raise RuntimeError(f"simulator exited:\n{proc.log_text()}")
    return proc


def start_moto(port: int, log_dir: Path) -> ManagedProcess:
    """Start moto's S3 server (`moto_server`) on `port` and wait until it answers."""
    argv = [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    proc = ManagedProcess("moto", argv, os.environ, log_dir / "moto.log")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/moto-api/") or not proc.alive(), 60, "moto server")
    if not proc.alive():
        raise RuntimeError(f"moto_server exited:\n{proc.log_text()}")
    return proc


def start_worker(
    name: str,
    env: Mapping[str, str],
    log_dir: Path,
    *,
    concurrency: int = 2,
    queues: list[str] | None = None,
    ready_timeout: float = 60.0,
    pool: str | None = None,
) -> ManagedProcess:
    """Start `celery -A worker worker` as node `name` and wait until it is ready; `pool` is
    Celery's --pool (prefork, threads, gevent...), Celery's default (prefork) if None."""
    argv = [
        _bin("celery"),
        "-A",
        "worker",
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        f"--hostname={name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if queues:
        argv.append(f"--queues={','.join(queues)}")
    if pool:
        argv.append(f"--pool={pool}")
    proc = ManagedProcess(name, argv, env, log_dir / f"{name}.log")
    wait_until(lambda: " ready." in proc.log_text() or not proc.alive(), ready_timeout, f"worker {name}")
    if not proc.alive():
        raise RuntimeError(f"worker {name} exited:\n{proc.log_text()[-4000:]}")
    return proc
