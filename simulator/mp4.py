"""The sample video served for succeeded tasks, optionally padded to any size.

Padding is a trailing MP4 `free` box, which players ignore, generated on the fly so that
multi-gigabyte downloads never sit in memory.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from functools import cache
from importlib import resources

from starlette.responses import StreamingResponse

CHUNK_SIZE = 64 * 1024
_ZEROS = bytes(CHUNK_SIZE)
_MAX_32BIT_BOX = 0xFFFFFFFF


@cache
def sample_bytes() -> bytes:
    """Return the bundled sample MP4 (about 33 KB, 2 s, H.264 + AAC)."""
    return resources.files("simulator").joinpath("assets/sample.mp4").read_bytes()


def video_size(pad_bytes: int) -> int:
    """Return the size of the served file for a given padding size."""
    return len(sample_bytes()) + pad_bytes


def free_box_header(box_size: int) -> bytes:
    """Return the header of a `free` box whose total size (header included) is ``box_size``."""
    if box_size <= _MAX_32BIT_BOX:
        return struct.pack(">I4s", box_size, b"free")
    # size == 1 means a 64-bit "largesize" follows the type; the header grows to 16 bytes.
    return struct.pack(">I4sQ", 1, b"free", box_size)


def padded_video(pad_bytes: int) -> bytes:
    """Return the whole served file at once, for APIs that answer videos inline."""
    if pad_bytes <= 0:
        return sample_bytes()
    header = free_box_header(pad_bytes)
    return sample_bytes() + header + bytes(pad_bytes - len(header))


async def iter_video(pad_bytes: int) -> AsyncIterator[bytes]:
    """Yield the sample video followed by ``pad_bytes`` of `free` box, in 64 KiB chunks."""
    data = sample_bytes()
    for start in range(0, len(data), CHUNK_SIZE):
        yield data[start : start + CHUNK_SIZE]
    if pad_bytes <= 0:
        return
    header = free_box_header(pad_bytes)
    yield header
    remaining = pad_bytes - len(header)
    while remaining > 0:
        size = min(remaining, CHUNK_SIZE)
        yield _ZEROS if size == CHUNK_SIZE else _ZEROS[:size]
        remaining -= size


TRICKLE_PIECE = 4 * 1024


async def trickled(chunks: AsyncIterator[bytes], total: int, seconds: float) -> AsyncIterator[bytes]:
    """Yield ``chunks`` re-cut into small pieces, spread evenly over ``seconds``."""
    pause = seconds / max(1, -(-total // TRICKLE_PIECE))
    async for chunk in chunks:
        for start in range(0, len(chunk), TRICKLE_PIECE):
            await asyncio.sleep(pause)
            yield chunk[start : start + TRICKLE_PIECE]


def video_response(pad_bytes: int, trickle_s: float = 0.0) -> StreamingResponse:
    """Build a streaming ``video/mp4`` response with an exact Content-Length, sent over
    ``trickle_s`` seconds if that is set."""
    body = iter_video(pad_bytes)
    if trickle_s > 0:
        body = trickled(body, video_size(pad_bytes), trickle_s)
    return StreamingResponse(
        body,
        media_type="video/mp4",
        headers={"Content-Length": str(video_size(pad_bytes)), "Accept-Ranges": "none"},
    )
