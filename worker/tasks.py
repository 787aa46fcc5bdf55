"""Celery tasks: thin wrappers that hand a job id to the pipeline. Arguments are the job
id (and the poll sequence number), never a prompt or a key.

Each returns where its job stands after the step (`worker.outcome.summary`: status, next
step, cost), which Flower shows as the task's result; the run of a step that ends its job
`failed` or `expired` raises `JobFailed` instead, after the job store recorded the end, so
Flower shows that task as FAILURE with the job's error."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from typing import Any

from billiard.compat import mem_rss
from billiard.pool import EX_RECYCLE
from celery import Task
from celery.signals import (
    task_postrun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from redis.exceptions import RedisError

from videoqueue.catalog import load_catalog
from videoqueue.job import (
    TASK_ADMIT,
    TASK_CANCEL,
    TASK_DELIVER,
    TASK_MOVIE_ADVANCE,
    TASK_POLL,
    TASK_STORE,
    TASK_SUBMIT,
    TASK_UNPARK,
    JobRecord,
    utcnow,
)
from videoqueue.jobstore import JobStore
from videoqueue.limits import ProviderLimits
from videoqueue.queues import broker_timing
from videoqueue.recovery import run_park_timer
from videoqueue.room import WaitingRoom
from videoqueue.settings import get_settings
from worker import deliver, logs, malloc, registry
from worker.app import app
from worker.open_uploads import RedisOpenUploads
from worker.outcome import JobFailed, ended_by_step, summary
from worker.pipeline import Pipeline, StoreRetry
from worker.providers import get_provider, provider_names, reset_providers
from worker.render_history import RenderHistory
from worker.storage import Storage, open_storage
from worker.sweep import start_sweeper

log = logging.getLogger("videoqueue.worker")


class CeleryDispatcher:
    """Sends pipeline steps as Celery messages with a countdown."""

    def submit(self, job_id: str, countdown: float) -> None:
        submit.apply_async((job_id,), **_when(countdown))

    def poll(self, job_id: str, seq: int, countdown: float) -> None:
        poll.apply_async((job_id, seq), **_when(countdown))

    def store(self, job_id: str, countdown: float) -> None:
        store.apply_async((job_id,), **_when(countdown))


def _when(countdown: float) -> dict[str, float]:
    """Send now, or after at least a second: RabbitMQ's native delayed delivery counts in
    whole seconds and refuses a countdown that rounds down to zero."""
    return {"countdown": max(1.0, countdown)} if countdown > 0 else {}


def _send_admit(provider: str, model: str, countdown: float) -> None:
    admit.apply_async((provider, model), **_when(countdown))


def _send_unpark(countdown: float) -> None:
    unpark.apply_async((), **_when(countdown))


def _send_after(name: str, args: list[Any], countdown: float) -> None:
    app.send_task(name, args=args, countdown=_when(countdown).get("countdown"))


def send_deliveries(delivery_ids: list[str]) -> None:
    """Send the task of each delivery a move owes (videoqueue.webhooks), at once."""
    for delivery_id in delivery_ids:
        deliver_webhook.apply_async((delivery_id,))


@lru_cache(maxsize=1)
def _storage() -> Storage:
    # The ids of open multipart uploads go to the job store's Redis, where the next store
    # attempt at the key, on any host, finds and aborts what a killed one left.
    return open_storage(get_settings(), RedisOpenUploads(pipeline().store.redis))


@lru_cache(maxsize=1)
def pipeline() -> Pipeline:
    """The pipeline of this worker process."""
    settings = get_settings()
    store = JobStore.from_settings(settings)
    store.on_deliveries = send_deliveries
    steps = Pipeline(
        settings=settings,
        store=store,
        catalog=load_catalog(settings.pricing_file),
        providers=lambda name: get_provider(name, settings),
        storage=_storage,
        dispatch=CeleryDispatcher(),
        room=WaitingRoom(store.redis, ProviderLimits.from_settings(store.redis, settings), settings.tenant_weights()),
        send_admit=_send_admit,
        send_unpark=_send_unpark,
        history=RenderHistory(
            store.redis,
            size=settings.poll_history_size,
            cache_s=settings.poll_history_cache_s,
            min_samples=settings.poll_history_min,
        ),
    )
    steps.store.on_final = _and_advance_movie(steps.store.on_final)
    return steps


def _and_advance_movie(on_final: Callable[[JobRecord], object] | None) -> Callable[[JobRecord], None]:
    """The job store's `on_final`, then, for a movie's scene, the movie's advance (owed by
    the move: videoqueue.movies; the sweep sends it if this does not)."""

    def after(record: JobRecord) -> None:
        if on_final is not None:
            on_final(record)
        if record.movie_id is not None:
            movie_advance.apply_async((record.movie_id,))

    return after


@worker_init.connect
def _returnable_memory(**_: Any) -> None:
    # Before the pool starts: its children (forked) and threads share the setting.
    malloc.fix_mmap_threshold()
    warning = malloc.child_cap_warning(get_settings().worker_max_memory_per_child)
    if warning:
        log.warning(warning)


@task_postrun.connect
def _return_freed_memory(**_: Any) -> None:
    # Small blocks freed under one that lives on stay in the heap (worker/malloc.py).
    malloc.trim_if_due()


@worker_process_shutdown.connect
def _say_why_a_child_goes(pid: int | None = None, exitcode: int | None = None, **_: Any) -> None:
    # Billiard's own line about it goes to a logger nobody configures.
    if exitcode == EX_RECYCLE:
        limit, rss_kib = get_settings().worker_max_memory_per_child, mem_rss()
        log.info(
            "pool child replaced after a task: past WORKER_MAX_MEMORY_PER_CHILD"
            if limit and rss_kib > limit
            else "pool child replaced after a task",
            extra={"pid": pid, "rss_kib": rss_kib, "limit_kib": limit},
        )


@worker_process_init.connect
def _fresh_clients(**_: Any) -> None:
    malloc.fix_mmap_threshold()  # a child not forked from the worker's main process
    # Connections must not be shared across the fork of a prefork pool child.
    pipeline.cache_clear()
    _storage.cache_clear()
    reset_providers()
    logs.configure(get_settings().log_level)


logs.configure(get_settings().log_level)
# Import every provider adapter (and its SDK) now, before a prefork pool forks: else the
# first job of each process pays for it (over a second) between its claim and its create.
provider_names()


_heartbeats: list[registry.Heartbeat] = []


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    # In the worker's main process only: pool children never see worker_ready.
    start_sweeper(app, get_settings())
    # Register in the namespace's worker registry, for `videoqueue doctor`.
    node = str(getattr(sender, "hostname", None) or app.conf.get("worker_name") or "worker")
    queues = sorted(app.amqp.queues.consume_from)
    _heartbeats.append(registry.start_heartbeat(node, queues, get_settings()))
    if get_settings().webhook_secret is None and any(q.endswith("webhooks") for q in queues):
        log.warning(
            "WEBHOOK_SECRET is not set: this worker takes webhook deliveries but cannot sign them; "
            "each one it takes waits for a worker that can"
        )


@worker_shutdown.connect
def _leave_registry(**_: Any) -> None:
    for heartbeat in _heartbeats:
        heartbeat.stop()


# The job store is unreachable (Redis restarting, network blip): try again with backoff
# instead of acknowledging a message whose effect was never recorded.
_STORE_RETRY: dict[str, Any] = {
    "autoretry_for": (RedisError,),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": None,
}


def _start(job_id: str) -> datetime:
    """When the step starts; forgets what this thread saw of the job before (a run that
    raised before `_finish`), so that `_finish` reports only what this run saw."""
    pipeline().store.last_seen(job_id)
    return utcnow()


def _finish(job_id: str, started: datetime) -> dict[str, Any]:
    """What the task returns for Flower (`outcome.summary`); raises JobFailed if this run
    of the step ended the job failed or expired (the job store already recorded it).
    Built from the record the step last read or stored (no second read), else read."""
    store = pipeline().store
    record = store.last_seen(job_id) or store.get(job_id)
    failed = ended_by_step(record, started)
    if failed is not None:
        raise failed
    return summary(job_id, record)


# JobFailed is an expected end, not a fault: Celery logs it as one INFO line, no traceback.
_TASK: dict[str, Any] = {"bind": True, "throws": (JobFailed,), **_STORE_RETRY}


@app.task(name=TASK_SUBMIT, **_TASK)
def submit(self: Task[Any, Any], job_id: str) -> dict[str, Any]:
    """Create the provider task of a job (once), then schedule its first poll."""
    started = _start(job_id)
    pipeline().submit(job_id)
    return _finish(job_id, started)


@app.task(name=TASK_POLL, **_TASK)
def poll(self: Task[Any, Any], job_id: str, seq: int) -> dict[str, Any]:
    """One status call; re-schedules itself with a countdown until the provider is done."""
    started = _start(job_id)
    pipeline().poll(job_id, seq)
    return _finish(job_id, started)


@app.task(name=TASK_STORE, **_TASK)
def store(self: Task[Any, Any], job_id: str) -> dict[str, Any]:
    """Stream the video into storage, write the manifest, mark the job succeeded."""
    started = _start(job_id)
    try:
        pipeline().store_video(job_id)
    except StoreRetry as retry:
        # The same bound as every countdown the pipeline sends (its DueTracking): never
        # longer than the broker holds a message safely.
        countdown = min(retry.countdown, broker_timing(get_settings()).max_countdown_s)
        raise self.retry(countdown=countdown, exc=retry) from None
    return _finish(job_id, started)


@app.task(name=TASK_CANCEL, **_TASK)
def cancel(self: Task[Any, Any], job_id: str) -> dict[str, Any]:
    """Cancel a job at the provider, as the producer asked."""
    started = _start(job_id)
    pipeline().cancel(job_id)
    return _finish(job_id, started)


@app.task(name=TASK_ADMIT, bind=True, **_STORE_RETRY)
def admit(self: Task[Any, Any], provider: str, model: str) -> dict[str, Any]:
    """Admit the next waiting jobs of a model (its timer: the rate window or a back-off
    ended; or `videoqueue limits set` raised a limit) and send their submit messages."""
    room_admitter = pipeline().admitter
    if room_admitter is None:
        return {"provider": provider, "model": model, "admitted": 0}
    room_admitter.room.disarm_timer(provider, model)
    admitted = room_admitter.admit(provider, model)
    return {"provider": provider, "model": model, "admitted": len(admitted)}


@app.task(name=TASK_UNPARK, bind=True, **_STORE_RETRY)
def unpark(self: Task[Any, Any]) -> dict[str, Any]:
    """The park timer (videoqueue.parking): send the parked steps now due (and those due
    within the lead, with their remaining countdown), then the next unpark message."""
    steps = pipeline()
    sent = run_park_timer(steps.store, steps.dispatch.parking, _send_after, _send_unpark)
    return {"sent": len(sent)}


@app.task(name=TASK_DELIVER, bind=True, **_STORE_RETRY)
def deliver_webhook(self: Task[Any, Any], delivery_id: str) -> dict[str, Any]:
    """One attempt at a delivery (worker.deliver): a job's webhook POSTed, signed, or its
    completion task sent; the next attempt scheduled when one is due."""
    outcome = deliver.attempt(pipeline().store.redis, delivery_id, get_settings(), app.send_task)
    return {"delivery_id": delivery_id, "state": outcome.state, "code": outcome.code, "error": outcome.error}


@app.task(name=TASK_MOVIE_ADVANCE, bind=True, **_STORE_RETRY)
def movie_advance(self: Task[Any, Any], movie_id: str) -> dict[str, Any]:
    """Move a movie on after one of its scenes ended (worker.steps.movie): let the next scene
    go, retry a failed one, fail the movie, or join its scenes."""
    return {"movie_id": movie_id, "action": pipeline().movie_advance(movie_id)}
