"""Streaming a finished video over HTTP, chunk by chunk, never whole in memory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from producer.contract import ErrorCode
from worker.providers.base import ProviderError, VideoStream

# Slices of a video that is already in memory (Veo's inline bytes).
CHUNK_BYTES = 1024 * 1024


@contextmanager
def stream_url(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> Iterator[VideoStream]:
    """Open `url` for streaming; HTTP and network failures become ProviderError."""
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise ProviderError(ErrorCode.UPSTREAM, f"download answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ProviderError(
                    ErrorCode.NOT_FOUND,
                    f"URL answered HTTP {response.status_code} (expired, removed or not allowed)",
                )
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() else None
            yield VideoStream(chunks=_chunks(response), size=size)
    except httpx.TimeoutException as exc:
        raise ProviderError(ErrorCode.TIMEOUT, f"download timed out: {exc!r}") from exc
    except httpx.HTTPError as exc:
        raise ProviderError(ErrorCode.TIMEOUT, f"download broke: {exc!r}") from exc


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    # Chunks as they come off the socket (at most 64 KiB): re-chunking them to a fixed
    # size would copy every byte twice into fresh buffers, for nothing the consumers need.
    yield from response.iter_bytes()


def fetch_image(client: httpx.Client, url: str, max_bytes: int) -> tuple[bytes, str]:
    """Download an input image (for providers that take bytes, not URLs), refusing more
    than `max_bytes` and anything that is not a PNG, JPEG or WebP image."""
    from producer.images import sniff_image_type

    data = bytearray()
    with stream_url(client, url) as stream:
        for chunk in stream.chunks:
            data.extend(chunk)
            if len(data) > max_bytes:
                raise ProviderError(ErrorCode.INVALID_REQUEST, f"image at {url} is over {max_bytes} bytes")
    mime = sniff_image_type(bytes(data[:16]))
    if mime is None:
        raise ProviderError(ErrorCode.INVALID_REQUEST, f"{url} is not a PNG, JPEG or WebP image")
    return bytes(data), mime
