"""Small helpers shared by integration tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from producer import JobRecord, VideoQueue

MP4_SAMPLE = Path(__file__).resolve().parents[2] / "simulator" / "assets" / "sample.mp4"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` until true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_status(vq: VideoQueue, job_id: str, statuses: set[str], timeout: float = 60) -> JobRecord:
    """Wait until the job is in one of `statuses` and return its record."""
    wait_for(lambda: vq.get(job_id).status.value in statuses, timeout, f"{job_id} in {statuses}")
    return vq.get(job_id)


def local_path(uri: str) -> Path:
    """The path of a file:// URI."""
    parts = urlsplit(uri)
    assert parts.scheme == "file", uri
    return Path(parts.path)


def assert_mp4(data: bytes) -> None:
    """The bytes are the simulator's MP4."""
    assert data[4:8] == b"ftyp", data[:16]
    assert data == MP4_SAMPLE.read_bytes()[: len(data)]


def read_manifest(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data
