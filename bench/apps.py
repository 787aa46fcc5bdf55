"""Celery tasks the benchmarks compare videoqueue with, run by real `celery worker`
processes (`celery -A bench.apps worker`) on the same broker, the same Celery settings
(videoqueue/celeryconfig.py) and the same broker transport (worker/broker_transport.py)
as videoqueue's workers:

- `bench.noop`: does nothing but count itself; its rate is the engine's own limit.
- `bench.blocking_job`: the thread-per-job baseline. One task holds its worker slot for
  the whole life of a clip: create, sleep-and-poll, download, as single-process tools do.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

import httpx
import redis
from byteplussdkarkruntime import Ark
from celery import Celery

from worker import broker_transport

DONE_KEY = "bench:done"

# The broker transport videoqueue's workers use (worker/broker_transport.py: one redis-py
# client per pool), so that the no-op rate is the same engine's as the jobs'.
broker_transport.register()
app = Celery("bench")
app.config_from_object("videoqueue.celeryconfig")
# Both tasks go to one queue of their own; the worker is started with -Q bench.
app.conf.task_routes = {"bench.*": {"queue": "bench"}}


@lru_cache(maxsize=1)
def _counter() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="bench.noop")
def noop() -> None:
    """Count one execution."""
    _counter().incr(DONE_KEY)


@lru_cache(maxsize=1)
def _ark() -> Ark:
    return Ark(base_url=os.environ["BYTEPLUS_BASE_URL"], api_key=os.environ["BYTEPLUS_API_KEY"], max_retries=0)


@app.task(name="bench.blocking_job")
def blocking_job(prompt: str, out_dir: str, poll_s: float) -> None:
    """Create a Seedance task, sleep-poll it every `poll_s` seconds, download the video."""
    tasks = _ark().content_generation.tasks
    task = tasks.create(model="seedance-1-5-pro-251215", content=[{"type": "text", "text": prompt}], duration=5)
    while True:
        state = tasks.get(task_id=task.id)
        if state.status in ("succeeded", "failed", "expired", "cancelled"):
            break
        time.sleep(poll_s)
    if state.status == "succeeded":
        target = Path(out_dir) / f"{task.id}.mp4"
        with httpx.stream("GET", state.content.video_url, timeout=60) as response, target.open("wb") as f:
            for chunk in response.iter_bytes():
                f.write(chunk)
    _counter().incr(DONE_KEY)
