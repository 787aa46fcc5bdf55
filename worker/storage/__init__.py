"""Where finished videos and their manifests go: a local folder or S3/MinIO."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from videoqueue.endpoints import Endpoint
from videoqueue.settings import Settings
from worker.storage.base import (
    MediaCheck,
    OpenUploads,
    Storage,
    StorageError,
    StoredObject,
    VideoCheckError,
    VideoDecodeError,
    checked_chunks,
)

__all__ = [
    "MediaCheck",
    "OpenUploads",
    "Storage",
    "StorageError",
    "StoredObject",
    "VideoCheckError",
    "VideoDecodeError",
    "checked_chunks",
    "open_storage",
    "storage_at",
    "storage_endpoint",
]


def open_storage(settings: Settings, open_uploads: OpenUploads | None = None) -> Storage:
    """The backend STORAGE_URL names: `file://PATH` (relative paths from the working
    directory) or `s3://bucket/prefix`. `open_uploads` keeps the ids of S3 multipart
    uploads until they are completed or aborted (the workers': in Redis)."""
    url = settings.storage_url
    if url.startswith("file://"):
        return _local(Path(url.removeprefix("file://") or "."))
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"STORAGE_URL {url!r} names no bucket")
    from worker.storage.s3 import S3Storage

    return S3Storage(parts.netloc, parts.path, settings, open_uploads)


def storage_endpoint(settings: Settings) -> Endpoint:
    """Where `settings` store videos, as the backend names it (host and fingerprint, no
    credentials): the bucket at the S3 endpoint's host, or `local`."""
    if settings.storage_url.startswith("s3://"):
        from worker.storage.s3 import S3Storage

        return S3Storage.endpoint(settings)
    from worker.storage.local import LocalStorage

    return LocalStorage.endpoint(settings.storage_url)


def _local(path: Path) -> Storage:
    from worker.storage.local import LocalStorage

    return LocalStorage(path)


def storage_at(uri: str, settings: Settings) -> tuple[Storage, str] | None:
    """The backend holding the object `uri` names (`file:///path` or `s3://bucket/key`, as a
    job record's `output_uri` and `manifest_uri`) and its key there; None for another
    scheme. S3 is reached with `settings` (S3_ENDPOINT_URL, AWS_*)."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        return _local(path.parent), path.name
    if parts.scheme == "s3" and parts.netloc and parts.path.strip("/"):
        from worker.storage.s3 import S3Storage

        return S3Storage(parts.netloc, "", settings), parts.path.lstrip("/")
    return None
