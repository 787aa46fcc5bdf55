"""Small helpers shared by integration tests."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from producer import JobRecord, JobStatus, VideoQueue
from simulator.clips import Shape, clip, variant_of
from simulator.mp4 import video_size
from videoqueue.jobstore import JobStore

MP4_SAMPLE = Path(__file__).resolve().parents[2] / "simulator" / "assets" / "sample.mp4"


def served_video(job: JobRecord) -> bytes:
    """The clip the simulator serves for `job`'s task (simulator/clips.py), unpadded."""
    assert job.provider_task_id is not None, job.id
    task_id = job.provider_task_id.rpartition("/")[2]  # a Veo operation: its id
    return clip(Shape(job.request.duration, job.request.ratio), variant_of(task_id))


def served_size(job: JobRecord, pad_bytes: int = 0) -> int:
    """The size of the video the simulator serves for `job` with `pad_bytes` of padding."""
    return video_size(pad_bytes, Shape(job.request.duration, job.request.ratio))


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


def assert_mp4(data: bytes, job: JobRecord | None = None) -> None:
    """The bytes are an MP4 (the start of one); with `job`, the start of the video the
    simulator served for it."""
    assert data[4:8] == b"ftyp", data[:16]
    if job is not None:
        assert data == served_video(job)[: len(data)]


def read_manifest(path: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads(path.read_text())
    return data


def wait_final(
    store: JobStore, job_ids: Sequence[str], timeout: float, *, between: Callable[[], None] | None = None
) -> list[JobRecord | None]:
    """The jobs' records (None where unknown) once every one is final, or as they are after
    `timeout` seconds: the caller's checks say which did not finish. `between` runs before
    each second look (a run that replaces a dead worker)."""
    deadline = time.monotonic() + timeout
    records = store.get_many(job_ids)
    while time.monotonic() < deadline and not all(r is not None and r.status.is_final for r in records):
        if between is not None:
            between()
        time.sleep(1.0)
        records = store.get_many(job_ids)
    return records


def visible_files(folder: Path) -> set[str]:
    """The names in `folder` that are not hidden (a transfer in progress is a dot file)."""
    return {n for n in os.listdir(folder) if not n.startswith(".")} if folder.is_dir() else set()


def assert_each_job_once(
    records: Mapping[str, JobRecord],
    prompts: Sequence[str],
    creates_by_prompt: Mapping[str, int],
    creates_total: int,
    ledger: Counter[str],
    folder: Path,
    video_bytes: int,
) -> None:
    """What a reliability run (one job per prompt, into a local folder) must leave: every job
    final and succeeded, created exactly once at the provider (`creates_by_prompt` and
    `creates_total` as the simulator counted them), one ledger entry each, and in
    `folder` one `<id>.mp4` of `video_bytes` and one `<id>.json` per job, nothing else."""
    assert len(records) == len(prompts), "job records lost"
    unfinished = {j: (r.status, r.recoveries, r.next_due_at) for j, r in records.items() if not r.status.is_final}
    assert not unfinished, f"jobs never finished: {unfinished}"
    failed = {j: (r.status, r.error) for j, r in records.items() if r.status is not JobStatus.SUCCEEDED}
    assert not failed, failed
    creates = {p: creates_by_prompt.get(p, 0) for p in prompts}
    assert {p: n for p, n in creates.items() if n != 1} == {}, "jobs not created exactly once at the provider"
    assert creates_total == len(prompts)
    assert {j: ledger[j] for j in records if ledger[j] != 1} == {}, "ledger entries per job"
    assert sum(ledger.values()) == len(records)
    assert visible_files(folder) == {f"{j}.{ext}" for j in records for ext in ("mp4", "json")}
    assert {(folder / f"{j}.mp4").stat().st_size for j in records} == {video_bytes}


def redis_value(client: Any, key: bytes) -> tuple[str, Any] | None:
    """The type of `key` and its whole value, read by type (not DUMP, whose bytes differ
    with encoding details): a string's bytes, a hash's sorted (field, value) pairs, a list's
    items, a set's sorted members, a sorted set's (member, score) pairs, a stream's
    (id, sorted fields) entries. None when the key is gone; AssertionError for another type."""
    kind = client.type(key).decode()
    if kind == "string":
        return kind, client.get(key)
    if kind == "hash":
        return kind, tuple(sorted(client.hgetall(key).items()))
    if kind == "list":
        return kind, tuple(client.lrange(key, 0, -1))
    if kind == "set":
        return kind, tuple(sorted(client.smembers(key)))
    if kind == "zset":
        return kind, tuple(client.zrange(key, 0, -1, withscores=True))
    if kind == "stream":
        return kind, tuple((entry_id, tuple(sorted(fields.items()))) for entry_id, fields in client.xrange(key))
    if kind == "none":  # expired or deleted since it was listed
        return None
    raise AssertionError(f"unexpected Redis type {kind} of {key!r}")
