"""What every step shares: its dependencies (settings, job store, catalog, providers,
storage, dispatcher, limits, render history) and the moves any step can make (fail a job,
hand a job to a worker configured for its endpoint, stop a task that has not started).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from videoqueue.catalog import Catalog
from videoqueue.endpoints import Endpoint
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from videoqueue.lifecycle import sources
from videoqueue.limits import ProviderLimits
from videoqueue.queues import broker_timing
from videoqueue.room import WaitingRoom
from videoqueue.settings import Settings
from worker.admission import Admitter, SendAdmit
from worker.dispatch import Dispatcher, DueTracking
from worker.inputs import StorageInputs, release_when_due
from worker.providers import provider_endpoint
from worker.providers.base import Provider, ProviderError
from worker.render_history import RenderHistory
from worker.storage import Storage

# One logger for every step, so an operator filters one name for the whole lifecycle.
log = logging.getLogger("videoqueue.pipeline")


class StepBase:
    """The dependencies of the steps and the helpers they share."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        catalog: Catalog,
        providers: Callable[[str], Provider],
        storage: Callable[[], Storage],
        dispatch: Dispatcher,
        limits: ProviderLimits | None = None,
        room: WaitingRoom | None = None,
        send_admit: SendAdmit | None = None,
        history: RenderHistory | None = None,
        rng: random.Random | None = None,
        send_unpark: Callable[[float], None] | None = None,
    ) -> None:
        """`room`: the waiting rooms whose admission hands out quota (its limits are the
        steps' `limits` unless those are given); `send_admit` sends a model's admit message
        after a countdown (its timer; without it only the sweep admits on time alone);
        `send_unpark` sends the park timer's unpark message after a countdown (without it
        only the sweep sends parked steps)."""
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.providers = providers
        self.storage = storage
        self.dispatch = DueTracking(dispatch, store, settings, send_unpark)
        self.limits = limits if limits is not None or room is None else room.limits
        self.room = room
        self.admitter: Admitter | None = None
        if room is not None:
            self.admitter = Admitter(
                room,
                lambda job_id: self.dispatch.submit(job_id, countdown=0.0),
                send_admit or _no_timer,
                broker_timing(settings).max_countdown_s,
            )
            # Every move that frees a slot admits the next waiting jobs at once.
            store.on_slot_freed = self.admitter.admit
        self.inputs = StorageInputs(settings)
        # A success's input images go with its final move; other ends keep them for a retry.
        store.on_final = release_when_due(store, self.inputs)
        self.history = history
        self.rng = rng or random.Random()
        self._endpoints: dict[str, Endpoint] = {}

    def endpoint(self, provider: str) -> Endpoint:
        """The endpoint and account this worker sends `provider`'s calls to."""
        if provider not in self._endpoints:
            self._endpoints[provider] = provider_endpoint(provider, self.settings)
        return self._endpoints[provider]

    def _left_to_matching_worker(self, job: JobRecord, resend: Callable[[float], None] | None) -> bool:
        """True when the job's provider task was created with another endpoint or account
        than this worker's: a status call, cancel or lookup from here would ask the wrong
        provider (and fail the job `not_found`). The step is handed back (`resend`, with a
        countdown, for a worker that matches; the due index keeps the recovery sweep
        informed) and the record says what it waits for. A job from before fingerprints,
        or one this worker matches, goes on here (clearing an old note)."""
        mine = self.endpoint(job.provider)
        if job.provider_fingerprint is None or job.provider_fingerprint == mine.fingerprint:
            if job.waiting_for_endpoint is not None:
                self.store.update(job.id, _set_waiting(None))
            return False
        wanted = f"endpoint host {job.provider_endpoint} (fingerprint {job.provider_fingerprint})"
        give_up_at = job.deadline_at + timedelta(seconds=self.settings.follow_past_deadline_s)
        if utcnow() >= give_up_at:
            if job.provider_task_id or job.submit_intent_at is not None:
                # Nobody here can ask that provider how the task ended: count it as billed.
                self.store.update(job.id, _charge_uncertain(f"its task at {wanted} was never followed to its end"))
            self._fail(
                job.id,
                ErrorCode.DEADLINE,
                f"no worker configured for {wanted} took the job by {give_up_at.isoformat(timespec='seconds')} "
                "(its deadline plus FOLLOW_PAST_DEADLINE_S); its provider task may still have been billed",
            )
            return True
        note = f"waiting for a worker configured for {wanted}; this worker has {mine.describe()}"
        if job.waiting_for_endpoint != note:
            self.store.update(job.id, _set_waiting(note))
        log.warning(
            "job left to a worker configured for its endpoint",
            extra={"job_id": job.id, "wanted": job.provider_fingerprint, "mine": mine.fingerprint},
        )
        if resend is not None:
            resend(self.settings.poll_max_s * self.rng.uniform(0.5, 1.0))
        return True

    def _fail(self, job_id: str, code: ErrorCode, message: str, provider_code: str | None = None) -> JobRecord | None:
        log.warning("job failed", extra={"job_id": job_id, "error_code": code.value})
        return self.store.transition(
            job_id,
            sources(JobStatus.FAILED),
            JobStatus.FAILED,
            error=JobFailure(code=code, message=message, provider_code=provider_code),
            submit_lease_until=None,
        )

    def _cancel_if_queued(self, provider: Provider, job: JobRecord, task_id: str) -> bool:
        """Cancel a task the provider has not started. True if it stopped."""
        try:
            return provider.cancel(task_id)
        except ProviderError as exc:
            log.warning("provider cancel failed", extra={"job_id": job.id, "error_code": exc.code.value})
            return False

    def _seconds_to_deadline(self, job: JobRecord) -> float:
        return (job.deadline_at - utcnow()).total_seconds()


def _no_timer(provider: str, model: str, countdown: float) -> None:
    log.debug("no admit timer: the sweep admits", extra={"provider": provider, "model": model})


def _set_waiting(note: str | None) -> Callable[[JobRecord], JobRecord | None]:
    """A mutation setting (or clearing) what an active job waits for."""

    def set_waiting(record: JobRecord) -> JobRecord | None:
        if record.status.is_final or record.waiting_for_endpoint == note:
            return None
        record.waiting_for_endpoint = note
        return record

    return set_waiting


def _charge_uncertain(why: str) -> Callable[[JobRecord], JobRecord | None]:
    """Count a provider task the job may be billed for but will not use, and charge its
    estimate (the ledger and budgets take it when the job ends)."""

    def charge(record: JobRecord) -> JobRecord | None:
        if record.status.is_final:
            log.error("uncertain task not charged: job already final", extra={"job_id": record.id})
            return None
        record.uncertain_creates += 1
        record.uncertain_cost_usd = (record.uncertain_cost_usd or Decimal(0)) + record.cost_estimate_usd
        record.notes = [*record.notes, f"{why}; charged at its estimate ${record.cost_estimate_usd:.4f}"]
        return record

    return charge


def _deadline_s(job: JobRecord) -> float:
    """The job's own deadline in seconds after enqueue (its producer's JOB_DEADLINE_S)."""
    return round((job.deadline_at - job.created_at).total_seconds(), 1)
