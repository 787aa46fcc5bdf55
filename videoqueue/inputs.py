"""Input images in object storage: where a producer puts the image files of a job, how the
job record refers to them, and when they are deleted.

A producer puts each image file of a job into the storage STORAGE_URL names (the folder or
bucket of the videos) at `inputs/<job id>/<role>.<ext>`, before the job is stored or sent;
the record keeps only the reference (`videoqueue.resolved.ImageUpload`: URI, sha256, type,
size). Workers read the image from there for every create attempt. Redis never holds the
bytes: a job costs the same few KB in Redis with or without images.

The inputs are deleted once no retry can use them: at the final move of a job that
succeeded, `RETRY_GRACE_S` after the final move of one that can be retried (failed,
expired, cancelled: `VideoQueue.retry` copies them to the new job). The final move records
when in `keys.INPUTS_RELEASE_INDEX`, in its own transaction (videoqueue.final_hooks); the
worker that made the move deletes them at once when due, and the recovery sweep deletes
whatever is due and still listed (a worker that died between the move and the delete, a
storage that refused). One `inputs/` prefix per deployment lets an S3 lifecycle rule on it
be a last net (docs/production.md).

The storage code is the worker side's (worker/storage, boto3 for S3): the producer reaches
it through the entry point `ENTRY_POINT` of group `ENTRY_POINT_GROUP`, never by import, as
the CLI reaches the worker's commands (videoqueue/commands.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Protocol

from videoqueue import keys
from videoqueue.commands import WORKER_EXTRA, missing_worker_extra
from videoqueue.errors import RequestError, StorageError, VideoqueueError
from videoqueue.images import ImageFile
from videoqueue.job import JobRecord, JobStatus
from videoqueue.resolved import IMAGE_ROLES, ImageRole, ImageSource, ImageUpload
from videoqueue.settings import Settings

if TYPE_CHECKING:
    import redis

log = logging.getLogger("videoqueue.inputs")

INPUTS_PREFIX = "inputs/"
"""Where input images go under the storage root: `inputs/<job id>/<role>.<ext>`."""

RETRY_GRACE_S = 86400
"""How long the inputs of a job that ended failed, expired or cancelled are kept for a
retry (`VideoQueue.retry`), in seconds after its end."""

RELEASE_RETRY_S = 600
"""How long after a refused delete (access denied, storage down) a job's inputs are tried
again, in seconds: the sweep takes the due jobs oldest first, a limited number at a time,
so a job whose delete keeps failing must not stay first in line before the others."""

ENTRY_POINT_GROUP = "videoqueue.storage"
ENTRY_POINT = "inputs"
"""The entry point (in `ENTRY_POINT_GROUP`) of the factory `(Settings) -> InputStorage`."""

_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}


class InputStorageUnavailableError(RequestError, ValueError):
    """Image files cannot be uploaded from this install: the storage code (the worker
    extra) is missing. The message names what to install."""


class InputUploadError(VideoqueueError, RuntimeError):
    """An image file could not be put into storage; nothing was stored or enqueued."""


class InputStorage(Protocol):
    """Where input images are put, read back and deleted, by URI."""

    def put(self, key: str, data: bytes, mime_type: str) -> str:
        """Write `data` at `key` under the storage root; return the object's URI.
        StorageError when the backend refuses."""
        ...

    def read(self, uri: str) -> bytes | None:
        """The object `uri` names, or None if it is gone. StorageError when unreadable."""
        ...

    def delete(self, uri: str) -> None:
        """Remove the object `uri` names; no error if it is gone. StorageError when the
        backend refuses."""
        ...

    def uris_starting_with(self, uri: str, limit: int) -> list[str]:
        """The URIs of the objects in the folder of `uri` whose names start with its last
        part, sorted, at most `limit` (the archive's lookup of an id prefix). StorageError
        when the backend cannot be listed."""
        ...


def input_object_key(job_id: str, role: str, mime_type: str) -> str:
    """The storage key of a job's input image: `inputs/<job id>/<role>.<ext>`."""
    return f"{INPUTS_PREFIX}{job_id}/{role}{_EXTENSIONS.get(mime_type, '')}"


def open_input_storage(settings: Settings) -> InputStorage:
    """The input storage of STORAGE_URL, from the worker side's entry point. Raises
    InputStorageUnavailableError naming the worker extra when its code cannot be loaded
    here (boto3 for an `s3://` STORAGE_URL)."""
    found = metadata.entry_points(group=ENTRY_POINT_GROUP, name=ENTRY_POINT)
    try:
        factory = next(iter(found)).load()
        storage: InputStorage = factory(settings)
    except (StopIteration, ImportError) as exc:
        missing = missing_worker_extra() or [getattr(exc, "name", None) or "the videoqueue worker package"]
        raise InputStorageUnavailableError(
            "image files are put into STORAGE_URL by the producer, which needs the worker extra here "
            f"(not installed: {', '.join(missing)}): {WORKER_EXTRA}; or give the image as a URL"
        ) from exc
    return storage


def upload(
    storage: InputStorage, job_id: str, images: Mapping[ImageRole, ImageSource], files: Mapping[str, ImageFile]
) -> dict[ImageRole, ImageSource]:
    """Put the image `files` of job `job_id` (by role) into `storage` and return `images`
    with each uploaded one's `uri` set. Raises InputUploadError after deleting what it had
    put, so a failure leaves nothing behind."""
    done: dict[ImageRole, ImageSource] = dict(images)
    put: list[str] = []
    name = ""
    try:
        for role in IMAGE_ROLES:
            file = files.get(role)
            if file is None:
                continue
            name = file.name
            source = images[role]
            if not isinstance(source, ImageUpload):
                raise InputUploadError(f"the {role} image of job {job_id} is not an upload")
            uri = storage.put(input_object_key(job_id, role, file.mime_type), file.data, file.mime_type)
            put.append(uri)
            done[role] = source.model_copy(update={"uri": uri})
    except StorageError as exc:
        delete_quietly(storage, put)
        raise InputUploadError(f"cannot put the image {name!r} into storage: {exc}") from exc
    return done


def uploaded_uris(record: JobRecord) -> list[str]:
    """The URIs of the record's input images in object storage."""
    return [s.uri for s in record.request.images.values() if isinstance(s, ImageUpload) and s.uri]


def delete_quietly(storage: InputStorage, uris: list[str]) -> bool:
    """Delete `uris`; True when all are gone, False (logged) when the storage refused one."""
    for uri in uris:
        try:
            storage.delete(uri)
        except StorageError as exc:
            log.warning("cannot delete an input image", extra={"uri": uri, "reason": str(exc)})
            return False
    return True


def release_at(record: JobRecord) -> float | None:
    """When the inputs of `record`, a job that just ended, are to be deleted (epoch s), or
    None when it has none in storage: at once for a success, `RETRY_GRACE_S` after the end
    otherwise (a retry copies them)."""
    if not uploaded_uris(record):
        return None
    ended = (record.finished_at or record.updated_at).timestamp()
    return ended if record.status is JobStatus.SUCCEEDED else ended + RETRY_GRACE_S


def release(client: redis.Redis, storage: InputStorage, record: JobRecord) -> bool:
    """Delete the inputs of `record` and take it out of the release index; False (and left
    listed, for the sweep, `RELEASE_RETRY_S` from now) when the storage refused."""
    if not delete_quietly(storage, uploaded_uris(record)):
        # Listed again behind the jobs due now, so that the sweep's batch is not taken up for
        # ever by deletes that keep failing. XX: only while it is listed (a concurrent release
        # may have taken it out).
        client.zadd(keys.INPUTS_RELEASE_INDEX, {record.id: time.time() + RELEASE_RETRY_S}, xx=True)
        return False
    client.zrem(keys.INPUTS_RELEASE_INDEX, record.id)
    return True


def release_due(
    client: redis.Redis, storage: InputStorage, load: JobLoader, now: float | None = None, limit: int = 200
) -> int:
    """Delete the inputs of up to `limit` jobs due by `now` (epoch s; default: now) in the
    release index (`load` reads a job's record); returns how many jobs were released."""
    when = time.time() if now is None else now
    ids: list[str] = client.zrangebyscore(keys.INPUTS_RELEASE_INDEX, "-inf", when, start=0, num=limit)  # type: ignore[assignment]
    released = 0
    for job_id in ids:
        record = load(job_id)
        if record is None:  # the record is gone: nothing says where its inputs were
            client.zrem(keys.INPUTS_RELEASE_INDEX, job_id)
            continue
        if release(client, storage, record):
            released += 1
    return released


class JobLoader(Protocol):
    """Reads a job's record by id (`JobStore.get`)."""

    def __call__(self, job_id: str) -> JobRecord | None: ...
