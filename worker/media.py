"""What the worker reads from and makes of stored videos, with PyAV (FFmpeg's libraries):
a video's last frame as PNG (the first frame of a movie's next scene), its duration and
streams (the store step's check), and scenes joined into one MP4 (a movie).

Everything here is blocking and CPU-bound (a join that re-encodes takes about as long as
the scenes play at 1080p); callers run it in a worker task, never in an event loop.
Undecodable input raises `MediaError` (a `StorageError`: the stored object is not the
video it should be).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.stream import Stream
from av.video.frame import VideoFrame
from av.video.reformatter import VideoReformatter
from av.video.stream import VideoStream

from videoqueue.errors import StorageError

# What a joined movie is encoded as when its scenes cannot be stream-copied.
VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
AUDIO_RATE = 48_000
AUDIO_LAYOUT = "stereo"
DEFAULT_FPS = 24
# How far before the end the decode for the last frame starts (it seeks to the key frame
# at or before that point): enough for any provider's GOP, far less than a whole clip.
LAST_FRAME_WINDOW_S = 3.0


class MediaError(StorageError):
    """A video that cannot be opened or decoded (or has no video stream); the message
    names the file and FFmpeg's reason."""


@dataclass(frozen=True)
class VideoParams:
    """What decides whether two H.264 streams can be stream-copied one after the other."""

    codec: str
    width: int
    height: int
    pix_fmt: str | None
    profile: str | None
    # The SPS/PPS (avcC) of the stream: scenes that differ here cannot share one track.
    extradata: bytes | None


@dataclass(frozen=True)
class AudioParams:
    """What decides whether two audio streams can be stream-copied one after the other."""

    codec: str
    sample_rate: int
    channels: int
    profile: str | None
    extradata: bytes | None


@dataclass(frozen=True)
class MediaInfo:
    """A video file as `probe` reads it. `duration_s`: seconds, the container's (the
    longest stream's); `video`/`audio`: the first stream of each kind (audio None if none)."""

    duration_s: float
    width: int
    height: int
    video: VideoParams
    audio: AudioParams | None

    @property
    def has_audio(self) -> bool:
        """Whether the file has an audio stream."""
        return self.audio is not None


@dataclass(frozen=True)
class JoinResult:
    """A joined file: its duration in seconds, and whether the scenes' packets were copied
    (True) or decoded and re-encoded (False)."""

    duration_s: float
    copied: bool


Source = Path | io.IOBase
"""A video to read: a file, or an open binary file object (the simulator's clips in memory)."""


def _open(video: Source) -> InputContainer:
    try:
        return av.open(str(video) if isinstance(video, Path) else video, "r")
    except (av.error.FFmpegError, OSError) as exc:
        raise MediaError(f"cannot open {video} as a video: {exc}") from exc


def _video_stream(container: InputContainer, video: Source) -> VideoStream:
    if not container.streams.video:
        raise MediaError(f"{video} has no video stream")
    return container.streams.video[0]


def _duration_s(container: InputContainer) -> float:
    """The container's duration; else the longest stream's."""
    if container.duration is not None:
        return container.duration / av.time_base
    ends = [
        float(stream.duration * stream.time_base)
        for stream in container.streams
        if stream.duration is not None and stream.time_base is not None
    ]
    return max(ends, default=0.0)


def _video_params(stream: VideoStream) -> VideoParams:
    ctx = stream.codec_context
    return VideoParams(
        codec=ctx.name,
        width=ctx.width,
        height=ctx.height,
        pix_fmt=ctx.pix_fmt,
        profile=ctx.profile,
        extradata=ctx.extradata,
    )


def _audio_params(stream: AudioStream) -> AudioParams:
    ctx = stream.codec_context
    return AudioParams(
        codec=ctx.name,
        sample_rate=ctx.sample_rate,
        channels=ctx.channels,
        profile=ctx.profile,
        extradata=ctx.extradata,
    )


def probe(video: Source) -> MediaInfo:
    """Read `video`'s container: duration and the parameters of its first video and audio
    streams. Only headers are read (no frame is decoded). MediaError if it is not a video."""
    with _open(video) as container:
        return _info(container, video)


def _info(container: InputContainer, video: Source) -> MediaInfo:
    params = _video_params(_video_stream(container, video))
    audio = container.streams.audio[0] if container.streams.audio else None
    return MediaInfo(
        duration_s=_duration_s(container),
        width=params.width,
        height=params.height,
        video=params,
        audio=_audio_params(audio) if audio is not None else None,
    )


def verify(video: Source) -> MediaInfo:
    """`probe`, and decode the first video frame: what the store step's check asks of a
    stored video (reads the headers and the first key frame, not the whole file).
    MediaError if it is not a video or its first frame does not decode."""
    with _open(video) as container:
        info = _info(container, video)
        # One frame is decoded: FFmpeg's decoder threads (as many as CPUs, started for each
        # file opened) cost more than they save; without them the check takes about half
        # the CPU (docs/benchmarks.md section 2b).
        _video_stream(container, video).thread_type = "NONE"
        _first_frame(container, video)
        return info


def _first_frame(container: InputContainer, video: Source) -> VideoFrame:
    for frame in _decoded(container, _video_stream(container, video), video):
        return frame
    raise MediaError(f"{video} has no decodable video frame")


def _decoded(container: InputContainer, stream: VideoStream, video: Source) -> Iterator[VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot decode {video}: {exc}") from exc


def _last_frame(video: Source) -> VideoFrame:
    with _open(video) as container:
        stream = _video_stream(container, video)
        duration = _duration_s(container)
        last: VideoFrame | None = None
        if duration > LAST_FRAME_WINDOW_S and stream.time_base is not None:
            # Seek to the key frame before the window, then decode only the tail.
            target = int((duration - LAST_FRAME_WINDOW_S) / stream.time_base)
            try:
                container.seek(target, stream=stream, backward=True)
            except av.error.FFmpegError:
                container.seek(0)
        for frame in _decoded(container, stream, video):
            last = frame
        if last is None:
            container.seek(0)
            for frame in _decoded(container, stream, video):
                last = frame
        if last is None:
            raise MediaError(f"{video} has no decodable video frame")
        return last


def frame_png(frame: VideoFrame) -> bytes:
    """Encode one frame as a PNG (RGB, the frame's size) with FFmpeg's PNG encoder."""
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height = frame.width, frame.height
    encoder.pix_fmt = "rgb24"
    encoder.time_base = Fraction(1, 1)
    rgb = frame.reformat(format="rgb24")
    rgb.pts = 0
    packets = [*encoder.encode(rgb), *encoder.encode(None)]
    return b"".join(bytes(packet) for packet in packets)


def last_frame_png(video: Source) -> bytes:
    """The last decoded frame of `video` as PNG bytes (the frame's own size).
    MediaError if the file cannot be decoded or has no video frame."""
    return frame_png(_last_frame(video))


def join(scenes: Sequence[Path], out: Path) -> JoinResult:
    """Join `scenes`, in order, into one MP4 at `out` (H.264 video + AAC audio), each scene
    starting where the previous one ends (its container duration).

    Stream copy (packets remuxed, timestamps offset per scene) when every scene has the
    same video and audio parameters (`VideoParams`, `AudioParams`: H.264 and AAC), else
    decode and re-encode (to the first scene's size, silence where a scene has no audio).
    MediaError if a scene cannot be read, ValueError if `scenes` is empty. `out` is
    overwritten; on error it may hold a partial file (the caller writes to a temporary one).
    """
    if not scenes:
        raise ValueError("no scenes to join")
    infos = [probe(scene) for scene in scenes]
    first = infos[0]
    copy = (
        first.video.codec == "h264"
        and first.audio is not None  # a film without sound gets a silent AAC track
        and first.audio.codec == "aac"
        and all(info.video == first.video and info.audio == first.audio for info in infos)
    )
    try:
        if copy:
            _remux(scenes, infos, out)
        else:
            _reencode(scenes, infos, out)
    except av.error.FFmpegError as exc:
        raise MediaError(f"cannot join {len(scenes)} scenes into {out}: {exc}") from exc
    with _open(out) as container:
        duration = _duration_s(container)
    return JoinResult(duration_s=duration, copied=copy)


def _remux(scenes: Sequence[Path], infos: Sequence[MediaInfo], out: Path) -> None:
    with _open(scenes[0]) as template, av.open(str(out), "w", format="mp4") as dst:
        assert isinstance(dst, OutputContainer)
        outputs: dict[str, Stream] = {"video": dst.add_stream_from_template(template.streams.video[0])}
        if template.streams.audio:
            outputs["audio"] = dst.add_stream_from_template(template.streams.audio[0])
        last: dict[str, Fraction] = {}  # the last DTS written per stream, in seconds
        offset = Fraction(0)
        for scene, info in zip(scenes, infos, strict=True):
            with _open(scene) as src:
                streams = [src.streams.video[0], *src.streams.audio[:1]]
                for packet in src.demux(streams):
                    if packet.dts is None or packet.time_base is None:
                        continue  # the demuxer's flush packet
                    kind, base = packet.stream.type, packet.time_base
                    shift = round(offset / base)
                    dts, pts = packet.dts + shift, (packet.pts + shift if packet.pts is not None else None)
                    if kind in last and dts * base <= last[kind]:
                        # A scene's first packets start before the previous scene's last
                        # ones (AAC priming, B-frame reordering): drop the priming audio
                        # packet, move video DTS up as the ffmpeg CLI does.
                        if kind == "audio":
                            continue
                        dts = math.floor(last[kind] / base) + 1
                        pts = max(pts, dts) if pts is not None else None
                    packet.dts, packet.pts = dts, pts
                    last[kind] = dts * base
                    packet.stream = outputs[kind]
                    dst.mux(packet)
            offset += Fraction(info.duration_s).limit_denominator(1_000_000)


def _fps(scenes: Sequence[Path]) -> Fraction:
    with _open(scenes[0]) as container:
        rate = container.streams.video[0].average_rate
    return Fraction(rate) if rate else Fraction(DEFAULT_FPS)


def _reencode(scenes: Sequence[Path], infos: Sequence[MediaInfo], out: Path) -> None:
    first = infos[0]
    fps = _fps(scenes)
    width, height = first.width - first.width % 2, first.height - first.height % 2
    with av.open(str(out), "w", format="mp4") as dst:
        assert isinstance(dst, OutputContainer)
        vout = dst.add_stream(VIDEO_CODEC, rate=fps)
        aout = dst.add_stream(AUDIO_CODEC, rate=AUDIO_RATE, layout=AUDIO_LAYOUT)
        assert isinstance(vout, VideoStream) and isinstance(aout, AudioStream)
        vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
        resampler = AudioResampler(format="fltp", layout=AUDIO_LAYOUT, rate=AUDIO_RATE)
        scaler = VideoReformatter()  # one swscale context while the scenes' size stays
        offset = 0.0
        next_pts = 0  # in frames of `fps`: kept increasing across scenes
        samples = 0  # audio written so far, in samples at AUDIO_RATE
        for scene, info in zip(scenes, infos, strict=True):
            with _open(scene) as src:
                for frame in _decoded(src, src.streams.video[0], scene):
                    pts = max(next_pts, round((offset + (frame.time or 0.0)) * fps))
                    if pts >= round((offset + info.duration_s) * fps):
                        continue
                    image = scaler.reformat(frame, width=width, height=height, format="yuv420p")
                    image.pts, image.time_base = pts, 1 / fps
                    dst.mux(vout.encode(image))
                    next_pts = pts + 1
            # A scene's sound stops at its end: an AAC track's last frame runs past the
            # video (it is padded to 1024 samples), and that would add up scene by scene.
            scene_end = round((offset + info.duration_s) * AUDIO_RATE)
            if info.has_audio:
                with _open(scene) as src:
                    for audio in src.decode(src.streams.audio[0]):
                        audio.pts = None
                        for chunk in resampler.resample(audio):
                            samples = _mux_audio(dst, aout, chunk, samples, scene_end)
                    for chunk in resampler.resample(None):
                        samples = _mux_audio(dst, aout, chunk, samples, scene_end)
                resampler = AudioResampler(format="fltp", layout=AUDIO_LAYOUT, rate=AUDIO_RATE)
            offset += info.duration_s
            # Silence up to the scene's end keeps the next scene's sound in sync.
            samples = _pad_audio(dst, aout, samples, round(offset * AUDIO_RATE))
        dst.mux(vout.encode(None))
        dst.mux(aout.encode(None))


def _mux_audio(
    dst: OutputContainer, aout: AudioStream, chunk: AudioFrame, samples: int, until: int | None = None
) -> int:
    """Encode `chunk` after `samples` samples; returns the count after it. A chunk that would
    run past `until` is left out (at most one frame, under 25 ms: silence pads up to `until`)."""
    if until is not None and samples + chunk.samples > until:
        return samples
    chunk.pts, chunk.time_base = samples, Fraction(1, AUDIO_RATE)
    dst.mux(aout.encode(chunk))
    return samples + chunk.samples


def _pad_audio(dst: OutputContainer, aout: AudioStream, samples: int, until: int) -> int:
    step = 1024
    while samples < until:
        count = min(step, until - samples)
        silence = AudioFrame(format="fltp", layout=AUDIO_LAYOUT, samples=count)
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        silence.sample_rate = AUDIO_RATE
        samples = _mux_audio(dst, aout, silence, samples)
    return samples
