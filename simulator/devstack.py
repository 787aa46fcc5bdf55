"""`make stack`: a local videoqueue that stays up until stopped: Redis (started when nothing
answers at REDIS_URL, on its port), the provider simulator and a worker, in a deployment
namespace of their own (`dev`). It prints what to export in another shell, so that
`videoqueue submit ...` there is processed here.

    python -m simulator.devstack [--sim-port 8000] [--namespace dev] [--real]

Ctrl-C or SIGTERM stops every child it started (the Redis it started too) and exits 0. A
child that dies is not restarted: the stack says which one, with the end of its log, stops
the others and exits 1 (a child that died once, of a taken port or a bad setting, would die
again, and a restart loop would hide why). Settings come from the environment and `.env`,
as for every videoqueue process; logs go to .run/stack/.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

from simulator.localredis import NotLocalError, answers, local_target, server_argv
from simulator.stack import ManagedProcess, free_port, start_simulator, start_worker, wait_until
from videoqueue.settings import InvalidSettingsError, Settings, load_settings

RUN_DIR = Path(".run") / "stack"
DEFAULT_NAMESPACE = "dev"
SIM_BYTEPLUS_KEY = "dev-simulator-key"
SIM_GOOGLE_KEY = "dev-simulator-google-key"
READY = "stack ready"


class StackError(RuntimeError):
    """The stack cannot start; the message is one line for people."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m simulator.devstack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sim-port", type=int, default=8000, help="simulator port (0: any free port)")
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="deployment namespace (VQ_NAMESPACE)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker pool size")
    parser.add_argument("--latency", type=float, default=6.0, help="seconds a simulated render takes")
    parser.add_argument(
        "--real",
        action="store_true",
        help="no simulator: the worker uses the provider keys and endpoints of your settings (costs money)",
    )
    return parser.parse_args(argv)


def absolute_storage_url(url: str, cwd: Path) -> str:
    """`url` with a relative file:// path made absolute against `cwd`, so a shell in another
    directory names the same folder."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return url
    path = Path(parts.netloc + parts.path)
    if path.is_absolute():
        return url
    return urlunsplit(("file", "", str((cwd / path).resolve()), "", ""))


def exports_for(settings: Settings, namespace: str, sim_url: str | None, cwd: Path) -> dict[str, str]:
    """What another shell must export to use this stack: REDIS_URL, VQ_NAMESPACE, storage
    and, with the simulator, its endpoints and (dummy) keys. Never a real secret."""
    exports = {
        "REDIS_URL": settings.redis_url,
        "VQ_NAMESPACE": namespace,
        "STORAGE_URL": absolute_storage_url(settings.storage_url, cwd),
    }
    if settings.broker_url:
        exports["BROKER_URL"] = settings.broker_url
    if settings.s3_endpoint_url:
        exports["S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if sim_url is not None:
        exports |= {
            "BYTEPLUS_BASE_URL": f"{sim_url}/api/v3",
            "BYTEPLUS_API_KEY": SIM_BYTEPLUS_KEY,
            "VEO_BASE_URL": f"{sim_url}/",
            "GOOGLE_API_KEY": SIM_GOOGLE_KEY,
            # The simulator serves stand-in images on loopback, which the URL guard refuses
            # unless trusted: this exact host:port only.
            "FETCH_ALLOW_HOSTS": urlsplit(sim_url).netloc,
        }
    return exports


def _shown(name: str, value: str) -> str:
    """An export line; a password in a URL is masked (the other shell has it in its .env)."""
    parts = urlsplit(value)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@")
        value = urlunsplit(parts._replace(netloc=netloc))
        return f"export {name}={shlex.quote(value)}   # password masked: use yours"
    return f"export {name}={shlex.quote(value)}"


class DevStack:
    """The children of one `make stack`, started in order and stopped in reverse."""

    def __init__(self) -> None:
        self.children: list[ManagedProcess] = []

    def start_redis(self, url: str) -> str:
        """Start redis-server for `url` unless one answers; returns what happened, for people."""
        if answers(url):
            return "already running"
        try:
            target = local_target(url)
            argv = server_argv(target, daemonize=False)
        except NotLocalError as exc:
            raise StackError(str(exc)) from None
        proc = ManagedProcess("redis", argv, os.environ, RUN_DIR / "redis.log")
        self.children.append(proc)
        wait_until(lambda: answers(url) or not proc.alive(), 15, "redis-server")
        if not proc.alive():
            raise StackError(f"redis-server did not start on port {target.port}; see {proc.log_path}")
        return f"started on port {target.port} (stops with the stack)"

    def start_simulator(self, port: int, latency: float) -> str:
        """Start the simulator; returns its base URL."""
        port = port or free_port()
        env = {**os.environ, "SIM_API_KEY": SIM_BYTEPLUS_KEY, "SIM_GOOGLE_API_KEY": SIM_GOOGLE_KEY}
        try:
            proc = start_simulator(port, RUN_DIR, ["--latency", str(latency), "--latency-jitter", "2"], env=env)
        except (RuntimeError, TimeoutError):
            raise StackError(
                f"the simulator did not start on port {port} (in use? --sim-port 0 picks a free one); "
                f"see {RUN_DIR / 'simulator.log'}"
            ) from None
        self.children.append(proc)
        return f"http://127.0.0.1:{port}"

    def start_worker(self, env: dict[str, str], concurrency: int) -> None:
        """Start the worker, all queues."""
        try:
            self.children.append(start_worker("stack-worker", env, RUN_DIR, concurrency=concurrency))
        except (RuntimeError, TimeoutError):
            raise StackError(f"the worker did not start; see {RUN_DIR / 'stack-worker.log'}") from None

    def dead(self) -> ManagedProcess | None:
        """The first child that is no longer running, if any."""
        return next((c for c in self.children if not c.alive()), None)

    def stop(self) -> None:
        """Stop every child, the last started first."""
        for child in reversed(self.children):
            child.stop()


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the stack until SIGINT/SIGTERM (exit 0) or until a child dies (exit 1); 2 when
    it cannot start."""
    args = _parse(argv)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = DevStack()
    try:
        settings = load_settings()
        redis_state = stack.start_redis(settings.redis_url)
        sim_url = None if args.real else stack.start_simulator(args.sim_port, args.latency)
        exports = exports_for(settings, args.namespace, sim_url, Path.cwd())
        worker_env = {**os.environ, **exports}
        if sim_url is not None:
            # Simulated renders take seconds: poll accordingly (as `make demo` does).
            worker_env |= {"POLL_INITIAL_S": "2", "POLL_MIN_S": "1", "POLL_MAX_S": "3"}
        stack.start_worker(worker_env, args.concurrency)
    except (InvalidSettingsError, StackError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        stack.stop()
        return 2

    target = urlsplit(settings.redis_url)
    _say(f"videoqueue stack up, namespace {args.namespace}; logs in {RUN_DIR}/")
    _say(f"  Redis     {target.hostname}:{target.port or 6379}{target.path or '/0'}: {redis_state}")
    _say(f"  provider  {'the simulator at ' + sim_url if sim_url else 'your settings (real cost)'}")
    _say(f"  storage   {exports['STORAGE_URL']}")
    _say("  worker    stack-worker, all queues")
    _say("In another shell:")
    for name, value in exports.items():
        _say("  " + _shown(name, value))
    _say('  videoqueue submit "a red fox trotting through snow"   # prints JOB_ID')
    _say("  videoqueue wait JOB_ID && videoqueue status JOB_ID")
    _say("pids: " + " ".join(f"{c.name}={c.proc.pid}" for c in stack.children))
    _say(f"{READY}; Ctrl-C stops it")

    code = 0
    while not stopping.wait(1.0):
        dead = stack.dead()
        if dead is not None:
            tail = "\n".join(dead.log_text().splitlines()[-15:])
            sys.stderr.write(
                f"error: {dead.name} exited (status {dead.proc.returncode}); stopping the stack. "
                f"Last lines of {dead.log_path}:\n{tail}\n"
            )
            code = 1
            break
    _say("stopping the stack ...")
    stack.stop()
    _say("stack stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
