"""`videoqueue doctor`'s probe of S3 storage: the calls a store attempt makes, with the
workers' own client, each failure named with the operation and the IAM action it needs.

1. PutObject of a small JSON (a manifest)                          s3:PutObject
2. a multipart upload through boto3's managed transfer, as a video:
   CreateMultipartUpload, UploadPart, CompleteMultipartUpload       s3:PutObject
3. CreateMultipartUpload then AbortMultipartUpload of another key    s3:AbortMultipartUpload
4. HeadObject and GetObject of both objects, compared               s3:GetObject
5. DeleteObject of both (the probe's own `_doctor/` keys only)      s3:DeleteObject

A failure of 1-4 fails the check; of 5 only warns (the workers never delete).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.exceptions import BotoCoreError, ClientError

from worker.probe import Probe, Status
from worker.storage.base import PROBE_PREFIX
from worker.storage.s3 import PART_BYTES, checksum_hint

if TYPE_CHECKING:
    from worker.storage.s3 import S3Storage

T = TypeVar("T")

DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled"})
PERMISSIONS = {
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "DeleteObject": "s3:DeleteObject",
}
# A multipart upload of one small part: the part may be under S3's 5 MiB minimum, being the last.
_MULTIPART = TransferConfig(multipart_threshold=1, multipart_chunksize=PART_BYTES, use_threads=False)
# Starts like an MP4 (an `ftyp` box), as a stored video does.
_VIDEO = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"videoqueue doctor probe\n" * 40


class ProbeFailed(Exception):
    """One call of the probe failed; the message names the call and what it needs."""


def probe_s3(storage: S3Storage) -> Probe:
    """Run the probe against `storage` (module docstring); the detail names no secret."""
    where = f"s3://{storage.bucket}/{storage.prefix}".rstrip("/")
    resource = f"arn:aws:s3:::{storage.bucket}/{storage.prefix + '/' if storage.prefix else ''}*"
    run = _Run(storage, resource)
    base = f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}"
    manifest_key, video_key, aborted_key = f"{base}.json", f"{base}.mp4", f"{base}-aborted.mp4"
    manifest = json.dumps({"videoqueue_doctor": uuid.uuid4().hex, "written_at": time.time()}).encode()
    client, bucket = storage.client, storage.bucket
    try:
        run.call(
            "PutObject",
            manifest_key,
            lambda: client.put_object(Bucket=bucket, Key=run.key(manifest_key), Body=manifest),
        )
        run.call("CreateMultipartUpload", video_key, lambda: _multipart_upload(storage, video_key))
        created = run.call(
            "CreateMultipartUpload",
            aborted_key,
            lambda: client.create_multipart_upload(Bucket=bucket, Key=run.key(aborted_key), ContentType="video/mp4"),
        )
        upload_id = created["UploadId"]
        run.call(
            "AbortMultipartUpload",
            aborted_key,
            lambda: client.abort_multipart_upload(Bucket=bucket, Key=run.key(aborted_key), UploadId=upload_id),
        )
        for key, body in ((video_key, _VIDEO), (manifest_key, manifest)):
            held = run.call("HeadObject", key, partial(client.head_object, Bucket=bucket, Key=run.key(key)))
            read = run.call("GetObject", key, partial(_read, storage, key))
            if int(held["ContentLength"]) != len(body) or read != body:
                raise ProbeFailed(f"read back something else than was written to {storage.uri(key)}")
    except ProbeFailed as exc:
        for key in (video_key, manifest_key):
            with contextlib.suppress(BotoCoreError, ClientError):
                client.delete_object(Bucket=bucket, Key=run.key(key))
        return Probe(Status.FAIL, f"cannot write to {where}: {exc}")
    try:
        for key in (video_key, manifest_key):
            run.call("DeleteObject", key, partial(client.delete_object, Bucket=bucket, Key=run.key(key)))
    except ProbeFailed as exc:
        return Probe(Status.WARN, f"stored and read back a probe under {where}, but cannot delete it: {exc}")
    return Probe(Status.OK, f"wrote, read back and deleted a probe under {where}")


def _read(storage: S3Storage, key: str) -> bytes:
    body: bytes = storage.client.get_object(Bucket=storage.bucket, Key=storage.object_key(key))["Body"].read()
    return body


def _multipart_upload(storage: S3Storage, key: str) -> None:
    """The workers' upload path (boto3's managed transfer), made multipart for a small body."""
    with create_transfer_manager(storage.client, _MULTIPART) as manager:
        future = manager.upload(
            io.BytesIO(_VIDEO), storage.bucket, storage.object_key(key), {"ContentType": "video/mp4"}
        )
        future.result()


class _Run:
    def __init__(self, storage: S3Storage, resource: str) -> None:
        self.storage = storage
        self.resource = resource

    def key(self, key: str) -> str:
        return self.storage.object_key(key)

    def call(self, operation: str, key: str, call: Callable[[], T]) -> T:
        """`call()`, a failure raised as ProbeFailed naming the operation S3 reports
        (boto3's transfer runs several) and, when refused, the action it needs."""
        uri = self.storage.uri(key)
        try:
            return call()
        except ClientError as exc:
            failed = exc.operation_name or operation
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in DENIED_CODES:
                needed = PERMISSIONS.get(failed, "the matching s3: action")
                raise ProbeFailed(
                    f"{failed} of {uri} refused ({code}): the credentials need {needed} on {self.resource}"
                ) from None
            raise ProbeFailed(f"{failed} of {uri} failed: {exc}{checksum_hint(exc, self.storage.checksums)}") from None
        except BotoCoreError as exc:
            raise ProbeFailed(f"{operation} of {uri} failed: {exc}") from None
