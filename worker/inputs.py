"""Input images in the storage of STORAGE_URL (videoqueue.inputs): the worker side's
backends do the writing, reading and deleting, for workers and, by the entry point
`videoqueue.storage:inputs`, for producers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from videoqueue import inputs
from videoqueue.errors import StorageError
from videoqueue.job import JobRecord
from videoqueue.jobstore import JobStore
from videoqueue.settings import Settings
from worker.storage import Storage, open_storage, storage_at


class StorageInputs:
    """`videoqueue.inputs.InputStorage` on the backend of STORAGE_URL: images are put
    there, and read and deleted wherever their URI says (a record keeps its URI when
    STORAGE_URL changes)."""

    def __init__(self, settings: Settings, storage: Storage | None = None) -> None:
        """`storage`: where `put` writes (default: STORAGE_URL's backend, opened on the
        first put); reads and deletes go where each URI says."""
        self.settings = settings
        self._storage = storage
        # One S3 client per bucket, not one per image: building a boto3 client takes tens of ms.
        self._buckets: dict[str, Storage] = {}

    def put(self, key: str, data: bytes, mime_type: str) -> str:
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage.put_bytes(key, data, mime_type).uri

    def _at(self, uri: str) -> tuple[Storage, str]:
        parts = urlsplit(uri)
        if parts.scheme == "s3" and parts.netloc in self._buckets:
            return self._buckets[parts.netloc], parts.path.lstrip("/")
        located = storage_at(uri, self.settings)
        if located is None:
            raise StorageError(f"{uri} names no object of a file:// or s3:// storage")
        if parts.scheme == "s3":
            self._buckets[parts.netloc] = located[0]
        return located

    def read(self, uri: str) -> bytes | None:
        backend, key = self._at(uri)
        return backend.read(key)

    def uris_starting_with(self, uri: str, limit: int) -> list[str]:
        backend, key = self._at(uri)
        return [backend.uri(found) for found in backend.keys_starting_with(key, limit)]

    def delete(self, uri: str) -> None:
        backend, key = self._at(uri)
        backend.delete(key)
        parts = urlsplit(uri)
        if parts.scheme == "file":
            # The job's own folder (inputs/<job id>/) once its last image is gone; S3 has
            # no folders to leave behind.
            with contextlib.suppress(OSError):
                Path(unquote(parts.path)).parent.rmdir()


def open_inputs(settings: Settings) -> StorageInputs:
    """The input storage of `settings` (the entry point producers load), its backend
    opened now: on an install without boto3 an s3:// STORAGE_URL raises ImportError here."""
    return StorageInputs(settings, open_storage(settings))


def release_when_due(store: JobStore, storage: inputs.InputStorage) -> Callable[[JobRecord], None]:
    """The `JobStore.on_final` of a worker: deletes a job's inputs at its final move when
    they are due then (a success); later ones are the sweep's (`inputs.release_due`)."""

    def on_final(record: JobRecord) -> None:
        when = inputs.release_at(record)
        if when is not None and when <= time.time():
            inputs.release(store.redis, storage, record)

    return on_final
