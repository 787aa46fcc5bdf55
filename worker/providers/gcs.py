"""Streaming a video Veo wrote to Cloud Storage (`output_gcs_uri`), with the worker's
Google application default credentials, through the GCS JSON API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import httpx

from videoqueue.job import ErrorCode
from worker.download import stream_url
from worker.providers.base import ProviderError, VideoStream

GCS_API = "https://storage.googleapis.com/storage/v1"
READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


def media_url(gcs_uri: str) -> str:
    """The JSON API URL that downloads the object `gs://bucket/path`."""
    if not gcs_uri.startswith("gs://") or "/" not in gcs_uri[5:]:
        raise ProviderError(ErrorCode.UPSTREAM, f"not a gs://bucket/object URI: {gcs_uri!r}")
    bucket, _, name = gcs_uri[5:].partition("/")
    return f"{GCS_API}/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}?alt=media"


def _access_token() -> str:
    import google.auth
    import google.auth.transport.requests

    try:
        credentials, _ = google.auth.default(scopes=[READ_SCOPE])
        credentials.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except Exception as exc:  # google.auth raises several unrelated types
        raise ProviderError(ErrorCode.AUTH, f"no Google credentials to read Cloud Storage: {exc}") from exc
    return str(credentials.token)


@contextmanager
def stream_gcs(http: httpx.Client, gcs_uri: str) -> Iterator[VideoStream]:
    """Open a Cloud Storage object for streaming."""
    url = media_url(gcs_uri)
    headers = {"Authorization": f"Bearer {_access_token()}"}
    with stream_url(http, url, headers=headers) as stream:
        yield stream
