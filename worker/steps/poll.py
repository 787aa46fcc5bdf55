"""The poll step: one status call for a running job, then the next poll with a countdown
(never a sleep), or the move the provider's answer calls for: store, fail, cancel, expire.
It is also the check a submit (after its create) and a cancel run once.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from redis.exceptions import RedisError

from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from videoqueue.settings import Settings
from worker.callback_url import callbacks_on
from worker.providers.base import Provider, ProviderError, TaskState, TaskStatus
from worker.schedule import poll_delay, render_window, retry_delay, safety_poll_delay, window_poll_delay
from worker.steps.base import StepBase, _deadline_s, log


class PollStep(StepBase):
    """Follows a job's provider task until it ends."""

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
            self.store.transition(
                job.id, {JobStatus.RUNNING}, JobStatus.CANCELLED, provider_status=state.provider_status
            )
        elif state.status is TaskStatus.EXPIRED:
            message = state.error_message or "the provider expired the task"
            self._expire_running(job, state.provider_status, message, state.provider_error_code)

    def _expire_running(
        self, job: JobRecord, provider_status: str, message: str, provider_code: str | None = None
    ) -> JobRecord | None:
        return self.store.transition(
            job.id,
            {JobStatus.RUNNING},
            JobStatus.EXPIRED,
            provider_status=provider_status,
            error=JobFailure(code=ErrorCode.DEADLINE, message=message, provider_code=provider_code),
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
            **({"last_frame_url": state.last_frame_url} if state.last_frame_url else {}),
            billed_units=billed,
            cost_usd=cost,
            provider_status=state.provider_status,
            provider_done_at=detected_at,
            **changes,
        )
        if moved is not None:
            self.dispatch.store(job.id, countdown=0)
            # Only the poll that made the move records the sample: a duplicate adds none.
            self._remember_render_time(job, state, detected_at)

    def _poll_countdown(self, job: JobRecord, poll_number: int) -> float:
        """Seconds until poll number `poll_number`: the learned window when enough render
        times of this kind of job are known, else the cold schedule; with callbacks on for
        the job's provider, the slow safety net (its callback sends the poll that matters)."""
        to_deadline = self._seconds_to_deadline(job)
        if callbacks_on(self.settings, job.provider):
            return safety_poll_delay(self.settings, self.rng, to_deadline)
        elapsed = (utcnow() - job.submitted_at).total_seconds() if job.submitted_at else 0.0
        window = None
        if self.history is not None and self.settings.poll_schedule == "learned" and job.submitted_at:
            try:
                window = render_window(self.history.render_times(job), self.settings)
            except RedisError:
                log.warning("render history unreadable: cold schedule", extra={"job_id": job.id})
        if window is None:
            return poll_delay(elapsed, self.settings, self.rng, to_deadline, first=poll_number <= 1)
        interval = self.settings.poll_interval_backlog_s if self._backlogged(job) else None
        return window_poll_delay(elapsed, window, self.settings, self.rng, to_deadline, interval_s=interval)

    def _backlogged(self, job: JobRecord) -> bool:
        """True when jobs wait for this job's model: its slot is wanted as soon as it frees."""
        if self.room is None:
            return False
        try:
            return self.room.has_waiting(job.provider, job.model)
        except RedisError:
            return False

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
        return self.catalog.models[job.model].billed_usd(billed_units, job.request)


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
