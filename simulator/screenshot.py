"""`make screenshot`: docs/flower.png and docs/flower-task.png, Flower during a real run.

    python -m simulator.screenshot [--out docs/flower.png] [--size 1400x800] [--zoom 0.75] [--redis-url URL]

It starts its own redis-server on a free port (or uses `--redis-url`, in namespace
`screenshot`), the provider simulator, one real `celery -A worker worker` and Flower as
`make flower` starts it, with a login made up for this run (Flower reads it from
FLOWER_BASIC_AUTH); submits a handful of jobs with the `videoqueue` CLI (one cancelled
while queued at the provider, one on Veo, and last one the simulator fails, so that its
FAILURE row is at the top), waits until they ended and Flower has every task's result,
then photographs with headless Chromium (Debian's `chromium` package) the tasks page
(`--out`) and the page of one job's store task, whose whole result (status, estimate,
cost) the tasks page cuts short (`--out` with `-task` added to its name). Everything it
started is stopped again; logs and the stored videos stay in .run/screenshot/.

Exit status 0 with both PNGs written; 1 when the run did not go as planned (a job did not
end, Flower did not show it, Chromium wrote nothing), with the log to read; 2 when it
cannot start (no chromium, no redis-server, a bad option).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import httpx

from simulator.devstack import SIM_BYTEPLUS_KEY, SIM_GOOGLE_KEY, exports_for
from simulator.localredis import NotLocalError, answers, local_target, server_argv
from simulator.stack import ManagedProcess, free_port, http_ok, start_simulator, start_worker, wait_until
from videoqueue.settings import Settings

RUN_DIR = Path(".run") / "screenshot"
NAMESPACE = "screenshot"
DEFAULT_OUT = Path("docs") / "flower.png"
DEFAULT_SIZE = (1400, 800)
DEFAULT_ZOOM = 0.75
STAMP = ".venv/.installed-stamp"
FLOWER_USER = "screenshot"

# What the run submits (VideoRequest fields, as `videoqueue submit --file` reads them).
# The prompts never reach Flower; the simulator's markers in them decide how each ends.
JOBS: list[dict[str, Any]] = [
    {"prompt": "a red fox trotting through fresh snow at dawn", "duration": 5},
    {"prompt": "product shot: a glass perfume bottle on a marble plinth", "duration": 4, "ratio": "1:1"},
    {"prompt": "storyboard: a paper boat sailing down a rainy gutter", "duration": 6, "audio": False},
    {"prompt": "a lighthouse at dusk, waves breaking", "provider": "veo", "duration": 4},
    {"prompt": "a clip cancelled while queued at the provider [sim:hold]"},
]
HELD = len(JOBS) - 1  # the job cancelled once the provider has it (its cancel task shows)
SHOWN = 0  # the job whose store task gets a picture of its own
# Submitted once the others ended, so that its FAILURE row tops the tasks page.
FAILING = "a clip the provider's filter refuses [sim:fail] [sim:latency=1]"


class ScreenshotError(RuntimeError):
    """The run did not produce the screenshot; the message says why, in one line."""


def _size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 200 or int(height) < 200:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT in pixels, each at least 200")
    return int(width), int(height)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line: `out` (Path), `size` ((width, height) in pixels), `zoom` (of the
    tasks page), `redis_url` (None: start a redis-server of its own), `chromium` (its
    command), `timeout` (seconds the jobs may take)."""
    parser = argparse.ArgumentParser(prog="python -m simulator.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="the tasks page PNG (default docs/flower.png; the task page: NAME-task.png)",
    )
    parser.add_argument(
        "--size", type=_size, default=DEFAULT_SIZE, help="each PNG, WIDTHxHEIGHT pixels (default 1400x800)"
    )
    parser.add_argument(
        "--zoom",
        type=float,
        default=DEFAULT_ZOOM,
        help=f"zoom of the tasks page (default {DEFAULT_ZOOM:g}: every column up to Received fits 1400 pixels)",
    )
    parser.add_argument(
        "--redis-url",
        help=f"use this Redis (namespace {NAMESPACE!r}) instead of starting a redis-server on a free port",
    )
    parser.add_argument("--chromium", default="chromium", help="the Chromium command (default: chromium)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds the jobs may take (default 180)")
    return parser.parse_args(argv)


def flower_argv(bin_dir: Path) -> list[str]:
    """`make flower`, as the README and production run it, with the celery of `bin_dir`
    and without rebuilding the virtualenv. Its port is FLOWER_PORT, its login
    FLOWER_BASIC_AUTH, both from the environment."""
    return ["make", "-s", "-o", STAMP, "flower", f"BIN={bin_dir}"]


def page_url(port: int, user: str, password: str, path: str) -> str:
    """A Flower page with the login in the URL: Chromium takes it for the page and for the
    page's own data requests (XHR; it has no option for a request header)."""
    return f"http://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}{path}"


def task_png(out: Path) -> Path:
    """Where the picture of one task's page goes: `out` with `-task` added to its name."""
    return out.with_name(f"{out.stem}-task{out.suffix}")


def chromium_argv(
    chromium: str, url: str, out: Path, size: tuple[int, int], *, zoom: float = 1.0, as_root: bool
) -> list[str]:
    """Headless Chromium writing a PNG of `url` to `out`, `size` (width, height) pixels,
    the page laid out `1/zoom` times as wide (Flower's result column does not wrap). The
    virtual time budget lets the tasks page load its rows (an XHR) before the shot; as
    root Chromium refuses to start without --no-sandbox."""
    window = (round(size[0] / zoom), round(size[1] / zoom))
    argv = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={RUN_DIR.resolve() / 'chromium'}",
        f"--window-size={window[0]},{window[1]}",
        f"--force-device-scale-factor={zoom:g}",
        "--virtual-time-budget=8000",
        f"--screenshot={out.resolve()}",
    ]
    if as_root:
        argv.append("--no-sandbox")
    return [*argv, url]


def job_env(redis_url: str, sim_url: str, cwd: Path) -> dict[str, str]:
    """The environment of the worker, Flower and the CLI: this run's Redis (its broker
    too), namespace, storage folder and the simulator's endpoints and keys
    (devstack.exports_for)."""
    storage = f"file://{(cwd / RUN_DIR / 'videos').resolve()}"
    settings = Settings(redis_url=redis_url, storage_url=storage, broker_url=None, s3_endpoint_url=None)
    # Empty means unset, over any .env: the run's Redis is its broker, its folder the storage.
    unset = {"BROKER_URL": "", "S3_ENDPOINT_URL": ""}
    return {**os.environ, **unset, **exports_for(settings, NAMESPACE, sim_url, cwd)}


def _cli(bin_dir: Path, env: dict[str, str], *args: str, ok: Sequence[int] = (0,)) -> str:
    """Run `videoqueue ARGS` and return what it printed."""
    done = subprocess.run(  # noqa: S603 - fixed arguments
        [str(bin_dir / "videoqueue"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode not in ok:
        raise ScreenshotError(f"videoqueue {args[0]} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def _submitted(bin_dir: Path, env: dict[str, str], *args: str) -> list[str]:
    return [record["id"] for record in json.loads(_cli(bin_dir, env, "submit", *args, "--json"))]


def _wait(bin_dir: Path, env: dict[str, str], ids: list[str], timeout: float) -> list[dict[str, Any]]:
    # 0: all succeeded; 1: all ended, some not succeeded (the failed and cancelled ones).
    records: list[dict[str, Any]] = json.loads(
        _cli(bin_dir, env, "wait", *ids, "--timeout", str(timeout), "--json", ok=(0, 1))
    )
    return records


def run_jobs(bin_dir: Path, env: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Submit JOBS through the CLI, cancel the held one once the provider has it, wait
    until they ended, then submit FAILING and wait for it; returns the final records
    (JSON), in the order submitted."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", dir=RUN_DIR, delete=False) as lines:
        lines.write("".join(json.dumps(job) + "\n" for job in JOBS))
    ids = _submitted(bin_dir, env, "--file", lines.name)
    Path(lines.name).unlink()

    def held_is_running() -> bool:
        return bool(json.loads(_cli(bin_dir, env, "status", ids[HELD], "--json"))[0]["status"] == "running")

    wait_until(held_is_running, 60, "the held job at the provider", interval=0.5)
    _cli(bin_dir, env, "cancel", ids[HELD])
    records = _wait(bin_dir, env, ids, timeout)
    return records + _wait(bin_dir, env, _submitted(bin_dir, env, FAILING), timeout)


def shown_by_flower(tasks: dict[str, dict[str, Any]], record: dict[str, Any]) -> bool:
    """True once Flower holds the task that ended the job, with the job's final status."""
    status = record["status"]
    for task in tasks.values():
        if record["id"] not in str(task.get("args")):
            continue
        if f"'status': '{status}'" in str(task.get("result")) or f"{record['id']} {status}:" in str(
            task.get("exception")
        ):
            return True
    return False


def store_task_of(tasks: dict[str, dict[str, Any]], job_id: str) -> str | None:
    """The uuid of the store task of `job_id` among Flower's tasks, or None."""
    for uuid, task in tasks.items():
        if task.get("name") == "videoqueue.store" and job_id in str(task.get("args")):
            return uuid
    return None


class Run:
    """The processes of one screenshot run, stopped in reverse order."""

    def __init__(self) -> None:
        self.children: list[ManagedProcess] = []

    def start_redis(self) -> str:
        """A redis-server of this run's own on a free port; returns its URL."""
        url = f"redis://127.0.0.1:{free_port()}/0"
        argv = server_argv(local_target(url), daemonize=False)
        proc = ManagedProcess("redis", argv, os.environ, RUN_DIR / "redis.log")
        self.children.append(proc)
        wait_until(lambda: answers(url) or not proc.alive(), 15, "redis-server")
        if not proc.alive():
            raise ScreenshotError(f"redis-server did not start; see {proc.log_path}")
        return url

    def start_flower(self, bin_dir: Path, env: dict[str, str], port: int, login: str) -> None:
        """Flower through `make flower`, until its health check answers."""
        env = {**env, "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": login}
        env.pop("FLOWER_UNAUTHENTICATED_API", None)
        proc = ManagedProcess("flower", flower_argv(bin_dir), env, RUN_DIR / "flower.log")
        self.children.append(proc)
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck") or not proc.alive(), 60, "flower")
        if not proc.alive():
            raise ScreenshotError(f"flower exited; see {proc.log_path}")

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def shoot(chromium: str, url: str, out: Path, size: tuple[int, int], zoom: float) -> None:
    """One PNG of `url` at `out`; ScreenshotError when Chromium wrote none."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    shot = subprocess.run(  # noqa: S603 - fixed arguments
        chromium_argv(chromium, url, out, size, zoom=zoom, as_root=os.geteuid() == 0),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    with (RUN_DIR / "chromium.log").open("a") as log:
        log.write(shot.stdout + shot.stderr)
    if not out.is_file() or out.stat().st_size == 0:
        raise ScreenshotError(f"chromium wrote no {out} (exit {shot.returncode}); see {RUN_DIR}/chromium.log")


def take(args: argparse.Namespace) -> list[Path]:
    """Run the stack, the jobs and Chromium; returns the PNGs written."""
    chromium = shutil.which(args.chromium)
    if chromium is None:
        raise NotLocalError(f"{args.chromium} is not installed (apt-get install -y chromium)")
    bin_dir = Path(sys.executable).parent
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    run = Run()
    try:
        redis_url = args.redis_url or run.start_redis()
        sim_port = free_port()
        sim_env = {**os.environ, "SIM_API_KEY": SIM_BYTEPLUS_KEY, "SIM_GOOGLE_API_KEY": SIM_GOOGLE_KEY}
        sim_args = ["--latency", "3", "--latency-jitter", "2"]
        run.children.append(start_simulator(sim_port, RUN_DIR, sim_args, env=sim_env))
        env = job_env(redis_url, f"http://127.0.0.1:{sim_port}", Path.cwd())
        run.children.append(start_worker("screenshot-worker", env, RUN_DIR, concurrency=2))
        flower_port = free_port()
        password = secrets.token_urlsafe(18)  # this run's only: never the operator's login
        run.start_flower(bin_dir, env, flower_port, f"{FLOWER_USER}:{password}")

        records = run_jobs(bin_dir, env, args.timeout)
        active = [r["id"] for r in records if r["status"] not in ("succeeded", "failed", "cancelled", "expired")]
        if active:
            raise ScreenshotError(f"jobs still active after {args.timeout:g} s: {', '.join(active)}")

        def tasks() -> dict[str, dict[str, Any]]:
            answer = httpx.get(f"http://127.0.0.1:{flower_port}/api/tasks", auth=(FLOWER_USER, password), timeout=10)
            answer.raise_for_status()
            found: dict[str, dict[str, Any]] = answer.json()
            return found

        wait_until(lambda: all(shown_by_flower(tasks(), r) for r in records), 30, "every job's end in flower", 0.5)
        store_task = store_task_of(tasks(), records[SHOWN]["id"])
        if store_task is None:
            raise ScreenshotError(f"flower shows no store task of job {records[SHOWN]['id']}")

        out: Path = args.out
        shoot(chromium, page_url(flower_port, FLOWER_USER, password, "/tasks"), out, args.size, args.zoom)
        task_page = page_url(flower_port, FLOWER_USER, password, f"/task/{store_task}")
        shoot(chromium, task_page, task_png(out), args.size, 1.0)
        return [out, task_png(out)]
    finally:
        run.stop()


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # As Ctrl-C does: the `finally` of `take` stops every process the run started.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Take the screenshots; exit status as the module says."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        written = take(args)
    except NotLocalError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except (ScreenshotError, TimeoutError, RuntimeError) as exc:
        sys.stderr.write(f"error: {exc}; logs in {RUN_DIR}/\n")
        return 1
    for out in written:
        sys.stdout.write(f"wrote {out} ({out.stat().st_size // 1024} KiB)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
