"""`make redis` starts Redis on the port REDIS_URL names, read from the environment or
from `.env` (seen: it always started 6379 and read no `.env`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from simulator.localredis import answers
from simulator.stack import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed"),
]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def spare_url() -> Iterator[str]:
    url = f"redis://127.0.0.1:{free_port()}/3"
    yield url
    if answers(url):
        redis.Redis.from_url(url).shutdown(nosave=True)


def _env(**more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return {**env, **more}


def test_make_redis_starts_redis_on_the_port_of_redis_url(spare_url: str) -> None:
    assert not answers(spare_url)
    done = subprocess.run(
        ["make", "--no-print-directory", "redis"],
        cwd=ROOT,
        env=_env(REDIS_URL=spare_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert answers(spare_url)
    assert redis.Redis.from_url(spare_url).set("vq:test:probe", "1")  # database 3 of that server

    again = subprocess.run(
        ["make", "--no-print-directory", "redis"],
        cwd=ROOT,
        env=_env(REDIS_URL=spare_url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0 and "started" not in again.stdout  # it answers: nothing started


def test_make_redis_reads_redis_url_from_dot_env(spare_url: str, tmp_path: Path) -> None:
    # What `make redis` runs, in a directory whose .env names the URL (the environment has none).
    (tmp_path / ".env").write_text(f"REDIS_URL={spare_url}\n")
    done = subprocess.run(
        [sys.executable, "-m", "simulator.localredis"],
        cwd=tmp_path,
        env=_env(PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert answers(spare_url)


def test_make_redis_refuses_a_remote_host_in_one_line() -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", "redis"],
        cwd=ROOT,
        env=_env(REDIS_URL="redis://redis.invalid:6379/0"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "error: REDIS_URL names host redis.invalid, not this machine" in done.stderr
    assert "Traceback" not in done.stderr
