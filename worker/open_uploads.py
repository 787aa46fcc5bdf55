"""The ids of open S3 multipart uploads, in Redis (worker.storage.base.OpenUploads): a
store attempt records each upload it opens and forgets it once completed or aborted; the
next attempt at the same key aborts whatever is still recorded. The workers need no
`s3:ListBucketMultipartUploads` for this, only `s3:AbortMultipartUpload` on their own
uploads."""

from __future__ import annotations

import redis

from videoqueue import keys

TTL_S = 7 * 86400
"""How long an id is kept: past it a bucket lifecycle rule (AbortIncompleteMultipartUpload,
docs/production.md) aborts the upload if no attempt did."""


class RedisOpenUploads:
    """OpenUploads in a Redis set per object URI (keys.open_uploads_key)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def add(self, uri: str, upload_id: str) -> None:
        key = keys.open_uploads_key(uri)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.sadd(key, upload_id)
            pipe.expire(key, TTL_S)
            pipe.execute()

    def remove(self, uri: str, upload_id: str) -> None:
        self.client.srem(keys.open_uploads_key(uri), upload_id)

    def ids(self, uri: str) -> list[str]:
        members = self.client.smembers(keys.open_uploads_key(uri))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)  # type: ignore[union-attr]
