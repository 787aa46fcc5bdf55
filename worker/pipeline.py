"""The job lifecycle as the worker runs it: submit, poll, store and cancel.

Each step reads the job record, does at most one provider or storage action, and moves
the record on with a compare-and-set. A step that runs twice (at-least-once delivery)
finds the record already moved and does nothing, or repeats an action that is harmless
to repeat (a status call, an upload of the same bytes to the same key).

Steps never sleep: what must happen later is sent as a new message with a countdown
through the `Dispatcher`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from redis.exceptions import RedisError

from videoqueue.budget import exceeded
from videoqueue.catalog import Catalog
from videoqueue.endpoints import Endpoint
from videoqueue.job import ACTIVE_STATUSES, RESULT_TTL_S, ErrorCode, JobError, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore, TaskClaimedError
from videoqueue.limits import ProviderLimits
from videoqueue.queues import broker_timing
from videoqueue.settings import Settings
from worker.manifest import build_manifest
from worker.providers import provider_endpoint
from worker.providers.base import ImageInput, Provider, ProviderError, TaskState, TaskStatus
from worker.render_history import RenderHistory
from worker.schedule import poll_delay, render_window, retry_delay, window_poll_delay
from worker.storage import Storage, VideoCheckError

log = logging.getLogger("videoqueue.pipeline")

ACTIVE_AT_PROVIDER = frozenset({JobStatus.RUNNING})


class Dispatcher(Protocol):
    """Sends the next step of a job as a message, after `countdown` seconds."""

    def submit(self, job_id: str, countdown: float) -> None: ...

    def poll(self, job_id: str, seq: int, countdown: float) -> None: ...

    def store(self, job_id: str, countdown: float) -> None: ...


class DueTracking:
    """Sends through another dispatcher and records when the job's next step is due, so
    the recovery sweep can tell a job that lost its message from one that is waiting.

    Every countdown a step schedules passes here, and here it is bounded: a submit never
    waits past the job's deadline (it then runs at the deadline, and ends the job), and no
    message is sent with a countdown longer than the broker holds one safely
    (`BrokerTiming.max_countdown_s`; on Redis a longer one would be delivered a second time
    once the visibility timeout passed). A longer wait is parked in the job store instead
    (due index plus parked index) and the sweep sends the step when it is due."""

    def __init__(self, inner: Dispatcher, jobs: JobStore, settings: Settings) -> None:
        self.inner = inner
        self.jobs = jobs
        self.max_countdown_s = broker_timing(settings).max_countdown_s

    def _send(self, job_id: str, countdown: float, send: Callable[[float], None]) -> None:
        due = (utcnow() + timedelta(seconds=countdown)).timestamp()
        if countdown > self.max_countdown_s:
            self.jobs.park(job_id, due)
            log.info("wait parked in the job store", extra={"job_id": job_id, "countdown": round(countdown, 1)})
            return
        send(countdown)
        self.jobs.mark_due(job_id, due)

    def submit(self, job_id: str, countdown: float) -> None:
        job = self.jobs.get(job_id)
        to_deadline = (job.deadline_at - utcnow()).total_seconds() if job is not None else 0.0
        if to_deadline > 0:
            # Before the provider has the task, no wait runs past the deadline. Past it,
            # only a create in progress is waited for (its lease), not in a tight loop.
            countdown = min(countdown, to_deadline + 0.5)
        self._send(job_id, countdown, lambda c: self.inner.submit(job_id, c))

    def poll(self, job_id: str, seq: int, countdown: float) -> None:
        self._send(job_id, countdown, lambda c: self.inner.poll(job_id, seq, c))

    def store(self, job_id: str, countdown: float) -> None:
        self._send(job_id, countdown, lambda c: self.inner.store(job_id, c))


class StoreRetry(Exception):
    """The store step should run again after `countdown` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


class Pipeline:
    """The steps of a job, wired to a job store, providers, storage and a dispatcher."""

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
        history: RenderHistory | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.providers = providers
        self.storage = storage
        self.dispatch = DueTracking(dispatch, store, settings)
        self.limits = limits
        self.history = history
        self.rng = rng or random.Random()
        self._endpoints: dict[str, Endpoint] = {}

    # ----------------------------------------------------------------- helpers

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
            ACTIVE_STATUSES,
            JobStatus.FAILED,
            error=JobError(code=code, message=message, provider_code=provider_code),
            submit_lease_until=None,
        )

    def _expire_unsent(self, job: JobRecord) -> None:
        """End a job whose create never reached the provider (nothing there to wait for)."""
        self.store.transition(
            job.id,
            {JobStatus.QUEUED, JobStatus.SUBMITTING},
            JobStatus.EXPIRED,
            error=JobError(code=ErrorCode.DEADLINE, message="deadline passed before the job reached the provider"),
            submit_lease_until=None,
        )
        log.info("job expired", extra={"job_id": job.id})

    def _cancel_if_queued(self, provider: Provider, job: JobRecord, task_id: str) -> bool:
        """Cancel a task the provider has not started. True if it stopped."""
        try:
            return provider.cancel(task_id)
        except ProviderError as exc:
            log.warning("provider cancel failed", extra={"job_id": job.id, "error_code": exc.code.value})
            return False

    def _seconds_to_deadline(self, job: JobRecord) -> float:
        return (job.deadline_at - utcnow()).total_seconds()

    def _poll_countdown(self, job: JobRecord, poll_number: int) -> float:
        """Seconds until poll number `poll_number`: the learned window when enough render
        times of this kind of job are known, else the cold schedule."""
        to_deadline = self._seconds_to_deadline(job)
        elapsed = (utcnow() - job.submitted_at).total_seconds() if job.submitted_at else 0.0
        window = None
        if self.history is not None and self.settings.poll_schedule == "learned" and job.submitted_at:
            try:
                window = render_window(self.history.render_times(job), self.settings)
            except RedisError:
                log.warning("render history unreadable: cold schedule", extra={"job_id": job.id})
        if window is None:
            return poll_delay(elapsed, self.settings, self.rng, to_deadline, first=poll_number <= 1)
        return window_poll_delay(elapsed, window, self.settings, self.rng, to_deadline)

    def _remember_render_time(self, job: JobRecord, state: TaskState, detected_at: datetime) -> None:
        """Add the render time of a job that just succeeded to the history (best effort)."""
        if self.history is None or job.submitted_at is None:
            return
        # The previous poll (or the submit) found the task unfinished and last changed the
        # record: the task finished between then and now. A provider-reported finish time
        # is used when it falls in that span (clocks differ); else the midpoint.
        last_seen_running = max(job.updated_at, job.submitted_at)
        finished = state.finished_at
        precise = True
        if finished is None or not last_seen_running <= finished <= detected_at:
            finished = last_seen_running + (detected_at - last_seen_running) / 2
            span_s = (detected_at - last_seen_running).total_seconds()
            precise = span_s <= 2 * self.settings.poll_interval_s
        try:
            self.history.add(job, (finished - job.submitted_at).total_seconds(), precise=precise)
        except RedisError:
            log.warning("render time not recorded", extra={"job_id": job.id})

    def _actual_cost(self, job: JobRecord, billed_units: int) -> Decimal:
        request = job.request
        return self.catalog.models[job.model].usd(
            billed_units,
            audio=bool(request["audio"]),
            service_tier=request["service_tier"],
            resolution=request["resolution"],
        )

    def _images(self, job: JobRecord) -> dict[str, ImageInput]:
        """The job's input images by role; ProviderError if an uploaded one is gone."""
        images: dict[str, ImageInput] = {}
        for role, source in (job.request.get("images") or {}).items():
            if "url" in source:
                images[role] = ImageInput(url=source["url"])
                continue
            stored = self.store.get_input(job.id, role)
            if stored is None:
                raise ProviderError(ErrorCode.INVALID_REQUEST, f"the uploaded {role} image is no longer stored")
            images[role] = ImageInput(data=stored.data, mime_type=stored.mime_type)
        return images

    # ------------------------------------------------------------------ submit

    def submit(self, job_id: str) -> None:
        """Create the provider task of a job, exactly once, then start polling."""
        job = self.store.get(job_id)
        if job is None or job.status.is_final:
            return
        if job.provider_task_id:
            # A redelivered submit after the create was recorded: make sure polling runs.
            # Duplicate poll messages collapse on poll_seq.
            if job.status is JobStatus.RUNNING:
                self.dispatch.poll(job.id, job.poll_seq, countdown=1.0)
            return
        now = utcnow()
        if job.cancel_requested and job.status is JobStatus.QUEUED:
            self.store.transition(job.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
            return
        if job.status is JobStatus.SUBMITTING and job.submit_lease_until and job.submit_lease_until > now:
            # Another worker is in the middle of the create call. Look again when its
            # lease ends, in case it died.
            wait = (job.submit_lease_until - now).total_seconds() + 1.0
            self.dispatch.submit(job.id, countdown=wait)
            return
        # A create whose answer was lost is looked up where it was sent, and only there.
        uncertain = job.status is JobStatus.SUBMITTING and job.submit_intent_at is not None
        if uncertain and self._left_to_matching_worker(job, lambda c: self.dispatch.submit(job_id, c)):
            return
        if now >= job.deadline_at:
            self._submit_deadline(job, now)
            return
        if job.status is JobStatus.QUEUED and self._over_budget(job):
            return

        if self.limits is not None:
            wait = self.limits.acquire(job.provider, job.model, job.id)
            if wait > 0:
                # No slot, no create token or a fleet-wide back-off: ask again later.
                self.dispatch.submit(job.id, countdown=wait * self.rng.uniform(1.0, 1.25))
                return

        uncertain_since = job.submit_intent_at if job.status is JobStatus.SUBMITTING else None
        lease_until = now + timedelta(seconds=self.settings.submit_lease_s)
        claimed = self.store.update(job.id, _claim(now, lease_until, self.endpoint(job.provider)))
        if claimed is None:
            return
        recorded = self._create_once(claimed, uncertain_since, lease_until)
        if recorded is not None:
            self._start_polling(recorded)

    def _over_budget(self, job: JobRecord) -> bool:
        """A cap lowered since enqueue leaves no room for a job not yet created: it ends
        failed (budget_exceeded), its reservation released, rather than be billed."""
        over = exceeded(self.store.redis, job, self.settings.budget_policy())
        if over is None:
            return False
        error = JobError(code=ErrorCode.BUDGET_EXCEEDED, message=str(over))
        if self.store.transition(job.id, {JobStatus.QUEUED}, JobStatus.FAILED, error=error) is not None:
            log.warning("job failed", extra={"job_id": job.id, "error_code": ErrorCode.BUDGET_EXCEEDED.value})
        return True

    def _start_polling(self, recorded: JobRecord) -> None:
        if recorded.cancel_requested or utcnow() >= recorded.deadline_at:
            self._check(recorded, seq=None)  # stops it at once if the provider still can
            recorded = self.store.get(recorded.id) or recorded
            if recorded.status is not JobStatus.RUNNING:
                return
        self.dispatch.poll(recorded.id, 1, countdown=self._poll_countdown(recorded, 1))

    def _submit_deadline(self, job: JobRecord, now: datetime) -> None:
        """The deadline came before a task was recorded. A job whose create never left us
        expires; one with an uncertain create gets one last lookup first, since the
        provider may be rendering it: a task found is followed like any other."""
        if job.status is JobStatus.QUEUED or job.submit_intent_at is None:
            self._expire_unsent(job)
            return
        lease_until = now + timedelta(seconds=self.settings.submit_lease_s)
        claimed = self.store.update(job.id, _claim(now, lease_until, self.endpoint(job.provider)))
        if claimed is None:
            return
        recorded = self._settle_uncertain(claimed, lease_until)
        if recorded is not None:
            self._start_polling(recorded)
            return
        self.store.transition(
            job.id,
            {JobStatus.SUBMITTING},
            JobStatus.EXPIRED,
            error=JobError(code=ErrorCode.DEADLINE, message="deadline passed before a provider task was recorded"),
            submit_lease_until=None,
        )

    def _settle_uncertain(self, job: JobRecord, lease_until: datetime) -> JobRecord | None:
        """Last word on an uncertain create before the job gives up on creating: adopt
        the task it made if the provider shows it, else charge its estimate when the
        provider cannot tell. Returns the running record when a task was adopted."""
        assert job.submit_intent_at is not None
        try:
            provider = self.providers(job.provider)
            task_id, certain = self._find_own_task(provider, job, job.submit_intent_at)
        except ProviderError as exc:
            log.warning("last lookup failed", extra={"job_id": job.id, "error_code": exc.code.value})
            task_id, certain = None, False
        if task_id is not None:
            try:
                return self._record_task(job.id, task_id, lease_until)
            except TaskClaimedError:
                task_id, certain = None, False
        if not certain:
            self.store.update(job.id, _charge_uncertain("a create whose answer was lost may have made a task"))
        return None

    def _find_own_task(self, provider: Provider, job: JobRecord, since: datetime) -> tuple[str | None, bool]:
        """(the task an interrupted create made or None, whether that answer is certain).

        Only a candidate no other job has recorded is ours; more than one such candidate,
        or a listing that could not be read whole, is an answer we cannot be sure of."""
        lookup = provider.find_created(job, since)
        owners = self.store.task_owners(job.provider, lookup.candidates)
        free = [t for t in lookup.candidates if owners.get(t, job.id) == job.id]
        if len(free) == 1:
            return free[0], True
        return None, lookup.complete and not free

    def _record_task(self, job_id: str, task_id: str, lease_until: datetime) -> JobRecord | None:
        """Record the job's provider task, if our submit still holds the job. Raises
        TaskClaimedError when the task already belongs to another job."""

        def record_task(record: JobRecord) -> JobRecord | None:
            if record.status is not JobStatus.SUBMITTING or record.submit_lease_until != lease_until:
                return None
            record.status = JobStatus.RUNNING
            record.provider_task_id = task_id
            record.provider_status = "queued"
            record.submitted_at = utcnow()
            record.submit_lease_until = None
            record.submit_intent_at = None
            record.poll_seq = 1
            # The first poll is due now-ish, not when the create lease would have ended:
            # a crash before it is sent is recovered after RECOVER_AFTER_S.
            record.next_due_at = utcnow()
            return record

        return self.store.update(job_id, record_task)

    def _create_once(self, job: JobRecord, uncertain_since: datetime | None, lease_until: datetime) -> JobRecord | None:
        """Create (or, after an interrupted attempt, find) the provider task and record its
        id. Returns the running record, or None when there is nothing more to do now."""
        task_id: str | None = None
        try:
            provider = self.providers(job.provider)
            if uncertain_since is not None:
                # An earlier attempt may have created the task and died before recording it.
                task_id, certain = self._find_own_task(provider, job, uncertain_since)
                if task_id:
                    log.info("found task of an interrupted create", extra={"job_id": job.id})
                elif certain:
                    log.info("interrupted create made no task: creating", extra={"job_id": job.id})
                else:
                    # The provider cannot tell: the lost create may be a paid task we will
                    # never see. Count it and charge its estimate; create again only while
                    # UNCERTAIN_CREATES_MAX allows, so a timeout shorter than the provider's
                    # answer does not buy render after render nobody can fetch.
                    charged = self.store.update(
                        job.id, _charge_uncertain("a create whose answer was lost may have made a task")
                    )
                    if charged is not None and charged.uncertain_creates >= self.settings.uncertain_creates_max:
                        self._fail(
                            job.id,
                            ErrorCode.SUBMIT_UNCERTAIN,
                            f"{charged.uncertain_creates} creates whose answers were lost cannot be found at the "
                            f"provider (UNCERTAIN_CREATES_MAX {self.settings.uncertain_creates_max}); "
                            "not creating another",
                        )
                        return None
                    log.warning("re-creating after an uncertain create", extra={"job_id": job.id})
            images = self._images(job)
        except ProviderError as exc:
            # Still unknown whether a task exists: keep the intent, look again next time.
            self._submit_failed(job, exc, lease_until, still_uncertain=True)
            return None
        if task_id is None:
            try:
                self.store.update(job.id, _count_attempt)
                task_id = provider.create(job, images)
            except ProviderError as exc:
                sent = exc.code is ErrorCode.TIMEOUT and exc.request_sent
                self._submit_failed(job, exc, lease_until, still_uncertain=sent)
                return None

        try:
            recorded = self._record_task(job.id, task_id, lease_until)
        except TaskClaimedError as exc:
            # Another job's lookup adopted this very task (identical requests): it is in
            # use. Ours may still exist: keep the intent and look again.
            log.warning("task adopted by another job", extra={"job_id": job.id, "owner": exc.owner})
            released = self.store.update(job.id, _release_uncertain(lease_until))
            if released is not None:
                self.dispatch.submit(job.id, countdown=retry_delay(1, self.settings, self.rng))
            return None
        if recorded is None:
            # Someone took the job over while our create ran (our lease ran out). Unless
            # they recorded this very task, it is a duplicate: stop it if it has not
            # started, else it will be billed, so charge it to the job.
            log.error("lost the submit lease during create", extra={"job_id": job.id})
            current = self.store.get(job.id)
            if current is None or current.provider_task_id != task_id:
                owner = self.store.task_owners(job.provider, [task_id]).get(task_id)
                if owner is None and not self._cancel_if_queued(provider, job, task_id):
                    self.store.update(job.id, _charge_uncertain(f"duplicate task {task_id} could not be cancelled"))
            return None
        log.info("provider task created", extra={"job_id": job.id, "provider_task_id": task_id})
        return recorded

    def _submit_failed(
        self, job: JobRecord, exc: ProviderError, lease_until: datetime, *, still_uncertain: bool
    ) -> None:
        """Decide what a failed create (or lookup) means: fail the job, or release it for a
        retry. Only the attempt that still holds the lease may change the record."""
        extra = {"job_id": job.id, "error_code": exc.code.value}
        if not exc.retryable:
            self._give_up_submit(job, exc, lease_until, exc.message, uncertain=still_uncertain)
            return
        rate_limited = exc.code is ErrorCode.RATE_LIMITED
        decision: dict[str, float | bool] = {}

        def release(record: JobRecord) -> JobRecord | None:
            if record.status is not JobStatus.SUBMITTING or record.submit_lease_until != lease_until:
                return None
            if rate_limited:
                # A 429 is the provider asking us to wait, not a failure of the job.
                record.submit_rate_limits += 1
            else:
                record.submit_errors += 1
            if record.submit_errors >= self.settings.submit_max_attempts:
                decision["give_up"] = True
                return None
            if still_uncertain:
                # The create may have reached the provider: keep the intent so the next
                # attempt looks the task up before creating another; free the lease now.
                record.submit_lease_until = utcnow()
            else:
                record.status = JobStatus.QUEUED
                record.submit_lease_until = None
                record.submit_intent_at = None
            decision["backoff"] = record.submit_rate_limits if rate_limited else record.submit_errors
            return record

        released = self.store.update(job.id, release)
        if self.limits is not None:
            if rate_limited:
                # Every job of the model waits this long: a Retry-After is honoured up to
                # RETRY_MAX_S, so one odd answer cannot halt the model for a day.
                back_off = min(exc.retry_after or retry_delay(1, self.settings, self.rng), self.settings.retry_max_s)
                self.limits.back_off(job.provider, job.model, back_off)
            if not still_uncertain and not decision.get("give_up"):
                self.limits.release(job.provider, job.model, job.id)
        if decision.get("give_up"):
            message = f"gave up after {self.settings.submit_max_attempts} failed attempts: {exc.message}"
            self._give_up_submit(job, exc, lease_until, message, uncertain=still_uncertain)
            return
        if released is not None:
            delay = max(retry_delay(int(decision["backoff"]), self.settings, self.rng), exc.retry_after or 0.0)
            log.info("submit will be retried", extra={**extra, "countdown": round(delay, 1)})
            self.dispatch.submit(job.id, countdown=delay)

    def _give_up_submit(
        self, job: JobRecord, exc: ProviderError, lease_until: datetime, message: str, *, uncertain: bool
    ) -> None:
        """Fail a job whose create cannot succeed, unless an uncertain create made a task
        after all: one last lookup first, and a task found is followed instead."""
        current = self.store.get(job.id)
        if uncertain and current is not None and current.submit_intent_at is not None:
            recorded = self._settle_uncertain(current, lease_until)
            if recorded is not None:
                self._start_polling(recorded)
                return
        self._fail(job.id, exc.code, message, exc.provider_code)

    # -------------------------------------------------------------------- poll

    def poll(self, job_id: str, seq: int) -> None:
        """One status call for a running job; then re-schedule, or move on."""
        job = self.store.get(job_id)
        if job is None or job.status.is_final or seq < job.poll_seq:
            return
        if job.status is JobStatus.DOWNLOADING:
            # Redelivery of the poll that saw the provider finish: make sure store runs.
            if seq == job.poll_seq:
                self.dispatch.store(job.id, countdown=0)
            return
        if job.status is not JobStatus.RUNNING or not job.provider_task_id:
            return
        if self._left_to_matching_worker(job, lambda c: self.dispatch.poll(job_id, seq, c)):
            return
        self._check(job, seq)

    def _check(self, job: JobRecord, seq: int | None) -> None:
        """Ask the provider where the job's task stands and act on it: the only way a job
        at the provider ends. `seq` None: a check outside the poll chain (a cancel), which
        schedules no poll.

        At the deadline, or when the producer cancelled, the status call comes first: a
        task that finished is stored or failed the way the provider says; one still queued
        is cancelled there; one already rendering cannot be stopped, will be billed, and
        is followed to its end."""
        if self.limits is not None:
            self.limits.renew(job.provider, job.model, job.id)
        provider = self.providers(job.provider)
        try:
            state = provider.get(job)
        except ProviderError as exc:
            if seq is not None:
                self._poll_failed(job, seq, exc)
            return
        now = utcnow()
        if state.status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            if self._stop(provider, job, state, now):
                return
            if seq is not None:
                delay = self._poll_countdown(job, seq + 1)
                self._next_poll(job, seq, delay, state.provider_status, poll_errors=0)
            return
        late = now >= job.deadline_at
        if state.status is TaskStatus.SUCCEEDED:
            self._provider_succeeded(job, state, late=late)
        elif state.status is TaskStatus.FAILED:
            self._fail(
                job.id,
                state.error_code or ErrorCode.UPSTREAM,
                state.error_message or "provider reported failure",
                state.provider_error_code,
            )
        elif state.status is TaskStatus.CANCELLED:
            self.store.transition(job.id, {JobStatus.RUNNING}, JobStatus.CANCELLED, provider_status="cancelled")
        elif state.status is TaskStatus.EXPIRED:
            message = state.error_message or "the provider expired the task"
            self._expire_running(job, "expired", message, state.provider_error_code)

    def _expire_running(
        self, job: JobRecord, provider_status: str, message: str, provider_code: str | None = None
    ) -> JobRecord | None:
        return self.store.transition(
            job.id,
            {JobStatus.RUNNING},
            JobStatus.EXPIRED,
            provider_status=provider_status,
            error=JobError(code=ErrorCode.DEADLINE, message=message, provider_code=provider_code),
        )

    def _stop(self, provider: Provider, job: JobRecord, state: TaskState, now: datetime) -> bool:
        """Stop a task still at the provider when the deadline has come or the producer
        cancelled. True if the job ended; False if it goes on being followed."""
        at_deadline = now >= job.deadline_at
        if not (at_deadline or job.cancel_requested):
            return False
        assert job.provider_task_id is not None
        if state.status is TaskStatus.QUEUED and self._cancel_if_queued(provider, job, job.provider_task_id):
            if job.cancel_requested:
                done = self.store.transition(
                    job.id, {JobStatus.RUNNING}, JobStatus.CANCELLED, provider_status="cancelled"
                )
            else:
                done = self._expire_running(
                    job,
                    "cancelled",
                    f"not started at the provider within its deadline ({_deadline_s(job):g} s after enqueue);"
                    " cancelled there, nothing billed",
                )
            log.info("provider task cancelled", extra={"job_id": job.id})
            return done is not None
        if at_deadline and (now - job.deadline_at).total_seconds() >= self.settings.follow_past_deadline_s:
            # Only a provider that never ends its tasks gets here (ModelArk expires them).
            self._expire_running(
                job,
                state.provider_status,
                f"still {state.provider_status} at the provider FOLLOW_PAST_DEADLINE_S "
                f"({self.settings.follow_past_deadline_s:g} s) after the deadline",
            )
            return True
        self.store.update(job.id, _note_unstoppable(at_deadline, now, state.provider_status, self.settings))
        return False

    def _next_poll(
        self,
        job: JobRecord,
        seq: int,
        delay: float,
        provider_status: str | None,
        *,
        poll_errors: int,
    ) -> None:
        # Send first, then record: a crash in between leaves a duplicate message (which
        # poll_seq makes harmless), never a job with no message.
        self.dispatch.poll(job.id, seq + 1, countdown=delay)

        def advance(record: JobRecord) -> JobRecord | None:
            if record.status is not JobStatus.RUNNING or record.poll_seq > seq:
                return None
            record.poll_seq = seq + 1
            if provider_status:
                record.provider_status = provider_status
            record.poll_errors = poll_errors
            return record

        self.store.update(job.id, advance)

    def _poll_failed(self, job: JobRecord, seq: int, exc: ProviderError) -> None:
        if not exc.retryable:
            self._fail(job.id, exc.code, exc.message, exc.provider_code)
            return
        # A 429 asks us to wait; it does not count towards giving up.
        errors = job.poll_errors + (0 if exc.code is ErrorCode.RATE_LIMITED else 1)
        if errors >= self.settings.poll_max_errors:
            self._fail(
                job.id,
                exc.code,
                f"status calls failed {errors} times: {exc.message}",
                exc.provider_code,
            )
            return
        delay = retry_delay(max(errors, 1), self.settings, self.rng, exc.retry_after)
        to_deadline = self._seconds_to_deadline(job)
        if to_deadline > 0:
            delay = min(delay, to_deadline + 0.5)
        self._next_poll(job, seq, delay, None, poll_errors=errors)

    def _provider_succeeded(self, job: JobRecord, state: TaskState, *, late: bool) -> None:
        billed = state.billed_units
        cost = self._actual_cost(job, billed) if billed is not None else None
        detected_at = utcnow()
        changes: dict[str, object] = {}
        if late:
            finished = state.finished_at or detected_at
            when = "after" if finished >= job.deadline_at else "before"
            changes["past_deadline_at"] = job.past_deadline_at or detected_at
            changes["notes"] = [
                *job.notes,
                f"finished at the provider {when} the deadline and was billed: stored like any other",
            ]
        # Even a job cancelled meanwhile goes to the store step: the provider charged for
        # it, so its video is kept and its cost recorded.
        moved = self.store.transition(
            job.id,
            {JobStatus.RUNNING},
            JobStatus.DOWNLOADING,
            video_url=state.video_url,
            billed_units=billed,
            cost_usd=cost,
            provider_status="succeeded",
            provider_done_at=detected_at,
            **changes,
        )
        if moved is not None:
            self.dispatch.store(job.id, countdown=0)
            # Only the poll that made the move records the sample: a duplicate adds none.
            self._remember_render_time(job, state, detected_at)

    # ------------------------------------------------------------------- store

    def store_video(self, job_id: str) -> None:
        """Stream the finished video into storage, write its manifest, mark the job done.

        Every attempt is counted when it starts, so one that never returns (a killed pool
        child, a hard time limit) counts too; every failure inside an attempt counts and
        is logged with its class; after STORE_MAX_ATTEMPTS, or STORE_DEADLINE_S after the
        provider's finish, the job ends `failed` (storage) with where the video can still
        be fetched (`videoqueue store retry`). An attempt holds a lease of STORE_BUSY_S;
        one that outlives it is superseded, and its late result is discarded (the record
        moves only for the attempt number it started with).

        Raises StoreRetry when the step should run again later."""
        job = self.store.get(job_id)
        if job is None or job.status is not JobStatus.DOWNLOADING:
            return
        # A job cancelled after the provider finished is stored all the same: the video was
        # paid for. It ends `cancelled`, with its video.
        final_status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.SUCCEEDED
        if job.video_url is None and self._left_to_matching_worker(job, lambda c: self.dispatch.store(job_id, c)):
            return  # the video is fetched through the provider's API, from where it was made
        started = self._start_store_attempt(job)
        if started is None:
            return
        job, attempt = started, started.store_attempts
        video_key = f"{job.id}.mp4"
        try:
            storage = self.storage()
            with self.providers(job.provider).open_video(job) as stream:
                stored = storage.put_video(video_key, stream.chunks, stream.size)
            # Read back what the backend holds, not what we think we sent.
            held = storage.size(video_key)
            if held != stored.size:
                raise VideoCheckError(f"storage holds {held} bytes at {stored.uri}, we wrote {stored.size}")
            finished_at = utcnow()
            final = job.model_copy(
                update={
                    "status": final_status,
                    "output_uri": stored.uri,
                    "manifest_uri": storage.uri(f"{job.id}.json"),
                    "finished_at": finished_at,
                    "store_lease_until": None,
                }
            )
            storage.put_json(f"{job.id}.json", build_manifest(final, stored.size))
        except RedisError:
            raise  # the job store is unreachable: the task retries; the attempt is counted
        except ProviderError as exc:
            self._log_store_failure(job, attempt, exc)
            if exc.retryable:
                self._store_retry(job, attempt, f"download failed: {exc.message}")
            else:
                error = JobError(code=exc.code, message=f"could not download the video: {exc.message}")
                self._finish_without_video(job, JobStatus.FAILED, error, attempt=attempt)
            return
        except Exception as exc:  # noqa: BLE001 - every failure of an attempt counts (storage, check, time limit, bug)
            self._log_store_failure(job, attempt, exc)
            self._store_retry(job, attempt, f"{type(exc).__name__}: {exc}")
            return

        def succeed(record: JobRecord) -> JobRecord | None:
            if record.status is not JobStatus.DOWNLOADING or record.store_attempts != attempt:
                return None
            return record.model_copy(
                update={
                    "status": final_status,
                    "output_uri": stored.uri,
                    "manifest_uri": final.manifest_uri,
                    "finished_at": finished_at,
                    "store_lease_until": None,
                    "error": None,
                    "result_expires_at": None,
                }
            )

        if self.store.update(job.id, succeed) is None:
            log.warning(
                "store attempt superseded: its result is discarded", extra={"job_id": job.id, "attempt": attempt}
            )
            return
        log.info("video stored", extra={"job_id": job.id, "uri": stored.uri, "bytes": stored.size})

    def _start_store_attempt(self, job: JobRecord) -> JobRecord | None:
        """Count a new store attempt and take the store lease, or decide there is none to
        make now: the job is past its store deadline or out of attempts (it ends), or an
        attempt holds the lease (look again when it ends). Returns the record as the
        attempt starts it."""
        now = utcnow()
        store_deadline = self._store_deadline(job)
        if now >= store_deadline:
            reason = f"not stored within STORE_DEADLINE_S ({self.settings.store_deadline_s:g} s) of the finish"
            self._give_up_storing(job, job.store_attempts, reason)
            return None
        if job.store_lease_until is not None and job.store_lease_until > now:
            # An attempt is in progress (this is a duplicate message): look again when its
            # lease ends, in case it never returns.
            wait = (min(job.store_lease_until, store_deadline) - now).total_seconds() + 1.0
            self.dispatch.store(job.id, countdown=wait)
            return None
        if job.store_attempts >= self.settings.store_max_attempts:
            # The last attempt started and never reported back (killed, over its time
            # limit): one more would exceed the limit.
            reason = f"the last of {job.store_attempts} attempts never finished (killed or over its time limit)"
            self._give_up_storing(job, job.store_attempts, reason)
            return None
        attempt = job.store_attempts + 1
        busy_until = now + timedelta(seconds=self.settings.store_busy_s)

        def start_attempt(record: JobRecord) -> JobRecord | None:
            if record.status is not JobStatus.DOWNLOADING or record.store_attempts != job.store_attempts:
                return None  # another attempt started meanwhile
            record.store_attempts = attempt
            record.store_lease_until = busy_until
            record.next_due_at = min(busy_until, store_deadline)  # the sweep leaves it alone until then
            return record

        return self.store.update(job.id, start_attempt)

    def _store_deadline(self, job: JobRecord) -> datetime:
        """STORE_DEADLINE_S after the provider's finish (or after `videoqueue store retry`),
        and never past the time the provider keeps the video."""
        started = job.store_retried_at or job.provider_done_at or job.updated_at
        deadline = started + timedelta(seconds=self.settings.store_deadline_s)
        expires = _result_expiry(job)
        return min(deadline, expires) if expires is not None else deadline

    def _log_store_failure(self, job: JobRecord, attempt: int, exc: BaseException) -> None:
        log.warning(
            "store attempt failed",
            extra={
                "job_id": job.id,
                "attempt": attempt,
                "error_class": type(exc).__name__,
                "reason": str(exc)[:300],
            },
        )

    def _give_up_storing(self, job: JobRecord, attempt: int, reason: str) -> None:
        error = JobError(code=ErrorCode.STORAGE, message=f"gave up after {attempt} attempts: {reason}")
        self._finish_without_video(job, JobStatus.FAILED, error, attempt=attempt)

    def _store_retry(self, job: JobRecord, attempt: int, reason: str) -> None:
        if attempt >= self.settings.store_max_attempts:
            self._give_up_storing(job, attempt, reason)
            return
        to_deadline = (self._store_deadline(job) - utcnow()).total_seconds()
        countdown = min(
            retry_delay(attempt, self.settings, self.rng), max(to_deadline, 0.0) + 0.5, self.dispatch.max_countdown_s
        )
        due_at = utcnow() + timedelta(seconds=countdown)

        def release(record: JobRecord) -> JobRecord | None:
            if record.status is not JobStatus.DOWNLOADING or record.store_attempts != attempt:
                return None  # superseded by a later attempt: its outcome decides
            record.store_lease_until = None
            record.next_due_at = due_at
            return record

        if self.store.update(job.id, release) is not None:
            raise StoreRetry(countdown, reason)

    def _finish_without_video(
        self, job: JobRecord, status: JobStatus, error: JobError | None, *, attempt: int | None = None
    ) -> None:
        """End a job the provider charged for without storing its video. The manifest still
        goes to storage (best effort), so the cost survives the loss of Redis. A failed
        job keeps where its video can be fetched again, and until when.

        With `attempt`, only if no later store attempt has started."""
        finished_at = utcnow()
        expires_at = _result_expiry(job) if status is JobStatus.FAILED else None
        manifest_uri = None
        if job.cost_usd is not None:
            final = job.model_copy(update={"status": status, "error": error, "finished_at": finished_at})
            try:
                storage = self.storage()
                manifest_uri = storage.put_json(f"{job.id}.json", build_manifest(final, None)).uri
            except Exception as exc:  # noqa: BLE001 - best effort: the job must end whatever storage does
                log.warning(
                    "manifest not written",
                    extra={"job_id": job.id, "error_class": type(exc).__name__, "reason": str(exc)[:300]},
                )

        def finish(record: JobRecord) -> JobRecord | None:
            if record.status is not JobStatus.DOWNLOADING:
                return None
            if attempt is not None and record.store_attempts != attempt:
                return None
            return record.model_copy(
                update={
                    "status": status,
                    "error": error,
                    "finished_at": finished_at,
                    "manifest_uri": manifest_uri,
                    "store_lease_until": None,
                    "result_expires_at": expires_at,
                }
            )

        if self.store.update(job.id, finish) is not None and error is not None:
            log.warning(
                "job failed in the store step",
                extra={"job_id": job.id, "error_code": error.code.value, "attempts": job.store_attempts},
            )

    # ------------------------------------------------------------------ cancel

    def cancel(self, job_id: str) -> None:
        """Carry out a cancel the producer asked for."""
        job = self.store.get(job_id)
        if job is None or job.status.is_final or not job.cancel_requested:
            return
        if job.status is JobStatus.QUEUED:
            self.store.transition(job.id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
        elif (
            job.status is JobStatus.RUNNING
            and job.provider_task_id
            # Created with another endpoint: the poll chain, on a worker that matches, cancels it.
            and not self._left_to_matching_worker(job, None)
        ):
            # Status first: a finished task is stored, a queued one cancelled, a rendering
            # one followed (its poll chain goes on; each poll tries again).
            self._check(job, seq=None)
        # SUBMITTING: the submit step checks right after its create is recorded.
        # DOWNLOADING: the video is paid for; the store step keeps it and ends `cancelled`.


def _result_expiry(job: JobRecord) -> datetime | None:
    """Until when the provider holds the job's video (RESULT_TTL_S), or None if unknown."""
    ttl = RESULT_TTL_S.get(job.provider)
    if ttl is None or job.provider_done_at is None:
        return None
    return job.provider_done_at + timedelta(seconds=ttl)


def _claim(now: datetime, lease_until: datetime, endpoint: Endpoint) -> Callable[[JobRecord], JobRecord | None]:
    """A mutation that takes a job for one create attempt, unless someone else holds it.
    A fresh attempt records `endpoint` (this worker's): the task is created there."""

    def claim(record: JobRecord) -> JobRecord | None:
        if record.status not in (JobStatus.QUEUED, JobStatus.SUBMITTING) or record.provider_task_id:
            return None
        if record.status is JobStatus.SUBMITTING and record.submit_lease_until and record.submit_lease_until > now:
            return None
        if record.status is JobStatus.QUEUED or record.submit_intent_at is None:
            record.submit_intent_at = now
            record.provider_endpoint, record.provider_fingerprint = endpoint.host, endpoint.fingerprint
            record.waiting_for_endpoint = None
        elif record.provider_fingerprint is None:  # a job from before fingerprints
            record.provider_endpoint, record.provider_fingerprint = endpoint.host, endpoint.fingerprint
        elif record.provider_fingerprint != endpoint.fingerprint:
            return None  # an uncertain create is looked up only where it was sent
        # else: keep the earliest unresolved intent, so the lookup window covers it.
        record.status = JobStatus.SUBMITTING
        record.submit_lease_until = lease_until
        record.next_due_at = lease_until
        return record

    return claim


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


def _release_uncertain(lease_until: datetime) -> Callable[[JobRecord], JobRecord | None]:
    """Free our submit lease but keep the create intent, so the next attempt looks first."""

    def release(record: JobRecord) -> JobRecord | None:
        if record.status is not JobStatus.SUBMITTING or record.submit_lease_until != lease_until:
            return None
        record.submit_lease_until = utcnow()
        return record

    return release


def _note_unstoppable(
    at_deadline: bool, now: datetime, provider_status: str, settings: Settings
) -> Callable[[JobRecord], JobRecord | None]:
    """Say once in the record that a task which should stop cannot, and is followed."""

    def note(record: JobRecord) -> JobRecord | None:
        if record.status is not JobStatus.RUNNING:
            return None
        notes = list(record.notes)
        if at_deadline and record.past_deadline_at is None:
            record.past_deadline_at = now
            notes.append(
                f"{provider_status} at the provider at its deadline ({_deadline_s(record):g} s after enqueue):"
                " it cannot be cancelled there and will be billed, so it is followed to its end"
            )
        cancel_note = "cancel requested while the provider was rendering: it will be billed; the video is kept"
        if record.cancel_requested and cancel_note not in notes:
            notes.append(cancel_note)
        if notes == record.notes and record.provider_status == provider_status:
            return None
        record.notes = notes
        record.provider_status = provider_status
        return record

    return note


def _deadline_s(job: JobRecord) -> float:
    """The job's own deadline in seconds after enqueue (its producer's JOB_DEADLINE_S)."""
    return round((job.deadline_at - job.created_at).total_seconds(), 1)


def _count_attempt(record: JobRecord) -> JobRecord:
    record.attempts += 1
    return record
