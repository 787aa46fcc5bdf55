"""Storage in S3 or MinIO through boto3's managed transfer: large videos go up as a
multipart upload streamed from the source, with a bounded number of parts in memory, and
an upload that fails is aborted, so no partial object appears under the key."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from videoqueue.endpoints import Endpoint, fingerprint, host_of
from videoqueue.settings import Settings
from worker.probe import Probe
from worker.storage.base import (
    MediaCheck,
    OpenUploads,
    StorageError,
    StoredObject,
    VideoCheckError,
    checked_chunks,
)
from worker.storage.s3_ranged import RangedObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PART_BYTES = 8 * 1024 * 1024
UNKNOWN_UPLOAD = "?"
"""Recorded among an object's open upload ids after a failed attempt: S3 may hold an upload
of it whose id never reached us (CreateMultipartUpload's answer lost with the connection);
the next attempt lists the object's uploads, if the key may (S3Storage._abort_unknown)."""
CHECKSUM_SETTING = "S3_CHECKSUMS"
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

log = logging.getLogger("videoqueue.storage")


def s3_client(settings: Settings) -> S3Client:
    """The one way videoqueue builds an S3 client (store, doctor, costs rebuild, bench), so
    every client sends the same headers to the same endpoint.

    S3_CHECKSUMS decides whether boto3 (1.36+) adds its CRC checksum headers to every upload
    and validates them on downloads; several S3-compatible stores answer those headers with
    400 InvalidArgument "Unsupported header"."""
    secret = settings.aws_secret_access_key
    key_id = settings.aws_access_key_id
    checksums = settings.effective_s3_checksums
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id=key_id.get_secret_value() if key_id else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            read_timeout=60,
            s3={"addressing_style": "path"},
            # Presigned links (`videoqueue url`) would otherwise be signed with SigV2 for
            # us-east-1, which newer AWS regions and most S3-compatible stores refuse.
            signature_version="s3v4",
            request_checksum_calculation=checksums,
            response_checksum_validation=checksums,
        ),
    )
    return client


def refuses_checksum_headers(exc: BaseException) -> bool:
    """True when S3 refused a request for its checksum headers (B2, OVH, Qumulo and others
    answer 400 InvalidArgument "Unsupported header 'x-amz-checksum-crc32' ...")."""
    if not isinstance(exc, ClientError):
        return False
    error = exc.response.get("Error", {})
    message = str(error.get("Message", "")).lower()
    return error.get("Code") in {"InvalidArgument", "InvalidRequest", "NotImplemented"} and (
        "unsupported header" in message or "checksum" in message
    )


def storage_error(what: str, exc: BotoCoreError | ClientError, settings_checksums: str) -> StorageError:
    """A StorageError for a failed S3 call; one refused for its checksum headers names the
    setting that turns them off."""
    return StorageError(f"{what} failed: {exc}{checksum_hint(exc, settings_checksums)}")


def checksum_hint(exc: BaseException, checksums: str) -> str:
    """What to change when S3 refused boto3's checksum headers (else empty)."""
    if not refuses_checksum_headers(exc):
        return ""
    return (
        f"; this store refuses boto3's checksum headers ({CHECKSUM_SETTING}={checksums}): "
        f"set {CHECKSUM_SETTING}=when_required"
    )


class TransferCancelled(Exception):
    """The upload reading this source was interrupted."""


class IteratorReader:
    """A read()-able file over an iterator of chunks, as upload_fileobj wants.

    A part is joined once from the chunks it spans; only a chunk that straddles two
    parts is split."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._done = False
        self._cancelled = False
        self.bytes_read = 0

    def cancel(self) -> None:
        """Make every later read() raise TransferCancelled (from any thread)."""
        self._cancelled = True

    def read(self, size: int = -1) -> bytes:
        if self._cancelled:
            raise TransferCancelled("the upload was interrupted")
        while not self._done and (size < 0 or self._pending_bytes < size):
            if self._cancelled:
                raise TransferCancelled("the upload was interrupted")
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._done = True
                break
            self._pending.append(chunk)
            self._pending_bytes += len(chunk)
        if size < 0 or self._pending_bytes <= size:
            data = b"".join(self._pending)
            self._pending = []
        else:
            # Only the last chunk can reach past `size`: the loop stopped once it did.
            last = self._pending[-1]
            cut = len(last) - (self._pending_bytes - size)
            self._pending[-1] = last[:cut]
            data = b"".join(self._pending)
            self._pending = [last[cut:]]
        self._pending_bytes -= len(data)
        self.bytes_read += len(data)
        return data


class S3Storage:
    """Videos and manifests under `s3://bucket/prefix/`."""

    @staticmethod
    def endpoint(settings: Settings) -> Endpoint:
        """The storage endpoint of `settings` (STORAGE_URL `s3://bucket/prefix`): host is the
        bucket at the S3 endpoint's host; the fingerprint covers the storage URL, the
        endpoint and the access key id (never the secret)."""
        url = settings.storage_url
        bucket = urlsplit(url).netloc
        endpoint = settings.s3_endpoint_url or f"https://s3.{settings.aws_region}.amazonaws.com"
        key_id = settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else ""
        host = f"{bucket} at {host_of(endpoint)}"
        return Endpoint("storage", host, fingerprint("s3", url.rstrip("/"), endpoint.rstrip("/"), key_id))

    def __init__(self, bucket: str, prefix: str, settings: Settings, open_uploads: OpenUploads | None = None) -> None:
        """`open_uploads`: where the ids of the multipart uploads this storage opens are
        kept until completed or aborted (without it, uploads an attempt leaves open are
        left to the bucket's lifecycle rule)."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.checksums = settings.effective_s3_checksums
        self.client = s3_client(settings)
        self.transfer = TransferConfig(
            multipart_threshold=PART_BYTES,
            multipart_chunksize=PART_BYTES,
            max_concurrency=4,
            use_threads=True,
        )
        # A stream is read ahead into parts while others upload; boto3's default of ten
        # parts held (80 MiB) adds memory but no speed over the four in flight plus two.
        self.transfer.max_in_memory_upload_chunks = 6
        self.open_uploads = open_uploads
        self._lock = threading.Lock()
        self._opened_now: dict[str, list[str]] = {}
        self._retried_creates: set[str] = set()
        self._listing_refused = False
        self.client.meta.events.register("after-call.s3.CreateMultipartUpload", self._opened)

    def object_key(self, key: str) -> str:
        """The S3 object key of `key`: under the prefix."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key(self, key: str) -> str:
        return self.object_key(key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def size(self, key: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
                return None
            raise storage_error("S3 head", exc, self.checksums) from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 unreachable: {exc}") from exc
        return int(head["ContentLength"])

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
                return None
            raise storage_error(f"S3 read of {self.uri(key)}", exc, self.checksums) from exc
        except BotoCoreError as exc:
            raise storage_error(f"S3 read of {self.uri(key)}", exc, self.checksums) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(f"S3 delete of {self.uri(key)}", exc, self.checksums) from exc

    def probe(self) -> Probe:
        """The calls of a store attempt, as `videoqueue doctor` makes them
        (worker.storage.s3_probe)."""
        from worker.storage.s3_probe import probe_s3

        return probe_s3(self)

    def iter_json(self) -> Iterator[tuple[str, dict[str, Any]]]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"]
                    if key.endswith(".json") and "/" not in key[len(prefix) :]:
                        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
                        yield key[len(prefix) :], json.loads(body)
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(f"S3 listing of {self.uri('')}", exc, self.checksums) from exc

    def keys_starting_with(self, start: str, limit: int) -> list[str]:
        try:
            page = self.client.list_objects_v2(
                Bucket=self.bucket, Prefix=self._key(start), Delimiter="/", MaxKeys=limit
            )
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(f"S3 listing of {self.uri(start)}*", exc, self.checksums) from exc
        cut = len(self._key(""))
        return sorted(item["Key"][cut:] for item in page.get("Contents", []))

    def _opened(self, parsed: dict[str, Any] | None = None, **_: Any) -> None:
        """botocore's after-call hook of CreateMultipartUpload (in the transfer's threads):
        the new upload's id is recorded before any part is sent."""
        if not parsed or "UploadId" not in parsed or "Key" not in parsed:
            return
        uri = f"s3://{parsed.get('Bucket') or self.bucket}/{parsed['Key']}"
        retried = int(parsed.get("ResponseMetadata", {}).get("RetryAttempts", 0) or 0) > 0
        with self._lock:
            self._opened_now.setdefault(uri, []).append(parsed["UploadId"])
            if retried:
                # An earlier try of this create may have opened an upload whose answer was lost.
                self._retried_creates.add(uri)
        if self.open_uploads is not None:
            self.open_uploads.add(uri, parsed["UploadId"])

    def _abort(self, key: str, upload_id: str) -> bool:
        """Abort one multipart upload of `key` (s3:AbortMultipartUpload); True when it is
        gone (aborted now, or completed or aborted before), False when S3 refused or
        could not be reached."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return True
            log.warning(
                "open multipart upload not aborted",
                extra={"uri": self.uri(key), "upload_id": upload_id, "reason": str(exc)[:300]},
            )
            return False
        except BotoCoreError as exc:
            log.warning(
                "open multipart upload not aborted",
                extra={"uri": self.uri(key), "upload_id": upload_id, "reason": str(exc)[:300]},
            )
            return False
        return True

    def _abort_recorded(self, key: str, upload_ids: list[str]) -> None:
        """Abort the uploads of `key` in `upload_ids` and forget those that are gone; the
        rest stay recorded for the next attempt (and the bucket's lifecycle rule)."""
        uri = self.uri(key)
        for upload_id in upload_ids:
            if self._abort(key, upload_id) and self.open_uploads is not None:
                self.open_uploads.remove(uri, upload_id)

    def _abort_unknown(self, key: str) -> bool:
        """Best effort for uploads whose id never reached us (S3 opened one, its answer was
        lost with the connection): list the open uploads of `key` and abort them. Needs
        s3:ListBucketMultipartUploads, which the least-privilege policy leaves out: when it
        is refused this gives up for the process's life (the bucket's lifecycle rule covers
        them). True when done or refused, False when S3 could not be asked."""
        if self._listing_refused:
            return True
        object_key = self._key(key)
        try:
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=object_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"AccessDenied", "AllAccessDisabled"}:
                self._listing_refused = True
                return True
            log.warning("open multipart uploads not listed", extra={"uri": self.uri(key), "reason": str(exc)[:300]})
            return False
        except BotoCoreError:
            return False
        for upload in listing.get("Uploads", []):
            if upload.get("Key") == object_key:
                self._abort(key, upload["UploadId"])
        return True

    def put_video(
        self, key: str, chunks: Iterator[bytes], expected_size: int | None, check: MediaCheck | None = None
    ) -> StoredObject:
        """Stream `chunks` to `key` (a multipart upload past PART_BYTES). Uploads an earlier
        attempt left open at `key` (recorded in `open_uploads`) are aborted first; the
        upload this attempt opens is recorded until it is completed or aborted. Needs
        s3:PutObject and s3:AbortMultipartUpload, never a listing of the bucket's uploads.
        `check` reads the uploaded object by ranged GETs (s3:GetObject; the worker keeps no
        copy of the video) and deletes it if it fails."""
        uri = self.uri(key)
        if self.open_uploads is not None:
            recorded = self.open_uploads.ids(uri)
            self._abort_recorded(key, [upload_id for upload_id in recorded if upload_id != UNKNOWN_UPLOAD])
            if UNKNOWN_UPLOAD in recorded and self._abort_unknown(key):
                self.open_uploads.remove(uri, UNKNOWN_UPLOAD)
        reader = IteratorReader(checked_chunks(chunks, expected_size))
        try:
            self._upload(reader, key)
        except BaseException as exc:
            # boto3 aborts a failed upload itself, unless S3 is unreachable or the attempt
            # is interrupted (a soft time limit): abort again; what stays open is recorded,
            # and so is that an upload may be open whose id never reached us.
            self._abort_recorded(key, self._take_opened(uri))
            self._take_retried(uri)
            if self.open_uploads is not None:
                self.open_uploads.add(uri, UNKNOWN_UPLOAD)
            if isinstance(exc, (BotoCoreError, ClientError)):
                raise storage_error(f"S3 upload of {uri}", exc, self.checksums) from exc
            raise
        completed = self._take_opened(uri)
        if self.open_uploads is not None:
            for upload_id in completed:
                self.open_uploads.remove(uri, upload_id)
        if self._take_retried(uri):
            self._abort_unknown(key)
        if check is not None:
            self._check(key, reader.bytes_read, check)
        return StoredObject(uri=uri, size=reader.bytes_read)

    def _check(self, key: str, size: int, check: MediaCheck) -> None:
        uri = self.uri(key)
        try:
            check.verify(RangedObject(self.client, self.bucket, self._key(key), size), uri)
        except VideoCheckError:
            with contextlib.suppress(StorageError):
                self.delete(key)
            raise

    def _take_retried(self, uri: str) -> bool:
        with self._lock:
            if uri not in self._retried_creates:
                return False
            self._retried_creates.discard(uri)
            return True

    def _take_opened(self, uri: str) -> list[str]:
        with self._lock:
            return self._opened_now.pop(uri, [])

    def _upload(self, reader: IteratorReader, key: str) -> None:
        """boto3's managed upload (as `upload_fileobj`), whose source stops at once when
        the wait for it is interrupted: the transfer's shutdown waits for its threads, and
        the one reading a slow source would otherwise read the whole video first (a soft
        time limit would last until the hard one)."""
        with create_transfer_manager(self.client, self.transfer) as manager:
            future = manager.upload(
                reader,  # type: ignore[arg-type]
                self.bucket,
                self._key(key),
                extra_args={"ContentType": "video/mp4"},
            )
            try:
                future.result()
            except BaseException:
                reader.cancel()
                raise

    def put_json(self, key: str, data: dict[str, Any]) -> StoredObject:
        body = json.dumps(data, indent=2, sort_keys=True).encode()
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, ContentType="application/json")
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(f"S3 write of {self.uri(key)}", exc, self.checksums) from exc
        return StoredObject(uri=self.uri(key), size=len(body))

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise storage_error(f"S3 write of {self.uri(key)}", exc, self.checksums) from exc
        return StoredObject(uri=self.uri(key), size=len(data))
