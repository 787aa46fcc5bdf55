"""Input images in object storage (videoqueue.inputs): the record's reference, the
producer's errors, and the release after the final move. fakeredis and a local folder;
the broker message is the one thing left out (`_send` records what it would send)."""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from producer import Settings, VideoQueue, VideoRequest
from tests.unit.helpers import walk_to
from videoqueue import inputs, keys
from videoqueue.errors import StorageError
from videoqueue.images import ImageFile
from videoqueue.job import JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.resolved import ImageUpload
from videoqueue.storedform import with_long_names
from worker.inputs import StorageInputs

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64
JPEG = b"\xff\xd8\xff" + b"\x02" * 64


@pytest.fixture
def redis_client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def _queue(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, root: Path, storage: inputs.InputStorage | None = None
) -> tuple[VideoQueue, list[str]]:
    settings = Settings(_env_file=None, storage_url=f"file://{root}", check_image_urls=False)
    vq = VideoQueue(settings, store=JobStore(redis_client), input_storage=storage)
    sent: list[str] = []
    monkeypatch.setattr(vq, "_send", lambda records: sent.extend(r.id for r in records))
    return vq, sent


def _images(tmp_path: Path) -> tuple[Path, Path]:
    first, last = tmp_path / "first.png", tmp_path / "last.jpg"
    first.write_bytes(PNG)
    last.write_bytes(JPEG)
    return first, last


def _redis_values(redis_client: Any) -> bytes:
    """Every string, hash and sorted-set member of the store, as one blob to search."""
    found: list[str] = []
    for key in redis_client.keys("*"):
        kind = redis_client.type(key)
        if kind == "string":
            found.append(redis_client.get(key))
        elif kind == "hash":
            found.extend(redis_client.hvals(key))
        elif kind == "zset":
            found.extend(redis_client.zrange(key, 0, -1))
    return "\n".join(found).encode()


def test_the_record_keeps_a_reference_and_the_bytes_are_in_storage_not_redis(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, last = _images(tmp_path)
    root = tmp_path / "store"
    vq, sent = _queue(redis_client, monkeypatch, root)
    job = vq.submit(VideoRequest(prompt="a fox", image_file=str(first), last_frame_file=str(last)))

    stored = with_long_names(json.loads(redis_client.get(keys.job_key(job.id))))
    assert stored["request"]["images"] == {
        "first_frame": {
            "file": "first.png",
            "mime_type": "image/png",
            "bytes": len(PNG),
            "sha256": ImageFile("first.png", "image/png", PNG).sha256,
            "uri": (root / "inputs" / job.id / "first_frame.png").resolve().as_uri(),
        },
        "last_frame": {
            "file": "last.jpg",
            "mime_type": "image/jpeg",
            "bytes": len(JPEG),
            "sha256": ImageFile("last.jpg", "image/jpeg", JPEG).sha256,
            "uri": (root / "inputs" / job.id / "last_frame.jpg").resolve().as_uri(),
        },
    }
    assert (root / "inputs" / job.id / "first_frame.png").read_bytes() == PNG
    assert (root / "inputs" / job.id / "last_frame.jpg").read_bytes() == JPEG
    assert redis_client.keys(keys.input_key("*", "*")) == []
    blob = _redis_values(redis_client)
    assert b"\x01" * 16 not in blob and b"AQEBAQEB" not in blob  # neither raw nor base64 bytes
    assert sent == [job.id]


class RefusingStorage:
    """Local input storage that refuses to write the `refuse`-th image (1-based)."""

    def __init__(self, inner: StorageInputs, refuse: int) -> None:
        self.inner, self.refuse, self.puts = inner, refuse, 0

    def put(self, key: str, data: bytes, mime_type: str) -> str:
        self.puts += 1
        if self.puts == self.refuse:
            raise StorageError("S3 write of s3://videos/inputs/x: AccessDenied")
        return self.inner.put(key, data, mime_type)

    def read(self, uri: str) -> bytes | None:
        return self.inner.read(uri)

    def delete(self, uri: str) -> None:
        self.inner.delete(uri)

    def uris_starting_with(self, uri: str, limit: int) -> list[str]:
        return self.inner.uris_starting_with(uri, limit)


def test_an_upload_that_fails_is_a_clear_error_and_nothing_is_stored_enqueued_or_left(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, last = _images(tmp_path)
    root = tmp_path / "store"
    settings = Settings(_env_file=None, storage_url=f"file://{root}")
    refusing = RefusingStorage(StorageInputs(settings), refuse=2)
    vq, sent = _queue(redis_client, monkeypatch, root, refusing)

    with pytest.raises(inputs.InputUploadError, match=r"cannot put the image 'last\.jpg' into storage: .*AccessDenied"):
        vq.submit(VideoRequest(prompt="a fox", image_file=str(first), last_frame_file=str(last)))

    assert refusing.puts == 2  # the first image was put, then taken away again
    assert redis_client.keys("*") == [] and sent == []
    assert not (root / "inputs").exists() or list((root / "inputs").rglob("*.*")) == []


def test_without_the_storage_code_image_files_are_refused_naming_the_extra(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, _ = _images(tmp_path)
    vq, sent = _queue(redis_client, monkeypatch, tmp_path / "store")

    class MissingBoto3:
        def load(self) -> Any:
            raise ModuleNotFoundError("No module named 'boto3'", name="boto3")

    # What a base install (`pip install videoqueue`) with an s3:// STORAGE_URL finds.
    monkeypatch.setattr(metadata, "entry_points", lambda **_: [MissingBoto3()])
    monkeypatch.setattr(inputs, "missing_worker_extra", list)
    with pytest.raises(inputs.InputStorageUnavailableError) as caught:
        vq.submit(VideoRequest(prompt="a fox", image_file=str(first)))
    assert str(caught.value) == (
        "image files are put into STORAGE_URL by the producer, which needs the worker extra here "
        '(not installed: boto3): pip install "videoqueue[worker]"; or give the image as a URL'
    )
    assert redis_client.keys("*") == [] and sent == []
    # An image by URL needs no storage.
    assert vq.submit(VideoRequest(prompt="a fox", image_url="https://example.com/f.png")).id in sent


def test_the_same_client_job_id_with_the_same_file_keeps_one_copy(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, _ = _images(tmp_path)
    root = tmp_path / "store"
    vq, sent = _queue(redis_client, monkeypatch, root)
    job = vq.submit(VideoRequest(prompt="a fox", image_file=str(first), client_job_id="c-1"))
    again = vq.submit(VideoRequest(prompt="a fox", image_file=str(first), client_job_id="c-1"))
    assert again.id == job.id and sent == [job.id]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [f"inputs/{job.id}/first_frame.png"]


def test_the_final_move_lists_the_inputs_for_release_now_or_after_the_retry_grace(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    first, _ = _images(tmp_path)
    root = tmp_path / "store"
    vq, _ = _queue(redis_client, monkeypatch, root)
    done = vq.submit(VideoRequest(prompt="done", image_file=str(first)))
    failed = vq.submit(VideoRequest(prompt="failed", image_file=str(first)))
    plain = vq.submit(VideoRequest(prompt="no image"))
    for job_id, status in ((done.id, JobStatus.SUCCEEDED), (failed.id, JobStatus.FAILED), (plain.id, JobStatus.FAILED)):
        assert walk_to(vq.store, job_id, status) is not None

    listed = dict(redis_client.zrange(keys.INPUTS_RELEASE_INDEX, 0, -1, withscores=True))
    ended = {j: vq.get(j).finished_at for j in (done.id, failed.id)}
    assert listed == {
        done.id: ended[done.id].timestamp(),  # type: ignore[union-attr]
        failed.id: ended[failed.id].timestamp() + inputs.RETRY_GRACE_S,  # type: ignore[union-attr]
    }

    storage = StorageInputs(vq.settings)
    assert inputs.release_due(redis_client, storage, vq.store.get) == 1
    assert not (root / "inputs" / done.id).exists()
    assert (root / "inputs" / failed.id / "first_frame.png").exists()  # kept for a retry
    assert inputs.release_due(redis_client, storage, vq.store.get, now=time.time() + inputs.RETRY_GRACE_S + 1) == 1
    assert not (root / "inputs" / failed.id).exists()
    assert redis_client.zcard(keys.INPUTS_RELEASE_INDEX) == 0


def test_records_from_before_object_storage_inputs_load_and_serialise_unchanged() -> None:
    old = {"file": "a.png", "mime_type": "image/png", "bytes": 3, "sha256": "ab"}
    image = ImageUpload.model_validate(old)
    assert image.uri is None and image.model_dump(mode="json") == old


def test_a_delete_that_keeps_failing_does_not_hold_up_the_others(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The sweep takes due jobs oldest first, `limit` at a time: a job whose inputs cannot be
    deleted (access denied, a bucket gone) is put back RELEASE_RETRY_S later, so the jobs
    behind it are still released."""
    first, _ = _images(tmp_path)
    root = tmp_path / "store"
    vq, _ = _queue(redis_client, monkeypatch, root)
    stuck, other = (vq.submit(VideoRequest(prompt=p, image_file=str(first))) for p in ("stuck", "other"))
    for job_id in (stuck.id, other.id):
        assert walk_to(vq.store, job_id, JobStatus.SUCCEEDED) is not None

    class Refusing(StorageInputs):
        def delete(self, uri: str) -> None:
            if stuck.id in uri:
                raise StorageError(f"S3 delete of {uri} refused (AccessDenied)")
            super().delete(uri)

    storage = Refusing(vq.settings)
    redis_client.zadd(keys.INPUTS_RELEASE_INDEX, {stuck.id: 1.0})  # first in line
    before = time.time()
    assert inputs.release_due(redis_client, storage, vq.store.get, limit=1) == 0
    retry_at = redis_client.zscore(keys.INPUTS_RELEASE_INDEX, stuck.id)
    assert retry_at >= before + inputs.RELEASE_RETRY_S
    assert inputs.release_due(redis_client, storage, vq.store.get, limit=1) == 1
    assert not (root / "inputs" / other.id).exists()
    assert (root / "inputs" / stuck.id / "first_frame.png").exists()
    assert redis_client.zrange(keys.INPUTS_RELEASE_INDEX, 0, -1) == [stuck.id]
