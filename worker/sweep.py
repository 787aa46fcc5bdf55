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

from videoqueue import inputs, keys, movies, retention
from videoqueue.job import TASK_ADMIT, TASK_DELIVER, TASK_MOVIE_ADVANCE, TASK_SUBMIT, TASK_UNPARK
from videoqueue.jobstore import JobStore
from videoqueue.ledger import ensure_days
from videoqueue.limits import ProviderLimits
from videoqueue.parking import Parking
from videoqueue.queues import broker_timing
from videoqueue.recovery import recover_stranded
from videoqueue.room import WaitingRoom
from videoqueue.settings import Settings
from videoqueue.stalled import StallRule
from worker import deliver
from worker.admission import Admitter
from worker.inputs import StorageInputs

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
        rearm_park_timer(app, store, settings)
        admitted = admit_all(app, store, settings)
        released = release_inputs(store, settings)
        trimmed = trim_expired(store, settings)
        delivered = deliver.send_due(store.redis, app.send_task, time.time())
        advanced = movies.send_due(store.redis, lambda m: app.send_task(TASK_MOVIE_ADVANCE, args=[m]), time.time())
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
    if admitted:
        log.info("admitted waiting jobs", extra={"count": admitted})
    if delivered:
        log.info("sent deliveries due", extra={"count": len(delivered), "ids": ",".join(delivered[:20])})
    if advanced:
        log.info("sent movie advances due", extra={"count": len(advanced), "ids": ",".join(advanced[:20])})
    if released:
        log.info("deleted the input images of ended jobs", extra={"count": released})
    if trimmed.trimmed or trimmed.expiring:
        log.info(
            "trimmed the indexes of expired job records",
            extra={"count": trimmed.trimmed, "expiring": trimmed.expiring, "looked_at": trimmed.looked_at},
        )
    if report.total:
        log.warning(
            "recovered stranded jobs",
            extra={"count": report.total, "by_status": report.recovered, "job_ids": ",".join(report.job_ids[:20])},
        )
    return report.total


def _send(app: Celery, name: str, args: list[Any], countdown: float) -> None:
    app.send_task(name, args=args, countdown=countdown or None)


def admit_all(app: Celery, store: JobStore, settings: Settings) -> int:
    """Admit waiting jobs in every model's room as far as quota allows now: what a lost
    wake-up, a slot lease that ran out or a dead timer left waiting. Returns how many."""
    room = WaitingRoom(store.redis, ProviderLimits.from_settings(store.redis, settings), settings.tenant_weights())
    admitter = Admitter(
        room,
        lambda job_id: _send(app, TASK_SUBMIT, [job_id], 0.0),
        lambda provider, model, countdown: _send(app, TASK_ADMIT, [provider, model], countdown),
        broker_timing(settings).max_countdown_s,
    )
    return sum(len(admitter.admit(provider, model)) for provider, model in room.rooms())


def release_inputs(store: JobStore, settings: Settings) -> int:
    """Delete the input images of ended jobs that are due (videoqueue.inputs): those kept
    for a retry, and those a worker did not delete at the final move (it died, storage
    refused). Returns how many jobs' inputs went; a storage failure leaves them for the
    next sweep."""
    return inputs.release_due(store.redis, StorageInputs(settings), store.get)


def trim_expired(store: JobStore, settings: Settings) -> retention.TrimReport:
    """Backfill the ledger's day aggregates if this deployment has none yet (before any row
    expires), then trim the index entries of records gone after JOB_RETENTION_S, at most
    RETENTION_SWEEP_BATCH a tick (videoqueue.retention); drop the stale index of all jobs an
    earlier version kept."""
    retention.drop_legacy_all_index(store.redis)
    ensure_days(store.redis, settings.job_retention_s)
    return retention.trim(store.redis, settings.job_retention_s, time.time(), settings.retention_sweep_batch)


def rearm_park_timer(app: Celery, store: JobStore, settings: Settings) -> float | None:
    """Arm the park timer for the earliest parked step when no timer runs by then (its
    unpark message was lost: a worker died holding it, Redis lost the key) and send the
    unpark message. Returns its countdown (s), or None when a timer was in place or
    nothing is parked."""
    countdown = Parking.from_settings(store.redis, settings).arm()
    if countdown is not None:
        _send(app, TASK_UNPARK, [], countdown)
        log.info("park timer armed by the sweep", extra={"countdown": round(countdown, 1)})
    return countdown


def start_sweeper(app: Celery, settings: Settings) -> threading.Thread | None:
    """Start the background sweep thread (None when SWEEP_INTERVAL_S is 0)."""
    if settings.sweep_interval_s <= 0:
        return None
    store = JobStore.from_settings(settings)
    # A job the sweep ends (past its deadline) is told of at once, not at the next sweep.
    store.on_deliveries = lambda ids: [app.send_task(TASK_DELIVER, args=[i]) for i in ids]
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
