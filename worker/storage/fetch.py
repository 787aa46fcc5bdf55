"""A stored video onto this machine (`videoqueue fetch`), and a presigned link to one in S3
(`videoqueue url`), from the URI a job record holds (`output_uri`).

The file is streamed (never whole in memory) into a temporary file beside the target,
its size checked against what storage holds (and against the job's manifest where it can
be read), then renamed into place: the target is either absent or the whole video.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from videoqueue.errors import StorageError
from videoqueue.settings import Settings
from worker.storage import storage_at

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

COPY_CHUNK_BYTES = 1024 * 1024
MAX_PRESIGN_S = 7 * 86400
"""S3's limit for a SigV4 presigned link: seven days."""


class FetchError(StorageError):
    """A video could not be fetched or linked; the message is one line naming the cause."""


@dataclass(frozen=True)
class Fetched:
    """A video written to `path`, `size` bytes, read from `uri`."""

    path: Path
    size: int
    uri: str


@dataclass(frozen=True)
class _S3Object:
    bucket: str
    key: str


def _s3_object(uri: str) -> _S3Object | None:
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return None
    if not parts.netloc or not parts.path.strip("/"):
        raise FetchError(f"{uri} names no S3 object")
    return _S3Object(parts.netloc, parts.path.lstrip("/"))


def _local_path(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme != "file":
        return None
    return Path(unquote(parts.path))


def fetch_video(
    uri: str,
    dest: Path,
    settings: Settings,
    *,
    manifest_uri: str | None = None,
    overwrite: bool = False,
) -> Fetched:
    """Copy the video at `uri` (`file://` or `s3://`, as in a job's `output_uri`) to `dest`.

    Refuses an existing `dest` unless `overwrite`. S3 is reached with this machine's
    settings (S3_ENDPOINT_URL, AWS_*). Raises FetchError: no such object, storage
    unreachable or refusing, credentials missing, size not as stored, `dest` exists or
    cannot be written."""
    if dest.exists() and not overwrite:
        raise FetchError(f"{dest} already exists (give --force to replace it)")
    expected = _manifest_size(manifest_uri, settings) if manifest_uri else None
    s3 = _s3_object(uri)
    local = _local_path(uri)
    if s3 is not None:
        client = _client(settings)
        held = _s3_call(uri, settings, lambda: client.head_object(Bucket=s3.bucket, Key=s3.key))
        size = int(held["ContentLength"])

        def copy(out: BinaryIO) -> None:
            _s3_call(uri, settings, lambda: client.download_fileobj(s3.bucket, s3.key, out))

    elif local is not None:
        if not local.is_file():
            raise FetchError(
                f"no file at {local} on this machine (a local-folder storage is read where its worker wrote it)"
            )
        size = local.stat().st_size

        def copy(out: BinaryIO) -> None:
            with local.open("rb") as source:
                shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)

    else:
        raise FetchError(f"cannot fetch {uri}: only file:// and s3:// locations are known")
    if expected is not None and expected != size:
        raise FetchError(f"{uri} holds {size} bytes, its manifest says {expected}")
    written = _write_atomic(dest, copy, overwrite, size, uri)
    return Fetched(dest, written, uri)


def presigned_url(uri: str, settings: Settings, expires_s: int) -> str:
    """A link anyone can GET for `expires_s` seconds (1 to seven days), for a video in S3,
    signed with this machine's credentials for S3_ENDPOINT_URL (or AWS). Checks the object
    exists first. Raises FetchError: not in S3 (a `file://` location names it), no such
    object, storage unreachable, credentials missing."""
    if not 1 <= expires_s <= MAX_PRESIGN_S:
        raise FetchError(f"--expires must be 1 to {MAX_PRESIGN_S} seconds (S3's limit), not {expires_s}")
    s3 = _s3_object(uri)
    if s3 is None:
        raise FetchError(f"the video is not in S3 but at {uri}: there is no link to sign (videoqueue fetch copies it)")
    client = _client(settings)
    _s3_call(uri, settings, lambda: client.head_object(Bucket=s3.bucket, Key=s3.key))
    url: str = _s3_call(
        uri,
        settings,
        lambda: client.generate_presigned_url(
            "get_object", Params={"Bucket": s3.bucket, "Key": s3.key}, ExpiresIn=expires_s
        ),
    )
    return url


def _client(settings: Settings) -> S3Client:
    from worker.storage.s3 import s3_client

    return s3_client(settings)


def _s3_call(uri: str, settings: Settings, call: Callable[[], Any]) -> Any:
    """`call()`, its S3 failures as one-line FetchErrors naming the cause."""
    where = settings.s3_endpoint_url or "AWS S3"
    try:
        return call()
    except (NoCredentialsError, PartialCredentialsError):
        raise FetchError(
            f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)"
        ) from None
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            raise FetchError(f"no object at {uri} ({where})") from None
        if code in {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            # A key without s3:ListBucket is answered 403, not 404, for an object that is gone.
            raise FetchError(
                f"{where} refused access to {uri} ({code}): check the AWS_* credentials (they need s3:GetObject; "
                "without s3:ListBucket a missing object is refused too)"
            ) from None
        raise FetchError(f"{where} answered {code or 'an error'} for {uri}: {exc}") from None
    except BotoCoreError as exc:
        raise FetchError(f"S3 unreachable ({where}) for {uri}: {exc}; check S3_ENDPOINT_URL") from None


def _manifest_size(manifest_uri: str, settings: Settings) -> int | None:
    """The video size the job's manifest records, or None if it cannot be read."""
    try:
        found = storage_at(manifest_uri, settings)
        body = found[0].read(found[1]) if found is not None else None
        if body is None:
            return None
        video = json.loads(body).get("video") or {}
    except (StorageError, ValueError, AttributeError):
        return None  # the size storage holds is still checked
    size = video.get("bytes")
    return size if isinstance(size, int) else None


def _write_atomic(dest: Path, copy: Callable[[BinaryIO], None], overwrite: bool, size: int, uri: str) -> int:
    """Run `copy` into a temporary file beside `dest` and, if it wrote `size` bytes, rename
    it into place; returns the bytes written. Without `overwrite` a file that appeared at
    `dest` meanwhile is kept."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as exc:
        raise FetchError(f"cannot write in {dest.parent}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as out:
            copy(out)
            out.flush()
            os.fsync(out.fileno())
            written = out.tell()
        if written != size:
            raise FetchError(f"read {written} bytes from {uri}, storage holds {size}; nothing was written")
        if overwrite:
            os.replace(tmp, dest)
        else:
            _link_new(tmp, dest)
    except OSError as exc:
        raise FetchError(f"cannot write {dest}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return written


def _link_new(tmp: Path, dest: Path) -> None:
    """Put `tmp` at `dest` only if nothing is there: a hard link fails on an existing name."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise FetchError(f"{dest} already exists (give --force to replace it)") from None
    except OSError:
        # A filesystem without hard links: check, then rename.
        if dest.exists():
            raise FetchError(f"{dest} already exists (give --force to replace it)") from None
        os.replace(tmp, dest)
