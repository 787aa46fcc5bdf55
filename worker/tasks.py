"""Celery tasks: thin wrappers that hand a job id to the pipeline. Arguments are the job
id (and the poll sequence number), never a prompt or a key."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Task
from celery.signals import worker_process_init, worker_ready, worker_shutdown
from redis.exceptions import RedisError

from producer.catalog import load_catalog
from producer.contract import TASK_CANCEL, TASK_POLL, TASK_STORE, TASK_SUBMIT
from producer.jobstore import JobStore
from producer.limits import ProviderLimits
from producer.queues import broker_timing
from producer.settings import get_settings
from worker import logs, registry
from worker.app import app
from worker.pipeline import Pipeline, StoreRetry
from worker.providers import get_provider, reset_providers
from worker.render_history import RenderHistory
from worker.storage import Storage, open_storage
from worker.sweep import start_sweeper


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


@lru_cache(maxsize=1)
def _storage() -> Storage:
    return open_storage(get_settings())


@lru_cache(maxsize=1)
def pipeline() -> Pipeline:
    """The pipeline of this worker process."""
    settings = get_settings()
    store = JobStore.from_url(settings.redis_url)
    defaults, overrides = settings.provider_limits()
    return Pipeline(
        settings=settings,
        store=store,
        catalog=load_catalog(settings.pricing_file),
        providers=lambda name: get_provider(name, settings),
        storage=_storage,
        dispatch=CeleryDispatcher(),
        limits=ProviderLimits(store.redis, defaults, overrides, settings.slot_lease_s),
        history=RenderHistory(
            store.redis,
            size=settings.poll_history_size,
            cache_s=settings.poll_history_cache_s,
            min_samples=settings.poll_history_min,
        ),
    )


@worker_process_init.connect
def _fresh_clients(**_: Any) -> None:
    # Connections must not be shared across the fork of a prefork pool child.
    pipeline.cache_clear()
    _storage.cache_clear()
    reset_providers()
    logs.configure(get_settings().log_level)


logs.configure(get_settings().log_level)


_heartbeats: list[registry.Heartbeat] = []


@worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    # In the worker's main process only: pool children never see worker_ready.
    start_sweeper(app, get_settings())
    # Register in the namespace's worker registry, for `videoqueue doctor`.
    node = str(getattr(sender, "hostname", None) or app.conf.get("worker_name") or "worker")
    queues = sorted(app.amqp.queues.consume_from)
    _heartbeats.append(registry.start_heartbeat(node, queues, get_settings()))


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


def job_summary(job_id: str) -> dict[str, Any]:
    """What a task returns, for Flower's task view: where the job stands after the step
    (its status and provider task id; never the prompt, never a key)."""
    record = pipeline().store.get(job_id)
    if record is None:
        return {"job_id": job_id, "status": "unknown"}
    summary: dict[str, Any] = {
        "job_id": job_id,
        "status": record.status.value,
        "provider": record.provider,
        "provider_task_id": record.provider_task_id,
        "provider_status": record.provider_status,
    }
    if record.error is not None:
        summary["error"] = record.error.code.value
    return summary


@app.task(name=TASK_SUBMIT, bind=True, **_STORE_RETRY)
def submit(self: Task[Any, Any], job_id: str) -> dict[str, Any]:
    """Create the provider task of a job (once), then schedule its first poll."""
    pipeline().submit(job_id)
    return job_summary(job_id)


@app.task(name=TASK_POLL, bind=True, **_STORE_RETRY)
def poll(self: Task[Any, Any], job_id: str, seq: int) -> dict[str, Any]:
    """One status call; re-schedules itself with a countdown until the provider is done."""
    pipeline().poll(job_id, seq)
    return job_summary(job_id)


@app.task(name=TASK_STORE, bind=True, **_STORE_RETRY)
def store(self: Task[Any, Any], job_id: str) -> dict[str, Any]:
    """Stream the video into storage, write the manifest, mark the job succeeded."""
    try:
        pipeline().store_video(job_id)
    except StoreRetry as retry:
        # The same bound as every countdown the pipeline sends (its DueTracking): never
        # longer than the broker holds a message safely.
        countdown = min(retry.countdown, broker_timing(get_settings()).max_countdown_s)
        raise self.retry(countdown=countdown, exc=retry) from None
    return job_summary(job_id)


@app.task(name=TASK_CANCEL, bind=True, **_STORE_RETRY)
def cancel(self: Task[Any, Any], job_id: str) -> dict[str, Any]:
    """Cancel a job at the provider, as the producer asked."""
    pipeline().cancel(job_id)
    return job_summary(job_id)
