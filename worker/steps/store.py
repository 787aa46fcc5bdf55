"""The store step: stream a finished video into storage, read its size back, write the
manifest and end the job; bounded attempts, a lease per attempt, and a deadline before the
provider drops the video.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import RedisError

from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from worker.manifest import build_manifest
from worker.providers.base import ProviderError
from worker.providers.registry import adapter
from worker.schedule import retry_delay
from worker.steps.base import StepBase, log
from worker.storage import MediaCheck, VideoCheckError


class StoreRetry(Exception):
    """The store step should run again after `countdown` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


class StoreStep(StepBase):
    """Stores the video of a job the provider finished."""

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
                stored = storage.put_video(video_key, stream.chunks, stream.size, self._media_check(job))
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
                error = JobFailure(code=exc.code, message=f"could not download the video: {exc.message}")
                self._finish_without_video(job, JobStatus.FAILED, error, attempt=attempt)
            return
        except SoftTimeLimitExceeded as exc:
            # The transfer outlived its soft time limit: retry at once, as the sweep would
            # only after the lease and the hard limit (STORE_BUSY_S + 300 s).
            self._log_store_failure(job, attempt, exc)
            self._store_retry(job, attempt, f"{type(exc).__name__}: {exc}", at_once=True)
            return
        except Exception as exc:  # noqa: BLE001 - every failure of an attempt counts (storage, check, bug)
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

    def _media_check(self, job: JobRecord) -> MediaCheck | None:
        """What the stored video must be (STORE_MEDIA_CHECK): decodable, and of the
        requested duration within STORE_DURATION_TOLERANCE_S."""
        if not self.settings.store_media_check:
            return None
        return MediaCheck(float(job.request.duration), self.settings.store_duration_tolerance_s)

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
        error = JobFailure(code=ErrorCode.STORAGE, message=f"gave up after {attempt} attempts: {reason}")
        self._finish_without_video(job, JobStatus.FAILED, error, attempt=attempt)

    def _store_retry(self, job: JobRecord, attempt: int, reason: str, *, at_once: bool = False) -> None:
        """Release the lease and raise StoreRetry after the back-off (RETRY_BASE_S...), or
        with no delay when `at_once`; end the job once the attempts are used up."""
        if attempt >= self.settings.store_max_attempts:
            self._give_up_storing(job, attempt, reason)
            return
        to_deadline = (self._store_deadline(job) - utcnow()).total_seconds()
        delay = 0.0 if at_once else retry_delay(attempt, self.settings, self.rng)
        countdown = min(delay, max(to_deadline, 0.0) + 0.5, self.dispatch.max_countdown_s)
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
        self, job: JobRecord, status: JobStatus, error: JobFailure | None, *, attempt: int | None = None
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


def _result_expiry(job: JobRecord) -> datetime | None:
    """Until when the provider holds the job's video (its adapter's `result_ttl_s`), or None if unknown."""
    ttl = adapter(job.provider).result_ttl_s
    if ttl is None or job.provider_done_at is None:
        return None
    return job.provider_done_at + timedelta(seconds=ttl)
