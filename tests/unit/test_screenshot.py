"""`make screenshot` (simulator.screenshot): its options, and the commands it builds for
Flower and Chromium. The run itself needs Chromium and is not part of the tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from simulator.screenshot import (
    DEFAULT_OUT,
    DEFAULT_ZOOM,
    NAMESPACE,
    chromium_argv,
    flower_argv,
    job_env,
    page_url,
    parse_args,
    shown_by_flower,
    store_task_of,
    task_png,
)
from tests.unit.test_deploy_files import ROOT
from tests.unit.test_flower_command import COLUMNS


def test_the_defaults_write_docs_flower_png_at_1400x800_with_a_redis_of_its_own() -> None:
    args = parse_args([])
    assert args.out == DEFAULT_OUT == Path("docs/flower.png")
    assert args.size == (1400, 800)
    assert args.zoom == DEFAULT_ZOOM
    assert args.redis_url is None
    assert args.chromium == "chromium"


def test_options_are_parsed_and_a_bad_size_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--out", "/tmp/x.png", "--size", "1200X700", "--redis-url", "redis://127.0.0.1:6379/13"])
    assert (args.out, args.size, args.redis_url) == (Path("/tmp/x.png"), (1200, 700), "redis://127.0.0.1:6379/13")
    for bad in ("1400", "1400x", "wide x tall", "100x800"):
        with pytest.raises(SystemExit) as refused:
            parse_args(["--size", bad])
        assert refused.value.code == 2
    assert "expected WIDTHxHEIGHT" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_flower_is_started_by_make_flower_with_the_job_columns_and_the_given_celery(tmp_path: Path) -> None:
    argv = flower_argv(tmp_path / "bin")
    assert argv[0] == "make" and "flower" in argv
    # -n: print the recipe, run nothing; FLOWER_BASIC_AUTH set, as the run sets it.
    dry = subprocess.run(
        [*argv[:1], "-n", *argv[1:]],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "FLOWER_BASIC_AUTH": "screenshot:s3cr3t-0xf00"},
        capture_output=True,
        text=True,
        check=True,
    )
    recipe = dry.stdout.strip().splitlines()[-1]
    assert recipe.startswith(f"{tmp_path / 'bin' / 'celery'} -A worker flower ")
    assert "--port=${FLOWER_PORT:-5555}" in recipe and "--address=127.0.0.1" in recipe
    assert COLUMNS in recipe
    assert "s3cr3t-0xf00" not in recipe, "the password stays in the environment"


def test_chromium_takes_a_headless_png_of_the_url_at_the_window_size(tmp_path: Path) -> None:
    out = tmp_path / "shot.png"
    argv = chromium_argv("chromium", "http://u:p@127.0.0.1:5555/tasks", out, (1400, 800), as_root=False)
    assert argv[0] == "chromium" and argv[-1] == "http://u:p@127.0.0.1:5555/tasks"
    assert "--headless" in argv
    assert f"--screenshot={out}" in argv
    assert "--window-size=1400,800" in argv
    assert any(a.startswith("--virtual-time-budget=") for a in argv), "the rows load by XHR after the page"
    assert "--no-sandbox" not in argv
    assert "--no-sandbox" in chromium_argv("chromium", "http://x/", out, (1400, 800), as_root=True)


def test_a_zoomed_page_is_laid_out_wider_and_drawn_at_the_same_size(tmp_path: Path) -> None:
    argv = chromium_argv("chromium", "http://x/", tmp_path / "a.png", (1400, 800), zoom=0.5, as_root=False)
    assert "--window-size=2800,1600" in argv
    assert "--force-device-scale-factor=0.5" in argv


def test_the_task_page_goes_next_to_the_tasks_page() -> None:
    assert task_png(Path("docs/flower.png")) == Path("docs/flower-task.png")


def test_the_login_in_the_url_survives_any_character() -> None:
    url = page_url(5555, "screen shot", "p@ss:/w#?%", "/task/abc")
    parts = urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 5555, "/task/abc")
    assert (unquote(parts.username or ""), unquote(parts.password or "")) == ("screen shot", "p@ss:/w#?%")


def test_the_run_uses_its_own_namespace_storage_and_the_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_URL", "amqp://rabbit:5672//")
    monkeypatch.setenv("BYTEPLUS_API_KEY", "a-real-key")
    env = job_env("redis://127.0.0.1:6400/0", "http://127.0.0.1:8100", tmp_path)
    assert env["REDIS_URL"] == "redis://127.0.0.1:6400/0"
    assert env["VQ_NAMESPACE"] == NAMESPACE
    assert env["STORAGE_URL"] == f"file://{tmp_path.resolve() / '.run' / 'screenshot' / 'videos'}"
    assert env["BYTEPLUS_BASE_URL"] == "http://127.0.0.1:8100/api/v3"
    assert env["VEO_BASE_URL"] == "http://127.0.0.1:8100/"
    assert env["BYTEPLUS_API_KEY"] != "a-real-key", "the simulator's key, never a real one"
    assert env["BROKER_URL"] == env["S3_ENDPOINT_URL"] == "", "unset over .env: the run's Redis is its broker too"


def test_a_job_counts_as_shown_once_flower_has_the_task_that_ended_it() -> None:
    job = {"id": "0c1c0196-aaaa", "status": "succeeded"}
    poll = {"args": "('0c1c0196-aaaa', 1)", "result": "{'job_id': '0c1c0196-aaaa', 'status': 'running'}"}
    store = {"args": "('0c1c0196-aaaa',)", "result": "{'job_id': '0c1c0196-aaaa', 'status': 'succeeded'}"}
    other = {"args": "('ffff',)", "result": "{'job_id': 'ffff', 'status': 'succeeded'}"}
    assert not shown_by_flower({"a": poll, "c": other}, job)
    assert shown_by_flower({"a": poll, "b": store}, job)
    failed = {"id": "0c1c0196-bbbb", "status": "failed"}
    failure = {
        "args": "('0c1c0196-bbbb', 1)",
        "result": None,
        "exception": "JobFailed('job 0c1c0196-bbbb failed: content_filtered: refused')",
    }
    assert shown_by_flower({"x": failure}, failed)
    assert (
        store_task_of({"a": poll | {"name": "videoqueue.poll"}, "b": store | {"name": "videoqueue.store"}}, job["id"])
        == "b"
    )
    named = {"a": poll | {"name": "videoqueue.poll"}, "b": store | {"name": "videoqueue.store"}}
    assert store_task_of(named, job["id"]) == "b"
    assert store_task_of({"a": named["a"]}, job["id"]) is None
