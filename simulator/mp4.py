"""The video served for a succeeded task (simulator/clips.py: a real clip of its shape),
optionally padded to any size.

Padding is a trailing MP4 `free` box, which players ignore, generated on the fly so that
multi-gigabyte downloads never sit in memory.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

from simulator.clips import Shape, clip, clips, variant_of

CHUNK_SIZE = 64 * 1024
_ZEROS = bytes(CHUNK_SIZE)
_MAX_32BIT_BOX = 0xFFFFFFFF


DEFAULT_SHAPE = Shape(5, "16:9")  # a ModelArk create that names neither
# What `[sim:badvideo]` serves: an `ftyp` box, then bytes no demuxer reads as a video.
UNDECODABLE = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\xa5" * 4000


def task_video(task_id: str, shape: Shape) -> bytes:
    """The clip a task serves: of its shape, the variant its id picks."""
    return clip(shape, variant_of(task_id))


def video_size(pad_bytes: int, shape: Shape = DEFAULT_SHAPE) -> int:
    """Return the size of the served file of a shape for a given padding size (every
    clip of a shape has the same size)."""
    return len(clips(shape)[0]) + pad_bytes


def free_box_header(box_size: int) -> bytes:
    """Return the header of a `free` box whose total size (header included) is ``box_size``."""
    if box_size <= _MAX_32BIT_BOX:
        return struct.pack(">I4s", box_size, b"free")
    # size == 1 means a 64-bit "largesize" follows the type; the header grows to 16 bytes.
    return struct.pack(">I4sQ", 1, b"free", box_size)


def padded_video(data: bytes, pad_bytes: int) -> bytes:
    """Return the whole served file at once, for APIs that answer videos inline."""
    if pad_bytes <= 0:
        return data
    header = free_box_header(pad_bytes)
    return data + header + bytes(pad_bytes - len(header))


async def iter_video(data: bytes, pad_bytes: int) -> AsyncIterator[bytes]:
    """Yield the video `data` followed by ``pad_bytes`` of `free` box, in 64 KiB chunks."""
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


def video_response(data: bytes, pad_bytes: int, trickle_s: float = 0.0) -> StreamingResponse:
    """Build a streaming ``video/mp4`` response of `data` and its padding with an exact
    Content-Length, sent over ``trickle_s`` seconds if that is set."""
    size = len(data) + pad_bytes
    body = iter_video(data, pad_bytes)
    if trickle_s > 0:
        body = trickled(body, size, trickle_s)
    return StreamingResponse(
        body,
        media_type="video/mp4",
        headers={"Content-Length": str(size), "Accept-Ranges": "none"},
    )
