"""Throughput of videoqueue against a thread-per-clip script, on the same simulator.

Both sides get the same number of concurrent slots (`--slots`): the baseline runs one
blocking create/poll/download loop per thread, as scripts commonly do; videoqueue runs
one celery worker with that concurrency. Reported as ratios from one run.

    .venv/bin/python -m bench.throughput --jobs 40 --latency 8 --slots 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis
from byteplussdkarkruntime import Ark

from producer import Settings, VideoQueue, VideoRequest
from simulator.stack import free_port, start_simulator, start_worker

KEY = "bench-key"


def thread_per_clip(base_url: str, jobs: int, slots: int, out: Path) -> float:
    """The usual script: each thread creates a task, sleeps between polls, downloads."""
    client = Ark(base_url=base_url, api_key=KEY, max_retries=0)

    def one(i: int) -> None:
        task = client.content_generation.tasks.create(
            model="seedance-1-5-pro-251215", content=[{"type": "text", "text": f"baseline {i}"}], duration=5
        )
        while True:
            state = client.content_generation.tasks.get(task_id=task.id)
            if state.status == "succeeded":
                break
            time.sleep(1.0)
        with httpx.stream("GET", state.content.video_url) as response, (out / f"{i}.mp4").open("wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)

    started = time.monotonic()
    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(one, range(jobs)))
    return time.monotonic() - started


def videoqueue(sim_url: str, jobs: int, slots: int, out: Path, log_dir: Path, redis_url: str) -> float:
    """The same jobs through one worker with `slots` pool processes."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "BYTEPLUS_BASE_URL": f"{sim_url}/api/v3",
        "BYTEPLUS_API_KEY": KEY,
        "STORAGE_URL": f"file://{out}",
        "POLL_INITIAL_S": "1",
        "POLL_MIN_S": "1",
        "POLL_MAX_S": "1",
        "POLL_JITTER": "0.1",
    }
    worker = start_worker("bench", env, log_dir, concurrency=slots)
    try:
        vq = VideoQueue(Settings(redis_url=redis_url, _env_file=None))
        started = time.monotonic()
        records = vq.submit_many([VideoRequest(prompt=f"queued {i}") for i in range(jobs)])
        done = vq.wait([r.id for r in records], timeout=3600, poll_interval=0.2)
        elapsed = time.monotonic() - started
        assert all(r.status.value == "succeeded" for r in done)
        return elapsed
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--latency", type=float, default=8.0, help="simulated render seconds per clip")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    redis.Redis.from_url(args.redis_url).flushdb()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        port = free_port()
        env = {**os.environ, "SIM_API_KEY": KEY}
        sim = start_simulator(port, root, ["--latency", str(args.latency), "--concurrency-per-model", "10000"], env)
        sim_url = f"http://127.0.0.1:{port}"
        try:
            (root / "base").mkdir()
            (root / "vq").mkdir()
            base = thread_per_clip(f"{sim_url}/api/v3", args.jobs, args.slots, root / "base")
            peak_base = httpx.get(f"{sim_url}/_sim/stats").json()["max_in_flight"]
            httpx.post(f"{sim_url}/_sim/reset")
            vq = videoqueue(sim_url, args.jobs, args.slots, root / "vq", root, args.redis_url)
            peak_vq = httpx.get(f"{sim_url}/_sim/stats").json()["max_in_flight"]
        finally:
            sim.stop()
    print(f"jobs={args.jobs} latency={args.latency}s slots={args.slots}")
    print(f"thread-per-clip: {base:.1f} s, peak in flight {peak_base}")
    print(f"videoqueue:      {vq:.1f} s, peak in flight {peak_vq}")
    print(f"speed-up: {base / vq:.1f}x; in-flight ratio: {peak_vq / max(peak_base, 1):.1f}x")


if __name__ == "__main__":
    main()
