"""The simulator's videos: real, decodable MP4s (H.264 + AAC) of a requested duration and
aspect ratio, small (WIDTH pixels wide), made with PyAV once per shape and kept in memory.

Each shape comes in VARIANTS clips; a task's clip is picked by its id (`variant_of`), so
two tasks' videos differ (unless their ids collide modulo VARIANTS). Every frame shows its
number and the clip's variant in big digits on a background of the variant's colour, so a
last frame can be told from any other; the sound is a tone of the variant's pitch (10 + variant periods per 64 ms). The
clips of one shape are padded (an MP4 `free` box) to one size, so a shape's download size
does not depend on the task (`simulator.mp4.video_size`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import struct
import tempfile
import threading
import zlib
from array import array
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.audio.frame import AudioFrame
from av.container import OutputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter

from worker import media

WIDTH = 160
FPS = 24
VARIANTS = 8
AUDIO_RATE = 16_000
AUDIO_BIT_RATE = 24_000
TONE_SAMPLES = 1024  # one AAC frame
# Height over width of each ratio the providers take ("adaptive" renders as 16:9).
RATIOS = {
    "16:9": Fraction(9, 16),
    "4:3": Fraction(3, 4),
    "1:1": Fraction(1, 1),
    "3:4": Fraction(4, 3),
    "9:16": Fraction(16, 9),
    "21:9": Fraction(9, 21),
    "adaptive": Fraction(9, 16),
}
# A 3x5 pixel font of the ten digits, one string of 15 bits per digit, row by row.
_FONT = (
    "111101101101111",
    "010110010010111",
    "111001111100111",
    "111001111001111",
    "101101111001001",
    "111100111001111",
    "111100111101111",
    "111001010010010",
    "111101111101111",
    "111101111001111",
)
_SCALE = 4  # pixels per font pixel


@dataclass(frozen=True)
class Shape:
    """What a clip is made for: seconds and aspect ratio."""

    duration_s: int
    ratio: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, both even (H.264 in yuv420p needs it)."""
        height = round(WIDTH * RATIOS.get(self.ratio, RATIOS["16:9"]))
        return WIDTH, height + height % 2


def variant_of(task_id: str) -> int:
    """The clip variant of a task: stable for its id."""
    return zlib.crc32(task_id.encode()) % VARIANTS


def colour(variant: int) -> tuple[int, int, int]:
    """The background colour (RGB) of a variant: hues spread around the wheel."""
    hue = variant / VARIANTS
    sector, rest = divmod(hue * 6, 1)
    up, down = round(200 * rest) + 40, round(200 * (1 - rest)) + 40
    return [(240, up, 40), (down, 240, 40), (40, 240, up), (40, down, 240), (up, 40, 240), (240, 40, down)][int(sector)]


def _draw_number(pixels: bytearray, width: int, number: int, x0: int, y0: int) -> None:
    for position, digit in enumerate(str(number)):
        glyph = _FONT[int(digit)]
        left = x0 + position * 4 * _SCALE
        for row in range(5):
            for col in range(3):
                if glyph[row * 3 + col] == "1":
                    for y in range(y0 + row * _SCALE, y0 + (row + 1) * _SCALE):
                        start = (y * width + left + col * _SCALE) * 3
                        pixels[start : start + _SCALE * 3] = b"\xff" * (_SCALE * 3)


def frame_rgb(shape: Shape, variant: int, index: int) -> bytes:
    """The RGB24 pixels of frame `index` of a clip: the frame number (top left) and the
    variant (below it) in white on the variant's colour."""
    width, height = shape.size
    pixels = bytearray(bytes(colour(variant)) * (width * height))
    _draw_number(pixels, width, index, 4, 4)
    if height >= 10 * _SCALE:
        _draw_number(pixels, width, variant, 4, 4 + 6 * _SCALE)
    return bytes(pixels)


def _video_frame(shape: Shape, variant: int, index: int) -> VideoFrame:
    width, height = shape.size
    frame = VideoFrame(width, height, "rgb24")
    plane = frame.planes[0]
    data = frame_rgb(shape, variant, index)
    row = width * 3
    if plane.line_size == row:
        plane.update(data)
    else:
        view = memoryview(plane)
        for y in range(height):
            view[y * plane.line_size : y * plane.line_size + row] = data[y * row : (y + 1) * row]
    frame.pts = index
    frame.time_base = Fraction(1, FPS)
    return frame


def _tone(variant: int) -> bytes:
    """One audio frame (TONE_SAMPLES, s16 mono) of the variant's tone: a whole number of
    periods, so every frame of a clip is the same and it is computed once."""
    periods = 10 + variant
    wave = (round(8000 * math.sin(2 * math.pi * periods * n / TONE_SAMPLES)) for n in range(TONE_SAMPLES))
    return array("h", wave).tobytes()


def _audio_frame(tone: bytes, start: int, count: int) -> AudioFrame:
    frame = AudioFrame(format="s16", layout="mono", samples=count)
    frame.planes[0].update(tone[: count * 2])
    frame.sample_rate = AUDIO_RATE
    frame.pts = start
    frame.time_base = Fraction(1, AUDIO_RATE)
    return frame


def make_clip(shape: Shape, variant: int) -> bytes:
    """Encode one clip: `shape.duration_s` seconds at FPS frames per second, H.264
    (ultrafast, a key frame every second) and AAC mono, as an MP4."""
    width, height = shape.size
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        assert isinstance(container, OutputContainer)
        options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(FPS)}
        video = container.add_stream("libx264", rate=FPS, options=options)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        audio.bit_rate = AUDIO_BIT_RATE
        to_yuv = VideoReformatter()  # one swscale context for the clip, not one per frame
        for index in range(shape.duration_s * FPS):
            frame = to_yuv.reformat(_video_frame(shape, variant, index), format="yuv420p")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        total, tone = shape.duration_s * AUDIO_RATE, _tone(variant)
        for start in range(0, total, TONE_SAMPLES):
            container.mux(audio.encode(_audio_frame(tone, start, min(TONE_SAMPLES, total - start))))
        container.mux(audio.encode(None))
    return out.getvalue()


def _free_box(size: int) -> bytes:
    return struct.pack(">I4s", size, b"free") + bytes(size - 8)


# Made clips also go to a folder shared by the machine's simulator processes (tests start
# many), named by what decides their bytes: this generator's version and PyAV's.
GENERATOR_VERSION = 1
CACHE_DIR = Path(tempfile.gettempdir()) / f"videoqueue-sim-clips-{GENERATOR_VERSION}-av{av.__version__}"

_lock = threading.Lock()
_clips: dict[Shape, tuple[bytes, ...]] = {}


def _cached_clip(shape: Shape, variant: int) -> bytes:
    """One unpadded clip from CACHE_DIR, made and written there (atomically) if missing."""
    path = CACHE_DIR / f"{shape.duration_s}s-{shape.ratio.replace(':', 'x')}-{variant}.mp4"
    with contextlib.suppress(OSError):
        return path.read_bytes()
    data = make_clip(shape, variant)
    with contextlib.suppress(OSError):  # no cache is only slower
        CACHE_DIR.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=CACHE_DIR, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    return data


def clips(shape: Shape) -> tuple[bytes, ...]:
    """The VARIANTS clips of `shape`, each padded to the same size; made on first use (in
    this process, or read from CACHE_DIR)."""
    with _lock:
        made = _clips.get(shape)
        if made is None:
            raw = [_cached_clip(shape, variant) for variant in range(VARIANTS)]
            size = max(map(len, raw)) + 8
            made = tuple(clip + _free_box(size - len(clip)) for clip in raw)
            _clips[shape] = made
        return made


def clip(shape: Shape, variant: int) -> bytes:
    """One clip of `shape` (see `clips`)."""
    return clips(shape)[variant % VARIANTS]


@functools.lru_cache(maxsize=256)
def last_frame_png(shape: Shape, variant: int) -> bytes:
    """The last frame of a clip as PNG: decoded from the clip by worker/media.py, so it is
    byte for byte what the worker takes from the stored video."""
    return media.last_frame_png(io.BytesIO(clip(shape, variant)))
