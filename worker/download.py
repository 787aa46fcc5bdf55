"""Streaming a finished video over HTTP, chunk by chunk, never whole in memory; and a
user's input image, through the URL guard.

`stream_url` fetches the provider's own result URLs (ModelArk's video_url, Vertex's GCS
objects), not URLs a user gave: it is not guarded. `fetch_image` fetches URLs users give
and is (videoqueue.urlguard)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from videoqueue.job import ErrorCode
from videoqueue.urlguard import (
    AllowList,
    FetchLimits,
    ForbiddenURLError,
    URLFetchError,
    URLStatusError,
    URLTooLargeError,
    open_url,
)
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


def fetch_image(url: str, allow: AllowList, max_bytes: int, timeout_s: float) -> tuple[bytes, str]:
    """Download a user's input image (for providers that take bytes, not URLs) through the
    URL guard (videoqueue.urlguard): no internal address, redirects checked, at most
    `max_bytes`, the whole fetch within `timeout_s` seconds. Returns (bytes, MIME type).

    Raises ProviderError: INVALID_REQUEST (not retried: the input is at fault) for a URL the
    guard refuses (`allow`: trusted internal hosts), an image over `max_bytes` or anything
    that is not a PNG, JPEG or WebP image; NOT_FOUND for an HTTP 4xx; UPSTREAM for 5xx and
    429; TIMEOUT (retried) for a deadline passed or a network failure. Each with
    `request_sent=False`: it happens before the provider is called."""
    from videoqueue.images import sniff_image_type

    limits = FetchLimits(max_bytes=max_bytes, timeout_s=timeout_s)
    try:
        with open_url(url, allow, limits) as response:
            data = response.read()
    except ForbiddenURLError as exc:
        raise ProviderError(ErrorCode.INVALID_REQUEST, f"image URL refused: {exc}", request_sent=False) from exc
    except URLTooLargeError as exc:
        raise ProviderError(
            ErrorCode.INVALID_REQUEST, f"image at {url} is over {max_bytes} bytes", request_sent=False
        ) from exc
    except URLStatusError as exc:
        if exc.status >= 500 or exc.status == 429:
            raise ProviderError(
                ErrorCode.UPSTREAM, f"image download answered HTTP {exc.status}", request_sent=False
            ) from exc
        raise ProviderError(
            ErrorCode.NOT_FOUND,
            f"image URL answered HTTP {exc.status} (expired, removed or not allowed)",
            request_sent=False,
        ) from exc
    except URLFetchError as exc:  # timeouts, refused connections, broken transfers
        raise ProviderError(ErrorCode.TIMEOUT, f"image download failed: {exc}", request_sent=False) from exc
    mime = sniff_image_type(data[:16])
    if mime is None:
        raise ProviderError(ErrorCode.INVALID_REQUEST, f"{url} is not a PNG, JPEG or WebP image", request_sent=False)
    return data, mime
