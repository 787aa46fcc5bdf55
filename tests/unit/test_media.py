"""worker/media.py (PyAV) on the simulator's real clips (simulator/clips.py), and the store
check built on it (worker/storage/base.py `MediaCheck`)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
from av.container import OutputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from moto import mock_aws

from simulator import clips
from simulator.clips import FPS, Shape, clip, frame_rgb
from videoqueue.errors import StorageError
from videoqueue.settings import Settings
from worker import media
from worker.media import MediaError
from worker.storage import MediaCheck, VideoDecodeError
from worker.storage.local import LocalStorage
from worker.storage.s3 import S3Storage
from worker.storage.s3_ranged import RangedObject

WIDE = Shape(2, "16:9")
TALL = Shape(3, "9:16")
NOT_A_VIDEO = b"\x00\x00\x00\x18ftypisom" + bytes(range(256)) * 4  # an MP4 by its signature only


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def rgb_of_png(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB24 pixels) of a PNG, decoded by FFmpeg."""
    with av.open(io.BytesIO(png), "r", format="png_pipe") as container:
        frame = next(container.decode(video=0)).reformat(format="rgb24")
    plane, row = frame.planes[0], frame.width * 3
    data = bytes(plane)
    return frame.width, frame.height, b"".join(data[y * plane.line_size :][:row] for y in range(frame.height))


def distance(a: bytes, b: bytes) -> float:
    """Mean absolute difference of two equally long byte strings."""
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def test_probe_reads_duration_size_and_streams(tmp_path: Path) -> None:
    info = media.probe(write(tmp_path / "a.mp4", clip(TALL, 1)))
    assert abs(info.duration_s - 3) < 0.1
    assert (info.width, info.height) == TALL.size == (160, 284)
    assert info.has_audio and info.audio is not None and info.audio.codec == "aac"
    assert info.video.codec == "h264"


def test_clips_are_made_once_per_shape_and_differ_by_variant() -> None:
    shape = Shape(2, "1:1")
    made = clips.clips(shape)
    assert clips.clips(shape) is made  # cached: not made again
    assert len(set(made)) == clips.VARIANTS
    assert len({len(c) for c in made}) == 1  # padded to one size per shape
    assert clip(shape, 3) == made[3] and clip(shape, 3 + clips.VARIANTS) == made[3]


def test_last_frame_is_the_clips_last_frame(tmp_path: Path) -> None:
    png = media.last_frame_png(write(tmp_path / "a.mp4", clip(WIDE, 2)))
    width, height, pixels = rgb_of_png(png)
    assert (width, height) == WIDE.size
    last = WIDE.duration_s * FPS - 1
    # H.264 is lossy: the decoded frame is nearest to the frame drawn last, and far from others.
    near = distance(pixels, frame_rgb(WIDE, 2, last))
    assert near < 8
    assert near < distance(pixels, frame_rgb(WIDE, 2, last - 1)) and near < distance(pixels, frame_rgb(WIDE, 3, last))
    assert clips.last_frame_png(WIDE, 2) == png  # what the simulator's last_frame_url serves


def test_join_of_equal_clips_is_a_stream_copy(tmp_path: Path) -> None:
    scenes = [write(tmp_path / f"{n}.mp4", clip(WIDE, n)) for n in range(3)]
    result = media.join(scenes, tmp_path / "movie.mp4")
    assert result.copied
    info = media.probe(tmp_path / "movie.mp4")
    expected = sum(media.probe(scene).duration_s for scene in scenes)
    assert abs(result.duration_s - expected) <= 0.1 and abs(info.duration_s - expected) <= 0.1
    assert info.has_audio and info.video == media.probe(scenes[0]).video
    assert media.last_frame_png(tmp_path / "movie.mp4") == media.last_frame_png(scenes[-1])
    with av.open(str(tmp_path / "movie.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3 * WIDE.duration_s * FPS


def test_join_of_different_clips_re_encodes(tmp_path: Path) -> None:
    scenes = [write(tmp_path / "wide.mp4", clip(WIDE, 0)), write(tmp_path / "tall.mp4", clip(TALL, 1))]
    result = media.join(scenes, tmp_path / "movie.mp4")
    assert not result.copied
    info = media.probe(tmp_path / "movie.mp4")
    assert abs(info.duration_s - (WIDE.duration_s + TALL.duration_s)) <= 0.1
    assert info.has_audio and info.video.codec == "h264" and (info.width, info.height) == WIDE.size
    _, _, pixels = rgb_of_png(media.last_frame_png(tmp_path / "movie.mp4"))
    # The last frame is the tall clip's last, scaled to the first scene's size.
    wide_last = frame_rgb(WIDE, 0, WIDE.duration_s * FPS - 1)
    assert distance(pixels, wide_last) > 20


def test_a_re_encoded_film_lasts_its_scenes_however_many(tmp_path: Path) -> None:
    # Each AAC track's last frame runs past its video: kept, it would add up scene by scene
    # (19.136 s for four scenes of 19 s before the join cut it).
    shapes = [WIDE, TALL, WIDE, TALL, WIDE, TALL]
    scenes = [write(tmp_path / f"s{n}.mp4", clip(shape, n)) for n, shape in enumerate(shapes)]
    result = media.join(scenes, tmp_path / "movie.mp4")
    assert not result.copied
    expected = sum(shape.duration_s for shape in shapes)
    assert abs(result.duration_s - expected) <= 0.05
    assert abs(media.probe(tmp_path / "movie.mp4").duration_s - expected) <= 0.05


@pytest.mark.parametrize("data", [b"", b"not a video at all", NOT_A_VIDEO])
def test_undecodable_input_raises_media_error(tmp_path: Path, data: bytes) -> None:
    bad = write(tmp_path / "bad.mp4", data)
    for call in (media.probe, media.last_frame_png, media.verify):
        with pytest.raises(MediaError) as err:
            call(bad)
        assert isinstance(err.value, StorageError) and "bad.mp4" in str(err.value)
    with pytest.raises(MediaError):
        media.join([write(tmp_path / "good.mp4", clip(WIDE, 0)), bad], tmp_path / "movie.mp4")


def test_local_store_check_refuses_an_undecodable_file_and_leaves_nothing(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    check = MediaCheck(duration_s=2, tolerance_s=1.0)
    with pytest.raises(VideoDecodeError, match="not a decodable video"):
        storage.put_video("job.mp4", iter([NOT_A_VIDEO]), len(NOT_A_VIDEO), check)
    assert list(tmp_path.iterdir()) == []
    # Without a check (the storage tests, STORE_MEDIA_CHECK=false) the signature is enough.
    assert storage.put_video("job.mp4", iter([NOT_A_VIDEO]), len(NOT_A_VIDEO)).size == len(NOT_A_VIDEO)


def test_local_store_check_refuses_a_duration_far_from_the_requested_one(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    video = clip(WIDE, 0)
    with pytest.raises(VideoDecodeError, match=r"lasts 2\.00 s, 5 s were requested"):
        storage.put_video("job.mp4", iter([video]), len(video), MediaCheck(duration_s=5, tolerance_s=1.0))
    assert storage.size("job.mp4") is None
    stored = storage.put_video("job.mp4", iter([video]), len(video), MediaCheck(duration_s=2, tolerance_s=0.1))
    assert stored.size == len(video) and storage.read("job.mp4") == video


@pytest.fixture
def s3() -> Iterator[S3Storage]:
    with mock_aws():
        settings = Settings(aws_access_key_id="test", aws_secret_access_key="test", aws_region="us-east-1")
        storage = S3Storage("videos", "runs", settings)
        storage.client.create_bucket(Bucket="videos")
        yield storage


def test_s3_store_check_reads_by_ranges_and_deletes_a_refused_object(s3: S3Storage) -> None:
    video = clip(WIDE, 1)
    check = MediaCheck(duration_s=2, tolerance_s=1.0)
    assert s3.put_video("good.mp4", iter([video]), len(video), check).size == len(video)
    assert s3.read("good.mp4") == video
    with pytest.raises(VideoDecodeError):
        s3.put_video("bad.mp4", iter([NOT_A_VIDEO]), len(NOT_A_VIDEO), check)
    assert s3.size("bad.mp4") is None


def test_ranged_object_reads_like_the_object(s3: S3Storage) -> None:
    data = bytes(range(256)) * 9000  # 2.2 MiB: three blocks
    s3.client.put_object(Bucket="videos", Key="runs/x", Body=data)
    ranged = RangedObject(s3.client, "videos", "runs/x", len(data))
    assert ranged.read(10) == data[:10]
    ranged.seek(-5, io.SEEK_END)
    assert ranged.read() == data[-5:]
    ranged.seek(1024 * 1024 - 3)
    assert ranged.read(6) == data[1024 * 1024 - 3 : 1024 * 1024 + 3]
    assert ranged.gets == 4


def test_a_scene_without_sound_is_joined_with_silence(tmp_path: Path) -> None:
    silent = tmp_path / "silent.mp4"
    with av.open(str(silent), "w", format="mp4") as container:
        assert isinstance(container, OutputContainer)
        stream = container.add_stream("libx264", rate=FPS)
        assert isinstance(stream, VideoStream)
        stream.width, stream.height, stream.pix_fmt = *WIDE.size, "yuv420p"
        for index in range(WIDE.duration_s * FPS):
            frame = VideoFrame(*WIDE.size, "rgb24")
            frame.planes[0].update(frame_rgb(WIDE, 4, index))
            container.mux(stream.encode(frame.reformat(format="yuv420p")))
        container.mux(stream.encode(None))
    assert not media.probe(silent).has_audio

    result = media.join([silent, write(tmp_path / "loud.mp4", clip(WIDE, 0))], tmp_path / "movie.mp4")

    assert not result.copied
    info = media.probe(tmp_path / "movie.mp4")
    assert info.has_audio and abs(info.duration_s - 2 * WIDE.duration_s) <= 0.1


def test_the_storage_backends_load_without_pyav() -> None:
    # Producers of the light install (no worker extra, no PyAV) put image files through
    # these backends (videoqueue.inputs); only the store step's check needs PyAV.
    code = (
        "import sys; from worker.inputs import open_inputs; import worker.storage.local, worker.storage.s3_ranged; "
        "sys.exit('av' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False, timeout=60).returncode == 0
