"""Streaming a finished video over HTTP, chunk by chunk, never whole in memory."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from videoqueue.job import ErrorCode
from worker.providers.base import ProviderError, VideoStream

# Slices of a video that is already in memory (Veo's inline bytes).
CHUNK_BYTES = 1024 * 1024


@contextmanager
def stream_url(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> Iterator[VideoStream]:
    """Open `url` for streaming; HTTP and network failures become ProviderError.

    A video is asked for as it is (`Accept-Encoding: identity`). A host that compresses it
    anyway is decoded here, and then the announced size is not the video's: `size` is the
    Content-Length only when the body is sent unencoded, so the checks downstream (size,
    MP4 signature) always look at the decoded video."""
    wanted = {**(headers or {}), "Accept-Encoding": "identity"}
    try:
        with client.stream("GET", url, headers=wanted) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise ProviderError(ErrorCode.UPSTREAM, f"download answered HTTP {response.status_code}")
            if response.status_code >= 400:
                raise ProviderError(
                    ErrorCode.NOT_FOUND,
                    f"URL answered HTTP {response.status_code} (expired, removed or not allowed)",
                )
            encodings = _encodings(response)
            size: int | None = None
            if not encodings:
                length = response.headers.get("content-length")
                size = int(length) if length and length.isdigit() else None
            # gzip is decoded here; anything else httpx decodes as far as it knows how.
            chunks = _gunzipped(response) if encodings == ["gzip"] else _chunks(response)
            yield VideoStream(chunks=chunks, size=size)
    except httpx.TimeoutException as exc:
        raise ProviderError(ErrorCode.TIMEOUT, f"download timed out: {exc!r}") from exc
    except httpx.HTTPError as exc:
        raise ProviderError(ErrorCode.TIMEOUT, f"download broke: {exc!r}") from exc


def _encodings(response: httpx.Response) -> list[str]:
    """The Content-Encoding codings applied to the body, `identity` left out."""
    value = response.headers.get("content-encoding", "")
    codings = [c.strip().lower() for c in value.split(",")]
    return ["gzip" if c == "x-gzip" else c for c in codings if c and c != "identity"]


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    # Chunks as they come off the socket (at most 64 KiB): re-chunking them to a fixed
    # size would copy every byte twice into fresh buffers, for nothing the consumers need.
    yield from response.iter_bytes()


def _gunzipped(response: httpx.Response) -> Iterator[bytes]:
    """A gzip body decoded here rather than by httpx, whose decoder accepts a stream that
    stops early: a compressed stream cut short is a broken download (retried), not a
    shorter video."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        for raw in response.iter_raw():
            data = decoder.decompress(raw)
            if data:
                yield data
        tail = decoder.flush()
    except zlib.error as exc:
        raise ProviderError(ErrorCode.UPSTREAM, f"download is not valid gzip: {exc}") from exc
    if tail:
        yield tail
    if not decoder.eof:
        raise ProviderError(ErrorCode.TIMEOUT, "download broke: the gzip stream ended before its end marker")


def fetch_image(client: httpx.Client, url: str, max_bytes: int) -> tuple[bytes, str]:
    """Download an input image (for providers that take bytes, not URLs), refusing more
    than `max_bytes` and anything that is not a PNG, JPEG or WebP image."""
    from videoqueue.images import sniff_image_type

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
