"""`worker.storage.fetch` on a local folder: whole file or nothing, no silent overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer import Settings
from worker.storage.fetch import FetchError, fetch_video, presigned_url

VIDEO = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4096


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None)


@pytest.fixture
def stored(tmp_path: Path) -> tuple[str, str]:
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "job.mp4").write_bytes(VIDEO)
    (folder / "job.json").write_text(json.dumps({"video": {"bytes": len(VIDEO)}}))
    return (folder / "job.mp4").as_uri(), (folder / "job.json").as_uri()


def test_a_local_video_is_copied_whole(tmp_path: Path, stored: tuple[str, str], settings: Settings) -> None:
    uri, manifest = stored
    dest = tmp_path / "out.mp4"
    fetched = fetch_video(uri, dest, settings, manifest_uri=manifest)
    assert (fetched.path, fetched.size) == (dest, len(VIDEO))
    assert dest.read_bytes() == VIDEO
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_existing_file_is_kept_unless_forced(tmp_path: Path, stored: tuple[str, str], settings: Settings) -> None:
    uri, _ = stored
    dest = tmp_path / "out.mp4"
    dest.write_bytes(b"mine")
    with pytest.raises(FetchError, match="already exists"):
        fetch_video(uri, dest, settings)
    assert dest.read_bytes() == b"mine"
    fetch_video(uri, dest, settings, overwrite=True)
    assert dest.read_bytes() == VIDEO


def test_a_size_other_than_the_manifest_writes_nothing(
    tmp_path: Path, stored: tuple[str, str], settings: Settings
) -> None:
    uri, manifest = stored
    Path(uri.removeprefix("file://")).write_bytes(VIDEO[:-10])
    dest = tmp_path / "out.mp4"
    with pytest.raises(FetchError, match=f"holds {len(VIDEO) - 10} bytes, its manifest says {len(VIDEO)}"):
        fetch_video(uri, dest, settings, manifest_uri=manifest)
    assert list(tmp_path.iterdir()) == [tmp_path / "videos"]


def test_missing_and_unknown_locations_are_one_line_errors(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(FetchError, match=r"no file at .* on this machine"):
        fetch_video((tmp_path / "gone.mp4").as_uri(), tmp_path / "out.mp4", settings)
    with pytest.raises(FetchError, match="only file:// and s3://"):
        fetch_video("gs://bucket/a.mp4", tmp_path / "out.mp4", settings)


def test_a_local_video_has_no_presigned_link(stored: tuple[str, str], settings: Settings) -> None:
    with pytest.raises(FetchError, match="not in S3 but at file://"):
        presigned_url(stored[0], settings, 60)
    with pytest.raises(FetchError, match="--expires must be 1 to 604800"):
        presigned_url("s3://bucket/a.mp4", settings, 0)
