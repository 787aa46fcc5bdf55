"""The submit step: create a job's provider task exactly once (a lease, an intent recorded
before the call, a lookup of the provider's tasks after an interrupted create), within the
limits and budgets, then start polling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta

from videoqueue.budget import exceeded
from videoqueue.endpoints import Endpoint
from videoqueue.errors import StorageError
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import TaskClaimedError
from videoqueue.lifecycle import SUBMIT_STATUSES
from videoqueue.resolved import ImageUpload, ImageUrl
from worker.providers.base import ImageInput, Provider, ProviderError
from worker.schedule import retry_delay
from worker.steps.base import _charge_uncertain, log
from worker.steps.poll import PollStep


class SubmitStep(PollStep):
    """Creates a job's provider task; a poll-step subclass because it checks a task it
    just created at once when the job was cancelled or its deadline came meanwhile."""

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
        if job.after_job is not None and job.status is JobStatus.QUEUED:
            return  # a movie's scene waiting for the scene before: the movie's advance lets it go
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

        if not self._admitted(job):
            return  # it waits in its model's room: admission sends its submit again

        uncertain_since = job.submit_intent_at if job.status is JobStatus.SUBMITTING else None
        lease_until = now + timedelta(seconds=self.settings.submit_lease_s)
        # A fresh job whose images are all URLs goes from the claim straight to its create
        # call: the claim counts the attempt too (one move instead of two).
        count = uncertain_since is None and not _has_uploads(job)
        counted: dict[str, bool] = {}
        claim = _claim(now, lease_until, self.endpoint(job.provider), count_attempt=counted if count else None)
        claimed = self.store.update(job.id, claim)
        if claimed is None:
            return
        recorded = self._create_once(claimed, uncertain_since, lease_until, counted=counted.get("attempt", False))
        if recorded is not None:
            self._start_polling(recorded)

    def _admitted(self, job: JobRecord) -> bool:
        """True when the job holds quota for its create (a slot and a create token); else it
        now waits in its model's waiting room, with no message, until admitted."""
        if self.room is None or self.admitter is None:
            return True
        take = self.room.take(job)
        self.admitter.carry_out(job.provider, job.model, take.admission, skip=job.id)
        if not take.go:
            # The room parked it until its deadline: the park timer ends it then, on time.
            self.dispatch.arm_timer()
        return take.go

    def _over_budget(self, job: JobRecord) -> bool:
        """A cap lowered since enqueue leaves no room for a job not yet created: it ends
        failed (budget_exceeded), its reservation released, rather than be billed."""
        over = exceeded(self.store.redis, job, self.settings.budget_policy())
        if over is None:
            return False
        error = JobFailure(code=ErrorCode.BUDGET_EXCEEDED, message=str(over))
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
            error=JobFailure(code=ErrorCode.DEADLINE, message="deadline passed before a provider task was recorded"),
            submit_lease_until=None,
        )

    def _expire_unsent(self, job: JobRecord) -> None:
        """End a job whose create never reached the provider (nothing there to wait for)."""
        self.store.transition(
            job.id,
            SUBMIT_STATUSES,  # not `running`: a job at the provider expires when the provider says
            JobStatus.EXPIRED,
            error=JobFailure(code=ErrorCode.DEADLINE, message="deadline passed before the job reached the provider"),
            submit_lease_until=None,
        )
        log.info("job expired", extra={"job_id": job.id})

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
            record.provider_status = "queued"  # submitted_at: set by the store, at the move
            record.submit_lease_until = None
            record.submit_intent_at = None
            record.poll_seq = 1
            # The first poll is due now-ish, not when the create lease would have ended:
            # a crash before it is sent is recovered after RECOVER_AFTER_S.
            record.next_due_at = utcnow()
            return record

        return self.store.update(job_id, record_task)

    def _create_once(
        self, job: JobRecord, uncertain_since: datetime | None, lease_until: datetime, *, counted: bool = False
    ) -> JobRecord | None:
        """Create (or, after an interrupted attempt, find) the provider task and record its
        id. Returns the running record, or None when there is nothing more to do now.
        `counted`: the claim already counted this create attempt (`attempts`)."""
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
                if not counted:
                    self.store.update(job.id, _count_attempt)
                if self.limits is not None:
                    self.limits.stamp_create(job.provider, job.model, job.id)
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

        if rate_limited and self.limits is not None:
            # Every job of the model waits this long: a Retry-After is honoured up to
            # RETRY_MAX_S, so one odd answer cannot halt the model for a day. Set before
            # the slot is freed below, so its admission already sees the back-off.
            back_off = min(exc.retry_after or retry_delay(1, self.settings, self.rng), self.settings.retry_max_s)
            self.limits.back_off(job.provider, job.model, back_off)
        released = self.store.update(job.id, release)
        if decision.get("give_up"):
            message = f"gave up after {self.settings.submit_max_attempts} failed attempts: {exc.message}"
            self._give_up_submit(job, exc, lease_until, message, uncertain=still_uncertain)
            return
        if released is not None and rate_limited and released.status is JobStatus.QUEUED and self.room is not None:
            # Back to its place in the room at once: the back-off's timer admits it first.
            if self._admitted(released):
                self.dispatch.submit(job.id, countdown=0.0)
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

    def _images(self, job: JobRecord) -> dict[str, ImageInput]:
        """The job's input images by role, uploaded ones read from object storage
        (videoqueue.inputs) on every attempt; ProviderError if one is gone or is not the
        file the producer sent (invalid_request), or storage cannot be read (upstream,
        retried)."""
        images: dict[str, ImageInput] = {}
        for role, source in job.request.images.items():
            if isinstance(source, ImageUrl):
                images[role] = ImageInput(url=source.url)
                continue
            data = self._uploaded(job, role, source)
            if data is None:
                raise ProviderError(
                    ErrorCode.INVALID_REQUEST,
                    f"the uploaded {role} image is not at {source.uri}: deleted since, or put where this worker "
                    "cannot read it (a file:// STORAGE_URL on the producer's host: producers and workers must "
                    "share STORAGE_URL's storage)",
                )
            if hashlib.sha256(data).hexdigest() != source.sha256:
                raise ProviderError(
                    ErrorCode.INVALID_REQUEST, f"the stored {role} image is not the file uploaded (sha256 differs)"
                )
            images[role] = ImageInput(data=data, mime_type=source.mime_type)
        return images

    def _uploaded(self, job: JobRecord, role: str, source: ImageUpload) -> bytes | None:
        if source.uri is None:  # stored in Redis by a producer before object-storage inputs
            legacy = self.store.get_input(job.id, role)
            return None if legacy is None else legacy.data
        try:
            return self.inputs.read(source.uri)
        except StorageError as exc:
            # Storage is upstream of the create here: worth another attempt, as a provider's 5xx.
            raise ProviderError(ErrorCode.UPSTREAM, f"cannot read the uploaded {role} image: {exc}") from exc


def _claim(
    now: datetime, lease_until: datetime, endpoint: Endpoint, *, count_attempt: dict[str, bool] | None = None
) -> Callable[[JobRecord], JobRecord | None]:
    """A mutation that takes a job for one create attempt, unless someone else holds it.
    A fresh attempt records `endpoint` (this worker's): the task is created there.

    With `count_attempt`, a claim of a `queued` job (no earlier intent: nothing to look up
    first) also counts the create attempt, and says so in `count_attempt["attempt"]` (set
    on each run of the mutation, so the one that was stored decides)."""

    def claim(record: JobRecord) -> JobRecord | None:
        if count_attempt is not None:
            count_attempt["attempt"] = False
        if record.status not in SUBMIT_STATUSES or record.provider_task_id:
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
        if count_attempt is not None and record.status is JobStatus.QUEUED:
            record.attempts += 1
            count_attempt["attempt"] = True
        record.status = JobStatus.SUBMITTING
        record.submit_lease_until = lease_until
        record.next_due_at = lease_until
        return record

    return claim


def _release_uncertain(lease_until: datetime) -> Callable[[JobRecord], JobRecord | None]:
    """Free our submit lease but keep the create intent, so the next attempt looks first."""

    def release(record: JobRecord) -> JobRecord | None:
        if record.status is not JobStatus.SUBMITTING or record.submit_lease_until != lease_until:
            return None
        record.submit_lease_until = utcnow()
        return record

    return release


def _has_uploads(job: JobRecord) -> bool:
    """True when an input image of the job is an uploaded file (read from storage before
    the create, a read that can fail): its attempt is counted only once the images are read."""
    return any(not isinstance(source, ImageUrl) for source in job.request.images.values())


def _count_attempt(record: JobRecord) -> JobRecord:
    record.attempts += 1
    return record
