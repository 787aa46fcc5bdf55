"""Streaming a finished video over HTTP, chunk by chunk, never whole in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from producer.contract import ErrorCode
from worker.providers.base import ProviderError, VideoStream

CHUNK_BYTES = 1024 * 1024


@contextmanager
def stream_url(client: httpx.Client, url: str) -> Iterator[VideoStream]:
    """Open `url` for streaming; HTTP and network failures become ProviderError."""
    try:
        with client.stream("GET", url) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise ProviderError(ErrorCode.UPSTREAM, f"video download answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ProviderError(
                    ErrorCode.NOT_FOUND,
                    f"video URL answered HTTP {response.status_code} (expired or removed)",
                )
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() else None
            yield VideoStream(chunks=_chunks(response), size=size)
    except httpx.TimeoutException as exc:
        raise ProviderError(ErrorCode.TIMEOUT, f"video download timed out: {exc!r}") from exc
    except httpx.HTTPError as exc:
        raise ProviderError(ErrorCode.TIMEOUT, f"video download broke: {exc!r}") from exc


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    yield from response.iter_bytes(CHUNK_BYTES)
