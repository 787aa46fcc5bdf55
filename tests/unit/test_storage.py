"""Storage: the MP4 check, the local folder backend and the S3 backend (moto, in process)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from videoqueue.settings import Settings
from worker.probe import Status
from worker.storage import StorageError, VideoCheckError, checked_chunks
from worker.storage.local import LocalStorage
from worker.storage.s3 import PART_BYTES, UNKNOWN_UPLOAD, IteratorReader, S3Storage, s3_client, storage_error

MP4_HEAD = b"\x00\x00\x00\x18ftypisom"
VIDEO = MP4_HEAD + bytes(range(256)) * 4
MIB = 1024 * 1024


def split(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """`data` in chunks of the given sizes, cycling; the last chunk takes what is left."""
    pos = 0
    index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        yield data[pos : pos + size]
        pos += size
        index += 1


def failing_after(data: bytes, chunk: int, fail_at: int) -> Iterator[bytes]:
    """Yields `data` in `chunk`-byte pieces and raises once `fail_at` bytes are out."""
    sent = 0
    for start in range(0, len(data), chunk):
        if sent >= fail_at:
            raise ConnectionError("download interrupted")
        piece = data[start : start + chunk]
        sent += len(piece)
        yield piece


# ------------------------------------------------------------------ checked_chunks


@pytest.mark.parametrize("box", [b"ftyp", b"moov", b"mdat", b"free"])
def test_check_accepts_mp4_box_types(box: bytes) -> None:
    data = b"\x00\x00\x00\x18" + box + b"rest-of-file"
    assert b"".join(checked_chunks(iter([data]), len(data))) == data


def test_check_passes_chunks_through_unchanged() -> None:
    chunks = [VIDEO[:5], b"", VIDEO[5:300], VIDEO[300:]]
    assert list(checked_chunks(iter(chunks), len(VIDEO))) == [VIDEO[:5], VIDEO[5:300], VIDEO[300:]]


def test_check_accepts_unknown_size() -> None:
    assert b"".join(checked_chunks(iter([VIDEO]), None)) == VIDEO


@pytest.mark.parametrize("sizes", [[1], [2], [3], [1, 2, 3], [3, 1], [7, 1]])
def test_check_accepts_a_header_split_across_tiny_chunks(sizes: list[int]) -> None:
    assert b"".join(checked_chunks(split(VIDEO, sizes), len(VIDEO))) == VIDEO


@pytest.mark.parametrize("sizes", [[1], [2], [3], [1, 2, 3], [100]])
def test_check_rejects_non_mp4_bytes(sizes: list[int]) -> None:
    html = b"<html><body>403 Forbidden</body></html>" * 3
    with pytest.raises(VideoCheckError, match="not an MP4"):
        b"".join(checked_chunks(split(html, sizes), len(html)))


def test_check_rejects_before_passing_on_more_than_the_header() -> None:
    out = checked_chunks(split(b"GIF89a-not-a-video-at-all", [4]), None)
    assert next(out) == b"GIF8"  # fewer than 8 bytes seen: nothing to judge yet
    with pytest.raises(VideoCheckError, match="not an MP4"):
        next(out)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00\x00\x18fty"])
@pytest.mark.parametrize("sizes", [[1], [3], [50]])
def test_check_rejects_too_short_data(data: bytes, sizes: list[int]) -> None:
    with pytest.raises(VideoCheckError, match="too short"):
        b"".join(checked_chunks(split(data, sizes), None))


@pytest.mark.parametrize("sizes", [[1], [2], [3], [64]])
def test_check_rejects_fewer_bytes_than_announced(sizes: list[int]) -> None:
    with pytest.raises(VideoCheckError, match=f"got {len(VIDEO)} bytes, expected {len(VIDEO) + 1}"):
        b"".join(checked_chunks(split(VIDEO, sizes), len(VIDEO) + 1))


@pytest.mark.parametrize("sizes", [[1], [2], [3], [64]])
def test_check_rejects_more_bytes_than_announced(sizes: list[int]) -> None:
    with pytest.raises(VideoCheckError, match=f"more bytes than the announced {len(VIDEO) - 1}"):
        b"".join(checked_chunks(split(VIDEO, sizes), len(VIDEO) - 1))


def test_check_stops_at_the_first_byte_too_many() -> None:
    passed: list[bytes] = []
    with pytest.raises(VideoCheckError):
        for chunk in checked_chunks(split(VIDEO, [100]), 250):
            passed.append(chunk)
    assert sum(len(c) for c in passed) == 200


# ---------------------------------------------------------------------- LocalStorage


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_local_put_video_writes_the_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    stored = storage.put_video("a/b/job.mp4", split(VIDEO, [3, 100]), len(VIDEO))
    target = tmp_path / "a" / "b" / "job.mp4"
    assert target.read_bytes() == VIDEO
    assert stored.size == len(VIDEO)
    assert stored.uri == target.resolve().as_uri() == storage.uri("a/b/job.mp4")
    assert files_under(tmp_path) == ["a/b/job.mp4"]


def test_local_put_video_replaces_an_existing_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_video("job.mp4", iter([VIDEO]), None)
    newer = MP4_HEAD + b"second version"
    storage.put_video("job.mp4", iter([newer]), len(newer))
    assert (tmp_path / "job.mp4").read_bytes() == newer
    assert files_under(tmp_path) == ["job.mp4"]


def test_local_put_video_leaves_nothing_when_the_source_fails(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(ConnectionError):
        storage.put_video("job.mp4", failing_after(VIDEO, 100, 300), len(VIDEO))
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(
    ("data", "expected_size"),
    [
        (b"<html>not a video</html>", None),
        (VIDEO, len(VIDEO) + 10),
        (VIDEO, len(VIDEO) - 10),
        (b"\x00\x00", None),
    ],
)
def test_local_put_video_leaves_nothing_when_the_check_fails(
    tmp_path: Path, data: bytes, expected_size: int | None
) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(VideoCheckError):
        storage.put_video("job.mp4", split(data, [7]), expected_size)
    assert files_under(tmp_path) == []
    assert storage.size("job.mp4") is None


def test_local_failed_put_leaves_an_existing_good_file_untouched(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_video("job.mp4", iter([VIDEO]), len(VIDEO))
    with pytest.raises(VideoCheckError):
        storage.put_video("job.mp4", iter([MP4_HEAD + b"short"]), len(VIDEO))
    with pytest.raises(ConnectionError):
        storage.put_video("job.mp4", failing_after(VIDEO, 50, 100), len(VIDEO))
    assert (tmp_path / "job.mp4").read_bytes() == VIDEO
    assert files_under(tmp_path) == ["job.mp4"]


def test_local_write_takes_over_the_partial_file_a_killed_write_left(tmp_path: Path) -> None:
    # A write killed half way leaves `.job.mp4.part` with no lock on it: the next write of
    # the key takes it over (emptied), and nothing is left beside the video.
    (tmp_path / ".job.mp4.part").write_bytes(b"half of an earlier attempt" * 100)
    storage = LocalStorage(tmp_path)
    storage.put_video("job.mp4", iter([VIDEO]), len(VIDEO))
    assert (tmp_path / "job.mp4").read_bytes() == VIDEO
    assert files_under(tmp_path) == ["job.mp4"]


def test_local_write_does_not_list_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A listing per write costs as much as the folder holds files (thousands of videos):
    # the usual write, leftover or not, finds what it needs by name.
    (tmp_path / ".job.mp4.part").write_bytes(b"leftover")
    storage = LocalStorage(tmp_path)

    def no_listing(*_: object) -> None:
        raise AssertionError("the folder was listed")

    monkeypatch.setattr(Path, "glob", no_listing)
    monkeypatch.setattr(Path, "iterdir", no_listing)
    monkeypatch.setattr(os, "scandir", no_listing)
    monkeypatch.setattr(os, "listdir", no_listing)
    storage.put_video("job.mp4", iter([VIDEO]), len(VIDEO))
    storage.put_json("job.json", {"x": 1})
    monkeypatch.undo()
    assert files_under(tmp_path) == ["job.json", "job.mp4"]


def test_local_write_is_durable_file_then_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The file's bytes, then (after the rename) the directory entry: only then may a job
    # be recorded as stored.
    synced: list[tuple[str, bool]] = []
    fsync = os.fsync

    def recording(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, (tmp_path / "job.mp4").exists()))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    LocalStorage(tmp_path).put_video("job.mp4", iter([VIDEO]), len(VIDEO))
    assert synced == [(str(tmp_path / ".job.mp4.part"), False), (str(tmp_path), True)]


def test_local_write_beside_a_live_write_of_the_same_key(tmp_path: Path) -> None:
    # Another writer holds the partial file (a duplicate store attempt in progress): this
    # write goes under a name of its own, lands, and clears leftovers under random names,
    # but not the partial file: its holder renames it by name, and a third write would
    # otherwise make a new one that the holder renames into place half written.
    storage = LocalStorage(tmp_path)
    partial = tmp_path / ".job.mp4.part"
    (tmp_path / ".job.mp4.x1y2z3").write_bytes(b"a killed write's leftover")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"the other writer's bytes")
        held = os.fstat(fd).st_ino
        storage.put_video("job.mp4", iter([VIDEO]), len(VIDEO))
        assert (tmp_path / "job.mp4").read_bytes() == VIDEO
        assert files_under(tmp_path) == [".job.mp4.part", "job.mp4"]
        assert os.stat(partial).st_ino == held and partial.read_bytes() == b"the other writer's bytes"
        # A third write meanwhile also goes beside it, and leaves it to its holder.
        storage.put_video("job.mp4", iter([VIDEO]), len(VIDEO))
        assert os.stat(partial).st_ino == held
    finally:
        os.close(fd)


def test_local_write_without_file_locks_goes_under_a_random_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A filesystem that refuses locks (ENOLCK): the write still lands, and leaves nothing.
    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    storage = LocalStorage(tmp_path)
    storage.put_video("job.mp4", iter([VIDEO]), len(VIDEO))
    storage.put_json("job.json", {"x": 1})
    assert (tmp_path / "job.mp4").read_bytes() == VIDEO
    assert files_under(tmp_path) == ["job.json", "job.mp4"]


def test_local_write_never_truncates_a_file_renamed_into_place(tmp_path: Path) -> None:
    # Two writes of one key in turn: the second opens the name anew, never the inode the
    # first renamed to `job.mp4`.
    storage = LocalStorage(tmp_path)
    first = MP4_HEAD + b"first"
    storage.put_video("job.mp4", iter([first]), len(first))
    kept = os.open(tmp_path / "job.mp4", os.O_RDONLY)
    try:
        storage.put_video("job.mp4", iter([VIDEO]), len(VIDEO))
        assert os.pread(kept, 100, 0) == first  # the first file, intact under its old name
    finally:
        os.close(kept)
    assert (tmp_path / "job.mp4").read_bytes() == VIDEO


def test_local_put_json_and_size(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    data = {"job_id": "j1", "cost": {"actual_usd": 1.25}, "ok": True}
    stored = storage.put_json("j1.json", data)
    path = tmp_path / "j1.json"
    assert json.loads(path.read_text()) == data
    assert stored.size == path.stat().st_size == storage.size("j1.json")
    assert stored.uri == path.resolve().as_uri()
    assert storage.size("missing.json") is None


def test_local_read_gives_the_bytes_or_none(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put_json("a/j1.json", {"x": 1})
    assert json.loads(storage.read("a/j1.json") or b"") == {"x": 1}
    assert storage.read("a/missing.json") is None
    assert storage.read("nowhere/missing.json") is None


def test_local_unreadable_key_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-dir.json").mkdir()
    with pytest.raises(StorageError, match="cannot read"):
        LocalStorage(tmp_path).read("a-dir.json")


def test_local_delete_removes_the_file_and_the_directories_it_leaves_empty(tmp_path: Path) -> None:
    root = tmp_path / "root"
    storage = LocalStorage(root)
    storage.put_json("a/b/one.json", {"x": 1})
    storage.put_json("a/two.json", {"x": 2})
    storage.delete("a/b/one.json")
    assert storage.read("a/b/one.json") is None
    assert not (root / "a" / "b").exists()
    assert files_under(root) == ["a/two.json"]
    storage.delete("a/two.json")
    assert root.is_dir() and list(root.iterdir()) == []


def test_local_delete_of_a_missing_key_is_no_error(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.delete("missing.json")
    storage.delete("no/such/dir.json")
    assert list(tmp_path.iterdir()) == []


def test_local_delete_refused_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "a-dir.json").mkdir()
    with pytest.raises(StorageError, match="cannot delete"):
        LocalStorage(tmp_path).delete("a-dir.json")


def test_local_probe_writes_reads_back_and_deletes(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    probe = LocalStorage(root).probe()
    assert probe.status is Status.OK, probe.detail
    assert probe.detail == f"wrote, read back and deleted a probe under {root.as_uri()}"
    assert list(root.iterdir()) == []


def test_local_probe_of_an_unwritable_root_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    probe = LocalStorage(blocker / "videos").probe()
    assert probe.status is Status.FAIL and probe.detail.startswith("cannot write to file://")


@pytest.mark.parametrize("key", ["../escape.mp4", "a/../../escape.mp4", "/etc/passwd", "", "."])
def test_local_refuses_keys_outside_the_root(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    storage = LocalStorage(root)
    with pytest.raises(ValueError, match="escapes the storage root"):
        storage.put_video(key, iter([VIDEO]), None)
    with pytest.raises(ValueError, match="escapes the storage root"):
        storage.put_json(key, {"x": 1})
    with pytest.raises(ValueError, match="escapes the storage root"):
        storage.uri(key)
    assert files_under(tmp_path) == []


def test_local_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    storage = LocalStorage(root)
    with pytest.raises(ValueError, match="escapes the storage root"):
        storage.put_json("link/x.json", {"x": 1})
    assert list(outside.iterdir()) == []


def test_local_unwritable_root_is_a_storage_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    storage = LocalStorage(not_a_dir)
    with pytest.raises(StorageError):
        storage.put_video("job.mp4", iter([VIDEO]), None)


# ------------------------------------------------------------------------- S3 (moto)

BUCKET = "videos"


@pytest.fixture(scope="module")
def _aws() -> Iterator[None]:
    # One mocked AWS for the module (starting it is the slow part); each test gets a fresh bucket.
    with mock_aws():
        yield


@pytest.fixture
def s3(_aws: None) -> Iterator[S3Storage]:
    settings = Settings(aws_access_key_id="test", aws_secret_access_key="test", aws_region="us-east-1")
    storage = S3Storage(BUCKET, "/runs/", settings)
    storage.client.create_bucket(Bucket=BUCKET)
    yield storage
    for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            storage.client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    for upload in storage.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        storage.client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
    storage.client.delete_bucket(Bucket=BUCKET)


def big_video(size: int) -> bytes:
    pattern = bytes(range(251))  # a prime length, so every part differs
    body = (pattern * (size // len(pattern) + 1))[: size - len(MP4_HEAD)]
    return MP4_HEAD + body


def in_mib_chunks(data: bytes) -> Iterator[bytes]:
    for start in range(0, len(data), MIB):
        yield data[start : start + MIB]


def test_s3_multipart_upload_arrives_intact(s3: S3Storage) -> None:
    data = big_video(PART_BYTES + MIB + 123)
    stored = s3.put_video("job.mp4", in_mib_chunks(data), len(data))
    assert stored.uri == "s3://videos/runs/job.mp4"
    assert stored.size == len(data)
    obj = s3.client.get_object(Bucket=BUCKET, Key="runs/job.mp4")
    assert obj["Body"].read() == data
    assert obj["ContentType"] == "video/mp4"
    assert obj["ETag"].strip('"').endswith("-2")  # really went up in two parts
    assert s3.size("job.mp4") == len(data)


def test_s3_small_upload_and_json(s3: S3Storage) -> None:
    stored = s3.put_video("small.mp4", split(VIDEO, [3]), len(VIDEO))
    assert stored.size == len(VIDEO)
    assert s3.client.get_object(Bucket=BUCKET, Key="runs/small.mp4")["Body"].read() == VIDEO
    manifest = s3.put_json("small.json", {"job_id": "small", "bytes": len(VIDEO)})
    assert manifest.uri == "s3://videos/runs/small.json"
    body = s3.client.get_object(Bucket=BUCKET, Key="runs/small.json")["Body"].read()
    assert json.loads(body) == {"job_id": "small", "bytes": len(VIDEO)}
    assert manifest.size == len(body)
    assert s3.size("missing.mp4") is None


def test_s3_failed_check_in_a_multipart_upload_leaves_no_object(s3: S3Storage) -> None:
    data = big_video(PART_BYTES + 2 * MIB)
    with pytest.raises(VideoCheckError):
        s3.put_video("job.mp4", in_mib_chunks(data), len(data) + 1)
    assert s3.size("job.mp4") is None
    assert s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_s3_failed_check_of_a_small_file_leaves_no_object(s3: S3Storage) -> None:
    with pytest.raises(VideoCheckError):
        s3.put_video("job.mp4", iter([b"<html>expired link</html>"]), None)
    assert s3.size("job.mp4") is None
    assert s3.client.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_s3_missing_bucket_is_a_storage_error(s3: S3Storage) -> None:
    other = S3Storage("no-such-bucket", "", Settings(aws_access_key_id="test", aws_secret_access_key="test"))
    with pytest.raises(StorageError):
        other.put_json("x.json", {"x": 1})
    assert other.uri("x.json") == "s3://no-such-bucket/x.json"


# ---------------------------------------------------------------------- IteratorReader


def test_reader_read_n_spans_and_splits_chunks() -> None:
    reader = IteratorReader(iter([b"abcde", b"fg", b"", b"hij"]))
    assert reader.read(3) == b"abc"
    assert reader.read(4) == b"defg"  # rest of one chunk plus all of the next
    assert reader.read(0) == b""
    assert reader.read(2) == b"hi"  # an empty chunk is not the end
    assert reader.read(100) == b"j"  # short read at the end
    assert reader.read(5) == b""
    assert reader.read() == b""
    assert reader.bytes_read == 10


def test_reader_serves_a_long_leftover_over_several_reads() -> None:
    reader = IteratorReader(iter([b"abcdefgh", b"ij"]))
    assert reader.read(1) == b"a"
    assert reader.read(2) == b"bc"
    assert reader.read(3) == b"def"
    assert reader.read(4) == b"ghij"
    assert reader.read(1) == b""
    assert reader.bytes_read == 10


def test_reader_read_all() -> None:
    reader = IteratorReader(iter([b"ab", b"cd", b"ef"]))
    assert reader.read(1) == b"a"
    assert reader.read() == b"bcdef"
    assert reader.read(-1) == b""
    assert reader.bytes_read == 6


def test_reader_pulls_only_what_it_needs() -> None:
    pulled: list[int] = []

    def source() -> Iterator[bytes]:
        for i in range(10):
            pulled.append(i)
            yield b"x" * 4

    reader = IteratorReader(source())
    assert reader.read(6) == b"x" * 6
    assert pulled == [0, 1]
    assert reader.read(2) == b"xx"
    assert pulled == [0, 1]  # served from the buffer


def test_reader_passes_source_errors_on() -> None:
    reader = IteratorReader(checked_chunks(iter([b"not a video file"]), None))
    with pytest.raises(VideoCheckError):
        reader.read(4)


# ------------------------------------------------------------- S3_CHECKSUMS (issue 12)


@pytest.mark.parametrize(
    ("endpoint", "setting", "expected"),
    [
        (None, None, "when_supported"),  # AWS: the SDK's own default
        ("http://127.0.0.1:9000", None, "when_required"),  # S3-compatible: headers only where required
        ("http://127.0.0.1:9000", "when_supported", "when_supported"),
        (None, "when_required", "when_required"),
        ("http://127.0.0.1:9000", "WHEN_SUPPORTED", "when_supported"),
    ],
)
def test_every_s3_client_gets_the_checksum_setting(endpoint: str | None, setting: str | None, expected: str) -> None:
    values: dict[str, Any] = {"s3_endpoint_url": endpoint, "s3_checksums": setting}
    settings = Settings.model_validate(
        {"aws_access_key_id": "t", "aws_secret_access_key": "t", **{k: v for k, v in values.items() if v}}
    )
    assert settings.effective_s3_checksums == expected
    for client in (s3_client(settings), S3Storage("b", "", settings).client):
        config: Any = client.meta.config
        assert config.request_checksum_calculation == expected
        assert config.response_checksum_validation == expected


def test_a_refusal_of_the_checksum_headers_names_the_setting() -> None:
    refused = ClientError(
        {"Error": {"Code": "InvalidArgument", "Message": "Unsupported header 'x-amz-checksum-crc32' received"}},
        "PutObject",
    )
    other = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")
    assert "set S3_CHECKSUMS=when_required" in str(storage_error("S3 write", refused, "when_supported"))
    assert "S3_CHECKSUMS" not in str(storage_error("S3 write", other, "when_supported"))


# ------------------------------------------------- S3: least privilege, open uploads, probe


class MemoryOpenUploads:
    """OpenUploads in a dict (the workers keep them in Redis: worker.open_uploads)."""

    def __init__(self) -> None:
        self.held: dict[str, set[str]] = {}

    def add(self, uri: str, upload_id: str) -> None:
        self.held.setdefault(uri, set()).add(upload_id)

    def remove(self, uri: str, upload_id: str) -> None:
        self.held.get(uri, set()).discard(upload_id)

    def ids(self, uri: str) -> list[str]:
        return sorted(self.held.get(uri, set()))


def calls_of(storage: S3Storage) -> list[str]:
    """The S3 operations `storage`'s client makes from now on, in order."""
    seen: list[str] = []
    storage.client.meta.events.register("before-call.s3", lambda model, **_: seen.append(model.name))
    return seen


@pytest.fixture
def recorded(s3: S3Storage) -> tuple[S3Storage, MemoryOpenUploads]:
    uploads = MemoryOpenUploads()
    settings = Settings(aws_access_key_id="test", aws_secret_access_key="test", aws_region="us-east-1")
    return S3Storage(BUCKET, "/runs/", settings, uploads), uploads


def open_uploads_in(storage: S3Storage) -> list[str]:
    return [u["UploadId"] for u in storage.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def test_s3_upload_calls_only_what_put_get_and_abort_allow(recorded: tuple[S3Storage, MemoryOpenUploads]) -> None:
    """No ListMultipartUploads (s3:ListBucketMultipartUploads), nor any other call a
    least-privilege key (s3:PutObject, s3:GetObject, s3:AbortMultipartUpload) refuses."""
    storage, uploads = recorded
    leftover = storage.client.create_multipart_upload(Bucket=BUCKET, Key="runs/job.mp4")["UploadId"]
    uploads.add("s3://videos/runs/job.mp4", leftover)
    seen = calls_of(storage)
    data = big_video(PART_BYTES + MIB)
    storage.put_video("job.mp4", in_mib_chunks(data), len(data))
    storage.size("job.mp4")
    storage.put_json("job.json", {"ok": True})
    assert set(seen) == {
        "AbortMultipartUpload",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
        "HeadObject",
        "PutObject",
    }, seen


def test_s3_an_upload_left_open_by_an_earlier_attempt_is_aborted_by_the_next(
    recorded: tuple[S3Storage, MemoryOpenUploads],
) -> None:
    storage, uploads = recorded
    leftover = storage.client.create_multipart_upload(Bucket=BUCKET, Key="runs/job.mp4")["UploadId"]
    uploads.add("s3://videos/runs/job.mp4", leftover)
    data = big_video(PART_BYTES + MIB)
    storage.put_video("job.mp4", in_mib_chunks(data), len(data))
    assert open_uploads_in(storage) == []
    assert uploads.ids("s3://videos/runs/job.mp4") == []  # the leftover and the completed one
    assert storage.size("job.mp4") == len(data)


def test_s3_an_upload_is_recorded_while_open(recorded: tuple[S3Storage, MemoryOpenUploads]) -> None:
    storage, uploads = recorded
    during: list[list[str]] = []
    storage.client.meta.events.register(
        "before-call.s3.UploadPart", lambda **_: during.append(uploads.ids("s3://videos/runs/job.mp4"))
    )
    data = big_video(PART_BYTES + MIB)
    storage.put_video("job.mp4", in_mib_chunks(data), len(data))
    assert len(during) == 2 and len(during[0]) == 1 and during[0] == during[1], during
    assert uploads.ids("s3://videos/runs/job.mp4") == []


def cut_off_after(data: bytes, at: int) -> Iterator[bytes]:
    """`data` in 1 MiB chunks, failing (as a download cut off) once `at` bytes were given."""
    for start in range(0, len(data), MIB):
        if start >= at:
            raise ConnectionError("the source was cut off")
        yield data[start : start + MIB]


def test_s3_an_upload_whose_id_never_reached_us_is_aborted_after_a_failed_attempt(
    recorded: tuple[S3Storage, MemoryOpenUploads],
) -> None:
    """A network cut can lose CreateMultipartUpload's answer after S3 opened the upload: no
    id to record. A failed attempt records that such an upload may exist; the next lists
    the object's uploads (when the key may) and aborts them."""
    storage, uploads = recorded
    elsewhere = s3_client(Settings(aws_access_key_id="test", aws_secret_access_key="test", aws_region="us-east-1"))
    orphan = elsewhere.create_multipart_upload(Bucket=BUCKET, Key="runs/job.mp4")["UploadId"]  # not seen by `storage`
    data = big_video(2 * PART_BYTES + MIB)
    with pytest.raises(ConnectionError):
        storage.put_video("job.mp4", cut_off_after(data, PART_BYTES + MIB), len(data))
    assert uploads.ids("s3://videos/runs/job.mp4") == [UNKNOWN_UPLOAD]
    assert open_uploads_in(storage) == [orphan]  # the failed attempt's own upload was aborted
    storage.put_video("job.mp4", in_mib_chunks(data), len(data))
    assert open_uploads_in(storage) == []
    assert uploads.ids("s3://videos/runs/job.mp4") == []
    assert storage.size("job.mp4") == len(data)


def test_s3_a_retried_create_lists_and_aborts_what_its_lost_first_try_opened(
    recorded: tuple[S3Storage, MemoryOpenUploads],
) -> None:
    storage, _ = recorded
    elsewhere = s3_client(Settings(aws_access_key_id="test", aws_secret_access_key="test", aws_region="us-east-1"))
    orphan = elsewhere.create_multipart_upload(Bucket=BUCKET, Key="runs/job.mp4")["UploadId"]  # not seen by `storage`
    assert open_uploads_in(storage) == [orphan]

    def retried(parsed: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("ResponseMetadata", {})["RetryAttempts"] = 1  # as botocore after a lost answer

    storage.client.meta.events.register_first("after-call.s3.CreateMultipartUpload", retried)
    data = big_video(PART_BYTES + MIB)
    storage.put_video("job.mp4", in_mib_chunks(data), len(data))
    assert open_uploads_in(storage) == []


def test_s3_without_the_listing_permission_an_unknown_upload_is_left_to_the_lifecycle_rule(
    recorded: tuple[S3Storage, MemoryOpenUploads], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage, uploads = recorded
    asked: list[str] = []

    def refuse(**kwargs: Any) -> Any:
        asked.append(kwargs["Prefix"])
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListMultipartUploads")

    monkeypatch.setattr(storage.client, "list_multipart_uploads", refuse)
    uploads.add("s3://videos/runs/job.mp4", UNKNOWN_UPLOAD)
    uploads.add("s3://videos/runs/other.mp4", UNKNOWN_UPLOAD)
    data = big_video(PART_BYTES + MIB)
    storage.put_video("job.mp4", in_mib_chunks(data), len(data))
    storage.put_video("other.mp4", in_mib_chunks(data), len(data))
    assert asked == ["runs/job.mp4"], "refused once, not asked again by this process"
    assert uploads.held == {"s3://videos/runs/job.mp4": set(), "s3://videos/runs/other.mp4": set()}
    assert storage.size("other.mp4") == len(data)


class Interrupted(BaseException):
    """As Celery's SoftTimeLimitExceeded: raised in the main thread by a signal handler."""


def test_s3_an_interrupted_upload_stops_reading_and_is_aborted(recorded: tuple[S3Storage, MemoryOpenUploads]) -> None:
    """Billiard raises the soft time limit from a SIGUSR1 handler in the main thread, which
    waits for boto3's transfer threads: the one reading the source must stop there, or the
    transfer's shutdown reads the whole (slow) video first."""
    storage, uploads = recorded
    total = 64
    read: list[int] = []

    def slow_chunks() -> Iterator[bytes]:
        yield MP4_HEAD + bytes(MIB - len(MP4_HEAD))
        for i in range(1, total):
            time.sleep(0.02)
            read.append(i)
            yield bytes(MIB)

    def interrupt(*_: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    # Sent once the first part is on its way (the upload is open), long before the source ends.
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        with pytest.raises(Interrupted):
            storage.put_video("job.mp4", slow_chunks(), total * MIB)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert 0 < len(read) < total - 1, len(read)
    assert open_uploads_in(storage) == []
    # Its own upload aborted; recorded: an upload whose id never came back may exist.
    assert uploads.ids("s3://videos/runs/job.mp4") == [UNKNOWN_UPLOAD]
    assert storage.size("job.mp4") is None


def test_reader_cancel_stops_every_later_read() -> None:
    from worker.storage.s3 import TransferCancelled

    reader = IteratorReader(iter([b"abc", b"def"]))
    assert reader.read(2) == b"ab"
    reader.cancel()
    with pytest.raises(TransferCancelled):
        reader.read(2)


def test_s3_probe_makes_the_calls_of_a_store_and_leaves_nothing(s3: S3Storage) -> None:
    seen = calls_of(s3)
    probe = s3.probe()
    assert probe.status is Status.OK, probe.detail
    assert probe.detail == "wrote, read back and deleted a probe under s3://videos/runs"
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= set(seen)
    assert {"AbortMultipartUpload", "HeadObject", "GetObject", "DeleteObject"} <= set(seen)
    assert "ListMultipartUploads" not in seen
    assert s3.client.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert open_uploads_in(s3) == []


def test_s3_probe_names_the_refused_operation_and_its_permission(s3: S3Storage) -> None:
    def refuse(model: Any, **_: Any) -> None:
        if model.name == "AbortMultipartUpload":
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, model.name)

    s3.client.meta.events.register("before-call.s3.AbortMultipartUpload", refuse)
    try:
        probe = s3.probe()
    finally:
        s3.client.meta.events.unregister("before-call.s3.AbortMultipartUpload", refuse)
    assert probe.status is Status.FAIL
    assert "AbortMultipartUpload of s3://videos/runs/_doctor/probe-" in probe.detail, probe.detail
    assert "refused (AccessDenied): the credentials need s3:AbortMultipartUpload on arn:aws:s3:::videos/runs/*" in (
        probe.detail
    )
    assert s3.client.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0  # what it wrote is deleted all the same


def test_redis_open_uploads_keeps_ids_per_object_with_a_ttl() -> None:
    import fakeredis

    from videoqueue import keys
    from worker.open_uploads import TTL_S, RedisOpenUploads

    client = fakeredis.FakeRedis()
    uploads = RedisOpenUploads(client)
    uploads.add("s3://videos/runs/a.mp4", "id-1")
    uploads.add("s3://videos/runs/a.mp4", "id-2")
    uploads.add("s3://videos/runs/b.mp4", "id-3")
    assert uploads.ids("s3://videos/runs/a.mp4") == ["id-1", "id-2"]
    ttl: int = client.ttl(keys.open_uploads_key("s3://videos/runs/a.mp4"))  # type: ignore[assignment]
    assert 0 < ttl <= TTL_S
    uploads.remove("s3://videos/runs/a.mp4", "id-1")
    uploads.remove("s3://videos/runs/a.mp4", "id-2")
    assert uploads.ids("s3://videos/runs/a.mp4") == []
    assert not client.exists(keys.open_uploads_key("s3://videos/runs/a.mp4"))  # no empty set left behind
    assert uploads.ids("s3://videos/runs/b.mp4") == ["id-3"]
