"""Where finished videos and their manifests go: a local folder or S3/MinIO."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from videoqueue.settings import Settings
from worker.storage.base import (
    Storage,
    StorageError,
    StoredObject,
    VideoCheckError,
    checked_chunks,
)

__all__ = [
    "Storage",
    "StorageError",
    "StoredObject",
    "VideoCheckError",
    "checked_chunks",
    "open_storage",
]


def open_storage(settings: Settings) -> Storage:
    """The backend STORAGE_URL names: `file://PATH` (relative paths from the working
    directory) or `s3://bucket/prefix`."""
    url = settings.storage_url
    if url.startswith("file://"):
        return _local(Path(url.removeprefix("file://") or "."))
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"STORAGE_URL {url!r} names no bucket")
    from worker.storage.s3 import S3Storage

    return S3Storage(parts.netloc, parts.path, settings)


def _local(path: Path) -> Storage:
    from worker.storage.local import LocalStorage

    return LocalStorage(path)
