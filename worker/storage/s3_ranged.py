"""An S3 object read as a seekable file through ranged GETs, so PyAV can check a stored
video (worker/storage/base.py `MediaCheck`) without downloading it: reading an MP4's
headers, its index (`moov`, at the start or the end) and its first key frame takes a
few ranged GETs of BLOCK_BYTES."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from videoqueue.errors import StorageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BLOCK_BYTES = 1024 * 1024


class RangedObject(io.RawIOBase):
    """`size` bytes of `bucket`/`key`, read BLOCK_BYTES at a time (the last block kept).
    StorageError if a GET fails."""

    def __init__(self, client: S3Client, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self.client, self.bucket, self.key, self.size = client, bucket, key, size
        self.position = 0
        self.gets = 0
        self._block_start = -1
        self._block = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        done = 0
        while done < len(buffer) and self.position < self.size:
            start = self.position - self.position % BLOCK_BYTES
            if start != self._block_start:
                self._block = self._get(start, min(self.size, start + BLOCK_BYTES) - 1)
                self._block_start = start
            chunk = self._block[self.position - start : self.position - start + len(buffer) - done]
            buffer[done : done + len(chunk)] = chunk
            done += len(chunk)
            self.position += len(chunk)
        return done

    def _get(self, first: int, last: int) -> bytes:
        self.gets += 1
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={first}-{last}")["Body"]
            return body.read()
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 ranged read of s3://{self.bucket}/{self.key}: {exc}") from exc
