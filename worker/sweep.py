"""The recovery sweep every worker runs in the background of its main process: no extra
process to deploy or forget. A Redis lock lets one worker sweep at a time; the claim on
each job is a compare-and-set anyway."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import redis
from celery import Celery
from redis.exceptions import RedisError

from producer.jobstore import JobStore
from producer.recovery import recover_stranded
from producer.settings import Settings

log = logging.getLogger("videoqueue.sweep")
LOCK_KEY = "vq:sweep:lock"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def sweep_once(app: Celery, store: JobStore, settings: Settings) -> int:
    """One sweep under the fleet-wide lock; returns how many jobs it recovered."""
    token = uuid.uuid4().hex
    ttl_ms = int(max(settings.sweep_interval_s, 10) * 1000)
    if not store.redis.set(LOCK_KEY, token, nx=True, px=ttl_ms):
        return 0

    def send(name: str, args: list[Any]) -> None:
        app.send_task(name, args=args)

    try:
        report = recover_stranded(store, send, settings.recover_after_s)
    finally:
        # Let the next sweep (ours or another worker's) run on time; the lock's expiry only
        # covers a sweeper that dies holding it.
        store.redis.eval(_RELEASE, 1, LOCK_KEY, token)
    if report.total:
        log.warning(
            "recovered stranded jobs",
            extra={"count": report.total, "by_status": report.recovered, "job_ids": ",".join(report.job_ids[:20])},
        )
    return report.total


def start_sweeper(app: Celery, settings: Settings) -> threading.Thread | None:
    """Start the background sweep thread (None when SWEEP_INTERVAL_S is 0)."""
    if settings.sweep_interval_s <= 0:
        return None
    store = JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True))
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.sweep_interval_s):
            try:
                sweep_once(app, store, settings)
            except RedisError as exc:
                log.warning("sweep skipped: Redis unavailable", extra={"reason": str(exc)})
            except Exception:
                log.exception("sweep failed")

    thread = threading.Thread(target=loop, name="videoqueue-sweep", daemon=True)
    thread.start()
    return thread
