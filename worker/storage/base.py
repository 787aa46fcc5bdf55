"""What a storage backend offers, and the check every stored video passes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from videoqueue.errors import StorageError as StorageError  # noqa: PLC0414 - re-export
from worker.probe import Probe, Status

if TYPE_CHECKING:
    from worker import media

MP4_BOX_TYPES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide"}


class VideoCheckError(StorageError):
    """The bytes are not the video we expected (wrong size, not an MP4)."""


class VideoDecodeError(VideoCheckError):
    """The stored file has an MP4's signature and size but is not the video asked for:
    PyAV cannot read its container or decode its first frame, or its duration is further
    than the tolerance from the one requested (`MediaCheck`)."""


@dataclass(frozen=True)
class MediaCheck:
    """What the store step's check asks of a stored video beyond its bytes (`checked_chunks`):
    PyAV reads its container (a video stream, the duration) and decodes its first frame
    (worker/media.py `verify`); the duration, when one was requested (`duration_s`, in
    seconds), must be within `tolerance_s` of it."""

    duration_s: float | None
    tolerance_s: float

    def verify(self, video: media.Source, where: str) -> media.MediaInfo:
        """Check `video` (a path, or a seekable binary file object); `where` names it in
        errors. VideoDecodeError if it fails."""
        # PyAV only here: a producer puts image files through these backends
        # (videoqueue.inputs) with the light install, which has no PyAV.
        from worker import media

        try:
            info = media.verify(video)
        except media.MediaError as exc:
            raise VideoDecodeError(f"{where} is not a decodable video: {exc}") from exc
        if self.duration_s is not None and abs(info.duration_s - self.duration_s) > self.tolerance_s:
            raise VideoDecodeError(
                f"{where} lasts {info.duration_s:.2f} s, {self.duration_s:g} s were requested "
                f"(tolerance {self.tolerance_s:g} s)"
            )
        return info


@dataclass(frozen=True)
class StoredObject:
    """Where an object went and how big it is."""

    uri: str
    size: int


class Storage(Protocol):
    """A place for videos and their manifests."""

    def put_video(
        self, key: str, chunks: Iterator[bytes], expected_size: int | None, check: MediaCheck | None = None
    ) -> StoredObject:
        """Stream `chunks` to `key`, checked by `checked_chunks`, then the written object by
        `check` if one is given; nothing is left at `key` if the stream or a check fails."""
        ...

    def put_json(self, key: str, data: dict[str, Any]) -> StoredObject:
        """Write a small JSON document to `key` atomically."""
        ...

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Write a small object (an input image) to `key` atomically, as `content_type`."""
        ...

    def uri(self, key: str) -> str:
        """The URI that names `key` in this backend."""
        ...

    def size(self, key: str) -> int | None:
        """Size of the object at `key`, or None if there is none."""
        ...

    def read(self, key: str) -> bytes | None:
        """The whole object at `key` (for small ones: manifests, probes), or None if there
        is none. StorageError if the backend cannot be read."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object at `key`; no error if there is none. StorageError if the
        backend refuses."""
        ...

    def iter_json(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every `*.json` document under this backend's root, with its key."""
        ...

    def keys_starting_with(self, start: str, limit: int) -> list[str]:
        """Keys of the objects whose key starts with `start` and has no `/` after it, sorted;
        at most `limit` of them (S3: one listing page). StorageError if the backend cannot
        be listed."""
        ...

    def probe(self) -> Probe:
        """Can videos be stored here? (`videoqueue doctor`; the detail names no secret.)"""
        ...


class OpenUploads(Protocol):
    """Where the ids of multipart uploads stay while they are open, by the URI they write
    to (`s3://bucket/key`), so that a later attempt at the same key, on any host, can abort
    what an earlier one left (killed, or S3 down when boto3 tried to abort)."""

    def add(self, uri: str, upload_id: str) -> None:
        """Remember that `upload_id` was opened for `uri`."""
        ...

    def remove(self, uri: str, upload_id: str) -> None:
        """Forget `upload_id`: it was completed or aborted."""
        ...

    def ids(self, uri: str) -> list[str]:
        """The upload ids remembered for `uri`."""
        ...


PROBE_PREFIX = "_doctor/"


def _parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def round_trip_probe(storage: Storage, where: str) -> Probe:
    """A small JSON object written to `storage` under `_doctor/`, its size checked, read
    back and deleted; `where` names the backend's root in the detail. Fail when it cannot
    be written or read back as written, warn when it cannot be deleted."""
    key = f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}.json"
    probe = {"videoqueue_doctor": uuid.uuid4().hex, "written_at": time.time()}
    uri = storage.uri(key)
    try:
        stored = storage.put_json(key, probe)
        size = storage.size(key)
    except StorageError as exc:
        return Probe(Status.FAIL, f"cannot write to {where}: {exc}")
    if size != stored.size:
        return Probe(Status.FAIL, f"wrote {stored.size} bytes to {uri} but found {size}")
    try:
        body = storage.read(key)
    except StorageError as exc:
        return Probe(Status.FAIL, f"wrote {uri} but cannot read it back: {exc}")
    if body is None or _parsed(body) != probe:
        return Probe(Status.FAIL, f"read back something else than was written to {uri}")
    try:
        storage.delete(key)
    except StorageError as exc:
        return Probe(Status.WARN, f"wrote and read back {uri}, but cannot delete it: {exc}")
    return Probe(Status.OK, f"wrote, read back and deleted a probe under {where}")


def checked_chunks(chunks: Iterator[bytes], expected_size: int | None) -> Iterator[bytes]:
    """Pass chunks through while checking the MP4 signature (a known box type at offset 4)
    and, at the end, the total size against the announced one."""
    head = b""
    total = 0
    checked = False
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        if not checked:
            head += chunk[:12]
            if len(head) >= 8:
                if head[4:8] not in MP4_BOX_TYPES:
                    raise VideoCheckError(f"not an MP4 file (starts with {head[:8]!r})")
                checked = True
        if expected_size is not None and total > expected_size:
            raise VideoCheckError(f"more bytes than the announced {expected_size}")
        yield chunk
    if not checked:
        raise VideoCheckError(f"video is {total} bytes, too short to be an MP4")
    if expected_size is not None and total != expected_size:
        raise VideoCheckError(f"got {total} bytes, expected {expected_size}")
