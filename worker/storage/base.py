"""What a storage backend offers, and the check every stored video passes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from videoqueue.errors import StorageError as StorageError  # noqa: PLC0414 - re-export

MP4_BOX_TYPES = {b"ftyp", b"styp", b"moov", b"mdat", b"free", b"skip", b"wide"}


class VideoCheckError(StorageError):
    """The bytes are not the video we expected (wrong size, not an MP4)."""


@dataclass(frozen=True)
class StoredObject:
    """Where an object went and how big it is."""

    uri: str
    size: int


class Storage(Protocol):
    """A place for videos and their manifests."""

    def put_video(self, key: str, chunks: Iterator[bytes], expected_size: int | None) -> StoredObject:
        """Stream `chunks` to `key`, checked by `checked_chunks`; nothing is left at `key`
        if the stream or the check fails."""
        ...

    def put_json(self, key: str, data: dict[str, Any]) -> StoredObject:
        """Write a small JSON document to `key` atomically."""
        ...

    def uri(self, key: str) -> str:
        """The URI that names `key` in this backend."""
        ...

    def size(self, key: str) -> int | None:
        """Size of the object at `key`, or None if there is none."""
        ...

    def iter_json(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every `*.json` document under this backend's root, with its key."""
        ...


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
