"""`make redis`: make sure a Redis answers at REDIS_URL, read as every videoqueue process
reads it (the environment, then `.env`: videoqueue.settings). When nothing answers and the
URL names this machine, start `redis-server` on the URL's port; a URL naming another host
is refused (that Redis must be started where it runs).

    python -m simulator.localredis [--check]

Exit status: 0 Redis answers (or was started), 1 with --check: nothing answers but one
can be started here, 2 it cannot be (another host, bad settings, no redis-server)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis
from redis.exceptions import RedisError

from videoqueue.settings import InvalidSettingsError, load_settings

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PORT = 6379


class NotLocalError(ValueError):
    """The Redis URL names something `make redis` cannot start on this machine."""


@dataclass(frozen=True)
class LocalRedis:
    """Where a local Redis is to listen: host (always loopback), port and database."""

    host: str
    port: int
    db: int
    password: str | None = None

    def describe(self) -> str:
        """host:port/db, without the password."""
        return f"{self.host}:{self.port}/{self.db}"


def local_target(url: str) -> LocalRedis:
    """The loopback host, port and database of `url`; NotLocalError when `url` is not a
    plain redis:// URL on this machine (another host, TLS, a Unix socket)."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise NotLocalError(
            f"REDIS_URL uses {parts.scheme}://; only a plain redis:// URL on this machine can be started here"
        )
    host = parts.hostname or "127.0.0.1"
    if host not in LOCAL_HOSTS:
        raise NotLocalError(
            f"REDIS_URL names host {host}, not this machine: start that Redis where it runs, "
            "or point REDIS_URL at redis://127.0.0.1:PORT/DB"
        )
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise NotLocalError(f"REDIS_URL has no valid port: {exc}") from None
    path = parts.path.lstrip("/")
    if path and not path.isdigit():
        raise NotLocalError(f"REDIS_URL names database {path!r}; a number is expected")
    return LocalRedis(
        host="127.0.0.1" if host == "localhost" else host,
        port=port,
        db=int(path or 0),
        password=unquote(parts.password) if parts.password else None,
    )


def answers(url: str, timeout: float = 1.0) -> bool:
    """True if a Redis at `url` answers PING."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except (RedisError, OSError, ValueError):
        return False


def server_argv(target: LocalRedis, *, daemonize: bool) -> list[str]:
    """The `redis-server` command for `target`: loopback only, nothing saved to disk."""
    server = shutil.which("redis-server")
    if server is None:
        raise NotLocalError("redis-server is not installed (apt-get install redis-server, brew install redis)")
    argv = [server, "--bind", target.host, "--port", str(target.port), "--save", "", "--appendonly", "no"]
    if daemonize:
        argv += ["--daemonize", "yes"]
    if target.password:
        argv += ["--requirepass", target.password]
    return argv


def start(url: str, timeout: float = 10.0) -> LocalRedis:
    """Start a daemonized `redis-server` for `url` and wait until it answers."""
    target = local_target(url)
    subprocess.run(server_argv(target, daemonize=True), check=True, stdout=subprocess.DEVNULL)  # noqa: S603
    deadline = time.monotonic() + timeout
    while not answers(url):
        if time.monotonic() > deadline:
            raise NotLocalError(f"redis-server started on port {target.port} but does not answer")
        time.sleep(0.1)
    return target


def main(argv: list[str] | None = None) -> int:
    """`make redis`; see the module docstring for the exit status."""
    parser = argparse.ArgumentParser(prog="python -m simulator.localredis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only tell whether Redis answers or could be started")
    args = parser.parse_args(argv)
    try:
        url = load_settings().redis_url
        if answers(url):
            return 0
        target = local_target(url)
        if args.check:
            print(f"nothing answers at REDIS_URL ({target.describe()}); starting redis-server on port {target.port}")
            return 1
        start(url)
    except (InvalidSettingsError, NotLocalError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"redis-server started on {target.host}:{target.port} (stop it: redis-cli -p {target.port} shutdown nosave)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
