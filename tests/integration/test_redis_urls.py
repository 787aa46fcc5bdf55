"""REDIS_URLs that name something that is not there: one line and exit 2, never a hang or an
"unexpected" error. Seen in a user test: `rediss://` pointed at a plain Redis hung `jobs`
until killed; database 99 and port 99999 gave "unexpected ResponseError/ValueError"."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conftest import REDIS_URL

CLI = "videoqueue"
_SERVER = urlsplit(REDIS_URL)


def _jobs(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": url}
    # The timeout only stops a hang from stopping the suite; the point is that it is not reached.
    return subprocess.run([CLI, "jobs"], env=env, cwd=cwd, capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            f"rediss://{_SERVER.hostname}:{_SERVER.port}/0",
            "rediss:// needs a server that speaks TLS on that port; for a plain one use redis://",
        ),
        (f"redis://{_SERVER.hostname}:{_SERVER.port}/99", "has no such database"),
        (f"redis://{_SERVER.hostname}:99999/0", "REDIS_URL names a port that is not a number from 1 to 65535"),
        (f"redis://{_SERVER.hostname}:{_SERVER.port}/x", "REDIS_URL names database 'x'"),
    ],
    ids=["tls-to-plain", "db-out-of-range", "port-out-of-range", "db-not-a-number"],
)
def test_a_redis_url_naming_what_is_not_there_is_one_line(url: str, says: str, tmp_path: Path) -> None:
    result = _jobs(url, tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert says in lines[0] and "unexpected" not in lines[0] and "Traceback" not in result.stderr
