"""The recovery sweep every worker runs in the background of its main process: no extra
process to deploy or forget. A Redis lock (redis-py's `Lock`) lets one worker sweep at a
time; the claim on each job is a compare-and-set anyway."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from celery import Celery
from redis.exceptions import LockError, RedisError

from videoqueue import keys
from videoqueue.jobstore import JobStore
from videoqueue.recovery import recover_stranded
from videoqueue.settings import Settings
from videoqueue.stalled import StallRule

log = logging.getLogger("videoqueue.sweep")


def sweep_once(app: Celery, store: JobStore, settings: Settings) -> int:
    """One sweep under the fleet-wide lock; returns how many jobs it recovered."""
    # Held at most one interval (10 s or more): its expiry covers a sweeper that dies holding it.
    lock = store.redis.lock(keys.SWEEP_LOCK, timeout=max(settings.sweep_interval_s, 10))
    if not lock.acquire(blocking=False):
        return 0

    def send(name: str, args: list[Any]) -> None:
        app.send_task(name, args=args)

    try:
        report = recover_stranded(store, send, StallRule.from_settings(settings))
    finally:
        # Let the next sweep (ours or another worker's) run on time. A sweep that outlived
        # the lock no longer owns it: the holder now is another worker, whose lock stays.
        with contextlib.suppress(LockError):
            lock.release()
    if report.unparked:
        log.info(
            "sent parked steps now due",
            extra={"count": len(report.unparked), "job_ids": ",".join(report.unparked[:20])},
        )
    if report.total:
        log.warning(
            "recovered stranded jobs",
            extra={"count": report.total, "by_status": report.recovered, "job_ids": ",".join(report.job_ids[:20])},
        )
    return report.total


def _next_wait(store: JobStore, interval_s: float) -> float:
    """Seconds to the next sweep: SWEEP_INTERVAL_S, or sooner when a parked step falls due
    before then (at least a second apart)."""
    try:
        parked = store.next_parked_at()
    except RedisError:
        return interval_s
    if parked is None:
        return interval_s
    return min(interval_s, max(1.0, parked - time.time()))


def start_sweeper(app: Celery, settings: Settings) -> threading.Thread | None:
    """Start the background sweep thread (None when SWEEP_INTERVAL_S is 0)."""
    if settings.sweep_interval_s <= 0:
        return None
    store = JobStore.from_url(settings.redis_url)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(_next_wait(store, settings.sweep_interval_s)):
            try:
                sweep_once(app, store, settings)
            except RedisError as exc:
                log.warning("sweep skipped: Redis unavailable", extra={"reason": str(exc)})
            except Exception:
                log.exception("sweep failed")

    thread = threading.Thread(target=loop, name="videoqueue-sweep", daemon=True)
    thread.start()
    return thread
