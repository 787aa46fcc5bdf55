"""`pip install videoqueue` without the worker extra: the producer API and CLI work, the
worker side's SDKs are absent, and the worker side's commands say what to install.

A real venv in a temporary folder with the project installed from a copy of its source (so
nothing is built inside the repository); pip's cache makes the second run quick."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("videoqueue", "producer", "worker", "simulator")
WORKER_ONLY = ("byteplussdkarkruntime", "google.genai", "boto3", "httpx", "flower")

PROBE = f"""
import importlib, json
WORKER_ONLY = {WORKER_ONLY!r}
absent = []
for name in WORKER_ONLY:
    try:
        importlib.import_module(name)
    except ImportError:
        absent.append(name)
from producer import VideoQueue, VideoRequest
from videoqueue import VideoQueue as CoreVideoQueue
assert CoreVideoQueue is VideoQueue
VideoRequest(prompt="a red fox in snow")
print(json.dumps(absent))
"""


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("light")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in SHIPPED:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv


def _env() -> dict[str, str]:
    # Nothing from this checkout or its .venv: the light venv alone, from a neutral folder.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["REDIS_URL"] = os.environ.get("VQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/12")
    return env


def test_the_producer_api_imports_without_the_worker_extra(light_venv: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [str(light_venv / "bin" / "python"), "-c", PROBE],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    assert json.loads(probe.stdout) == list(WORKER_ONLY), "the worker extra's packages must be absent here"


def test_the_cli_lists_every_command_and_the_worker_ones_say_what_to_install(light_venv: Path, tmp_path: Path) -> None:
    cli = str(light_venv / "bin" / "videoqueue")
    env = {**_env(), "COLUMNS": "200"}
    shown = subprocess.run(
        [cli, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert shown.returncode == 0, shown.stderr
    for command in ("submit", "status", "doctor", "fetch", "url", "costs"):
        assert f" {command} " in shown.stdout, (command, shown.stdout)
    for command, argv in (("doctor", ["doctor"]), ("costs rebuild", ["costs", "rebuild", "--dry-run"])):
        result = subprocess.run(
            [cli, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: `videoqueue {command}` needs the worker extra (not installed here: ")
        assert 'pip install "videoqueue[worker]"' in lines[0] and "boto3" in lines[0]


def test_a_worker_without_the_worker_extra_says_what_to_install(light_venv: Path, tmp_path: Path) -> None:
    # Celery itself would only say "Module 'worker' has no attribute 'celery'".
    result = subprocess.run(
        [str(light_venv / "bin" / "celery"), "-A", "worker", "worker"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "a videoqueue worker needs the worker extra (not installed here: " in result.stderr, result.stderr
    assert 'pip install "videoqueue[worker]"' in result.stderr


def test_image_files_reach_a_storage_folder_and_an_s3_storage_says_what_to_install(
    light_venv: Path, tmp_path: Path
) -> None:
    # The producer puts image files into STORAGE_URL (videoqueue.inputs) with the worker
    # side's backends: a local folder needs nothing more, S3 needs boto3 (the worker extra).
    image = tmp_path / "first.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    cli = str(light_venv / "bin" / "videoqueue")
    argv = [cli, "submit", "a fox", "--image-file", str(image), "--json"]
    to_s3 = subprocess.run(
        argv,
        cwd=tmp_path,
        env={**_env(), "STORAGE_URL": "s3://videos/renders"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert to_s3.returncode == 2, (to_s3.stdout, to_s3.stderr)
    [line] = to_s3.stderr.splitlines()
    assert line.startswith(
        "error: image files are put into STORAGE_URL by the producer, which needs the worker extra here "
        "(not installed: "
    )
    assert "boto3" in line and line.endswith('pip install "videoqueue[worker]"; or give the image as a URL')
    folder = tmp_path / "store"
    to_folder = subprocess.run(
        argv,
        cwd=tmp_path,
        env={**_env(), "STORAGE_URL": f"file://{folder}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert to_folder.returncode == 0, to_folder.stderr
    [record] = json.loads(to_folder.stdout)
    job_id = record["id"]
    assert (folder / "inputs" / job_id / "first_frame.png").read_bytes() == image.read_bytes()
