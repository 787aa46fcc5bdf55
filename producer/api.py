"""The producer API: enqueue create-video jobs, read their records, wait for them, cancel."""

from __future__ import annotations

import builtins
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from producer.celery_client import producer_app_for
from producer.request import IMAGE_FIELDS, VideoRequest, repeated_client_ids, resolve
from videoqueue import batches, inputs, keys, namespace, webhooks
from videoqueue import events as stream
from videoqueue.archive import ArchivedJob, archived_ids, read_archived
from videoqueue.batches import Batch, BatchOptions, UnknownBatchError
from videoqueue.catalog import Catalog, load_catalog
from videoqueue.errors import InvalidRequestError, RequestError, VideoqueueError
from videoqueue.events import JobEvent
from videoqueue.eventwait import WaitPlan
from videoqueue.images import ImageFile
from videoqueue.job import (
    TASK_ADMIT,
    TASK_CANCEL,
    TASK_DELIVER,
    TASK_STORE,
    TASK_SUBMIT,
    JobRecord,
    JobStatus,
    created_now,
    utcnow,
)
from videoqueue.jobids import records, resolve_ids
from videoqueue.jobstore import JobStore, Mutation, transition
from videoqueue.ledger import CostRow, GroupBy, Ledger
from videoqueue.limits import ProviderLimits
from videoqueue.resolved import ImageUpload, ImageUrl, ResolvedRequest
from videoqueue.room import WaitingRoom
from videoqueue.settings import Settings, get_settings
from videoqueue.urlcheck import check_image_address, check_image_url
from videoqueue.urlguard import ForbiddenURLError

if TYPE_CHECKING:
    from producer.movie import Movie
    from videoqueue.movies import MovieRecord


class StoreRetryRefusedError(RequestError, ValueError):
    """A job that cannot be stored again (`VideoQueue.store_retry`)."""


class RetryRefusedError(RequestError, ValueError):
    """A job `VideoQueue.retry` does not resubmit; the message says why."""


class WaitTimeoutError(VideoqueueError, TimeoutError):
    """`wait` gave up; `jobs` holds the records as they were then."""

    def __init__(self, jobs: list[JobRecord]) -> None:
        self.jobs = jobs
        pending = [j.id for j in jobs if not j.status.is_final]
        super().__init__(f"{len(pending)} job(s) not finished: {', '.join(pending)}")


class EnqueueError(VideoqueueError, RuntimeError):
    """The broker did not take the message; no job was left behind."""


@dataclass(frozen=True)
class PreparedJob:
    """A validated job not yet stored: its record and the local images it carries."""

    record: JobRecord
    images: dict[str, ImageFile] = field(default_factory=dict)


class VideoQueue:
    """Entry point for producers.

    >>> vq = VideoQueue()
    >>> job = vq.submit(VideoRequest(prompt="a red fox in snow", duration=5))
    >>> vq.wait([job.id], timeout=600)
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        store: JobStore | None = None,
        catalog: Catalog | None = None,
        input_storage: inputs.InputStorage | None = None,
    ) -> None:
        """`input_storage`: where image files go (default: STORAGE_URL's, through the
        worker side's entry point, opened when a job first has one)."""
        self.settings = settings or get_settings()
        self._input_storage = input_storage
        # One process, one deployment: the job store and the queues are those of this namespace.
        namespace.use(self.settings.vq_namespace)
        self.store = store or JobStore.from_settings(self.settings)
        # A job this producer ends (a queued one cancelled) is told of at once, not by the sweep.
        self.store.on_deliveries = self.send_deliveries
        self.catalog = catalog or load_catalog(self.settings.pricing_file)
        self.budget = self.settings.budget_policy()
        self._reachable: set[str] = set()
        self.room = WaitingRoom(
            self.store.redis,
            ProviderLimits.from_settings(self.store.redis, self.settings),
            self.settings.tenant_weights(),
        )

    def input_storage(self) -> inputs.InputStorage:
        """Where this producer puts image files (videoqueue.inputs). Raises
        InputStorageUnavailableError when this install cannot reach it."""
        if self._input_storage is None:
            self._input_storage = inputs.open_input_storage(self.settings)
        return self._input_storage

    def send_admit(self, provider: str, model: str) -> None:
        """Send the admit message of a model's waiting room (TASK_ADMIT): a worker admits
        its next waiting jobs as far as quota allows. Raises what the broker raises."""
        producer_app_for(self.settings).send_task(TASK_ADMIT, args=[provider, model])

    def send_deliveries(self, delivery_ids: Iterable[str]) -> None:
        """Send the delivery task (TASK_DELIVER, the `webhooks` queue) of each of
        `delivery_ids` (videoqueue.webhooks). Raises what the broker raises."""
        app = producer_app_for(self.settings)
        for delivery_id in delivery_ids:
            app.send_task(TASK_DELIVER, args=[delivery_id])

    def webhook_status(self, job_id: str) -> builtins.list[webhooks.Delivery]:
        """The deliveries of a job (its webhooks, its completion task), oldest first: state,
        attempts, last status code, last error. Raises UnknownJobError when the job is
        unknown; empty when it asked for none, or none is owed yet."""
        if batches.is_batch_id(job_id):  # a batch's (its webhook, its completion task)
            return webhooks.deliveries(self.store.redis, self.batch(job_id).id)
        job = self.get(job_id)
        return webhooks.deliveries(self.store.redis, job.id)

    def webhook_replay(self, job_id: str) -> webhooks.Delivery:
        """Deliver the webhook of a job's end again, with the same `webhook-id` (attempts
        reset), and return it. Raises UnknownJobError, or UnknownDeliveryError when the
        job has no such webhook (none asked for, not ended, expired)."""
        owner = self.batch(job_id).id if batches.is_batch_id(job_id) else self.get(job_id).id
        delivery = webhooks.replay(self.store.redis, owner)
        self.send_deliveries([delivery.id])
        return delivery

    def prepare(self, request: VideoRequest | Mapping[str, Any]) -> PreparedJob:
        """Validate `request` (a VideoRequest, or a dict of its fields) and build its job
        without storing or sending anything. Raises InvalidRequestError."""
        request = VideoRequest.parse(dict(request) if isinstance(request, Mapping) else request)
        resolved, images = resolve(request, self.catalog, self.settings.default_provider)
        self._check_urls(resolved)
        webhooks.check_request(resolved, self.settings)
        if resolved.seed is None:
            # A seed of our own makes the job reproducible and lets a worker recognise its
            # provider task after a crash between the create call and recording its id.
            resolved = resolved.model_copy(update={"seed": _default_seed(resolved.client_job_id)})
        return PreparedJob(self._new_record(resolved), images)

    def _new_record(self, request: ResolvedRequest, **fields: Any) -> JobRecord:
        """A queued record for the resolved `request`, with its estimate, deadline and
        budget keys; `fields` set more of it (`retry_of`)."""
        spec = self.catalog.models[request.model]
        _, estimate = spec.estimate(request)
        now = created_now()
        record = JobRecord(
            id=str(uuid.uuid4()),
            status=JobStatus.QUEUED,
            provider=request.provider,
            model=request.model,
            request=request,
            cost_estimate_usd=estimate,
            billed_unit=spec.price.unit,
            created_at=now,
            updated_at=now,
            deadline_at=now + timedelta(seconds=self.settings.job_deadline_s),
            **fields,
        )
        if self.budget is not None:
            record.budget_keys = self.budget.keys_for(record)
        return record

    def _check_urls(self, request: ResolvedRequest) -> None:
        """Every image URL through the URL guard (videoqueue.urlguard): one leading to an
        internal address is refused even when CHECK_IMAGE_URLS is off (then only the checks
        that need no network: IP literals and localhost)."""
        allow = self.settings.fetch_allow_list
        problems: dict[str, str] = {}
        for role, source in request.images.items():
            url = source.url if isinstance(source, ImageUrl) else None
            if not url or url in self._reachable:
                continue
            url_field, _ = IMAGE_FIELDS[role]
            try:
                if not self.settings.check_image_urls:
                    check_image_address(url, allow)
                    continue
                why = check_image_url(url, allow)
            except ForbiddenURLError as exc:
                problems[url_field] = str(exc)
                continue
            if why:
                problems[url_field] = f"{url} {why}"
            else:
                self._reachable.add(url)
        if problems:
            raise InvalidRequestError(problems)

    def submit(self, request: VideoRequest | Mapping[str, Any]) -> JobRecord:
        """Validate, store and enqueue one job (a VideoRequest, or a dict of its fields).
        Raises InvalidRequestError before any write.

        A `client_job_id` already used returns the job it names, as it is now, when the
        request (with defaults filled in) is the same; when it differs,
        DuplicateClientJobIdError (an InvalidRequestError) names the fields."""
        return self.enqueue([self.prepare(request)])[0]

    def submit_many(self, requests: Iterable[VideoRequest | Mapping[str, Any]]) -> list[JobRecord]:
        """Validate every request first; if any is bad nothing is stored or enqueued
        (InvalidRequestError names the item). Then store all records and enqueue them.
        Items whose client job id is already used are returned as `submit` does; one whose
        request differs refuses the whole batch."""
        return self.enqueue(self.prepare_many(requests))

    def prepare_many(self, requests: Iterable[VideoRequest | Mapping[str, Any]]) -> builtins.list[PreparedJob]:
        """`prepare` each request, as `submit_many` does before storing anything: raises
        InvalidRequestError naming every bad item (`[i].field`) and every client job id
        repeated within the batch."""
        jobs: list[PreparedJob] = []
        problems: dict[str, str] = {}
        for index, request in enumerate(requests):
            try:
                jobs.append(self.prepare(request))
            except InvalidRequestError as exc:
                for field, message in exc.problems.items():
                    problems[f"[{index}].{field}"] = message
        client_ids = [job.record.request.client_job_id for job in jobs]
        for index, first in repeated_client_ids(client_ids).items():
            problems[f"[{index}].client_job_id"] = f"{client_ids[index]!r} repeats item [{first}]"
        if problems:
            raise InvalidRequestError(problems)
        return jobs

    def submit_batch(
        self,
        requests: Iterable[VideoRequest | Mapping[str, Any]],
        *,
        name: str = "",
        tags: Sequence[str] = (),
        on_complete: str | None = None,
        on_complete_queue: str | None = None,
        webhook_url: str | None = None,
        webhook_events: Sequence[str] = batches.WEBHOOK_EVENTS,
    ) -> Batch:
        """Submit `requests` as one batch (videoqueue.batches): validated as `submit_many`,
        then the jobs and the batch record stored in one transaction (all or nothing) and
        enqueued. Its `on_complete` task and its webhook (`batch.completed`, signed as a
        job's) are sent once its last job ended. Returns the batch as stored. Raises
        InvalidRequestError (a bad item, a webhook that cannot be sent, no requests)."""
        options = BatchOptions(name, tags, on_complete, on_complete_queue, webhook_url, webhook_events)
        return self.enqueue_batch(self.prepare_many(requests), options)

    def enqueue_batch(self, jobs: builtins.list[PreparedJob], options: BatchOptions) -> Batch:
        """`submit_batch` of jobs made by `prepare` (`prepare_many`)."""
        batch = self.new_batch(jobs, options)
        self.enqueue(jobs, batch)
        return self.batch(batch.id)

    def new_batch(self, jobs: builtins.list[PreparedJob], options: BatchOptions) -> Batch:
        """The batch record of prepared `jobs` (each given its `batch_id`), checked as
        `submit_batch` says, not stored: `enqueue(jobs, batch)` stores it with them."""
        problems: dict[str, str] = {}
        if not jobs:
            problems["requests"] = "a batch needs at least one request"
        unknown = sorted(set(options.webhook_events) - set(batches.WEBHOOK_EVENTS))
        if unknown:
            problems["webhook_events"] = f"unknown batch events {unknown}: only {list(batches.WEBHOOK_EVENTS)}"
        if options.webhook_url is not None:
            if self.settings.webhook_secret is None:
                problems["webhook_url"] = "WEBHOOK_SECRET is not set: deliveries could not be signed"
            elif why := webhooks.check_url(options.webhook_url, self.settings):
                problems["webhook_url"] = why
        if problems:
            raise InvalidRequestError(problems)
        batch_id = batches.new_id()
        for job in jobs:
            job.record.batch_id = batch_id
        return batches.now_batch(
            batch_id,
            options.name,
            options.tags,
            [job.record for job in jobs],
            on_complete=options.on_complete,
            on_complete_queue=options.on_complete_queue,
            webhook_url=options.webhook_url if "completed" in options.webhook_events else None,
        )

    def batch(self, batch_id: str) -> Batch:
        """The batch `batch_id` (a whole id or a unique prefix) as it stands now: counts by
        status, cost so far. Raises UnknownBatchError."""
        found = batches.read(self.store.redis, self.resolve_batch_id(batch_id))
        if found is None:
            raise UnknownBatchError(batch_id)
        return found

    def resolve_batch_id(self, ref: str) -> str:
        """The whole id of the batch `ref` (a whole id, or a unique prefix) names; raises
        UnknownBatchError (none, or several)."""
        ref = ref.lower()
        if self.store.redis.exists(keys.batch_key(ref)):
            return ref
        matches = batches.ids_starting_with(self.store.redis, ref)
        if len(matches) != 1:
            raise UnknownBatchError(ref, matches)
        return matches[0]

    def batches(self, limit: int = 20) -> builtins.list[Batch]:
        """The newest batches, newest first; those whose record expired (JOB_RETENTION_S
        after their end) are left out, and out of the batch index."""
        client = self.store.redis
        ids = batches.newest_ids(client, limit)
        found = [batches.read(client, batch_id) for batch_id in ids]
        gone = [batch_id for batch_id, batch in zip(ids, found, strict=True) if batch is None]
        if gone:
            client.zrem(keys.BATCH_INDEX, *gone)
        return [b for b in found if b is not None]

    def wait_batch(
        self, batch_id: str, timeout: float | None = None, *, on_update: Callable[[Batch], None] | None = None
    ) -> Batch:
        """Block until the batch's last job ended and return it; `on_update` is called with
        the batch on the first read and again after each event of its jobs (the event
        stream, videoqueue.events: the batch is read again only when one of its jobs moved,
        and at least every events.MAX_BLOCK_MS). Raises UnknownBatchError, or
        WaitTimeoutError (with the jobs' records) when `timeout` seconds pass first."""
        client = self.store.redis
        since = stream.newest_id(client)  # before the first read: no change falls between
        batch = self.batch(batch_id)
        wanted = set(batch.job_ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_update:
                on_update(batch)
            if batch.done:
                return batch
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeoutError(self.get_many(batch.job_ids))
            block = stream.MAX_BLOCK_MS if left is None else max(1, min(stream.MAX_BLOCK_MS, int(left * 1000)))
            found = stream.read_events(client, since, block_ms=block)
            if found:
                since = found[-1].id
            moved = not found or any(e.job_id in wanted or getattr(e, "batch_id", "") == batch.id for e in found)
            if moved:
                batch = self.batch(batch.id)

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel every job of the batch still cancellable (`cancel`, each): those ended
        stay as they are. Returns the batch as it stands after. Raises UnknownBatchError."""
        batch = self.batch(batch_id)
        for job in self.store.get_many(batch.job_ids):
            if job is not None and not job.status.is_final and not job.cancel_requested:
                self.cancel(job.id)
        return self.batch(batch.id)

    def enqueue(self, jobs: builtins.list[PreparedJob], batch: Batch | None = None) -> builtins.list[JobRecord]:
        """Store and send jobs made by `prepare`: all stored in one transaction, then one
        message each. Returns their records, in order; where a client job id already named
        a job with the same request, that job's stored record (its id differs from the
        prepared one) and no message. Raises DuplicateClientJobIdError when it named a
        different request. `batch`: their batch record, stored with them."""
        check_batch(jobs)
        records = self._upload([(job.record, job.images) for job in jobs])
        try:
            existing = self.store.create_many(records, self.budget, batch=batch)
        except BaseException:
            self._discard_inputs(records)
            raise
        # A client job id that already names the same request keeps that job's images.
        self._discard_inputs([r for r in records if r.id in existing])
        try:
            self._send([r for r in records if r.id not in existing])
        except EnqueueError:
            # The jobs not sent were withdrawn (and counted out of their batch): a batch
            # left with none goes too.
            if batch is not None and not any(self.store.get_many(batch.job_ids)):
                batches.drop(self.store.redis, batch.id)
            raise
        return [existing.get(r.id, r) for r in records]

    def _upload(self, jobs: builtins.list[tuple[JobRecord, dict[str, ImageFile]]]) -> builtins.list[JobRecord]:
        """Put each job's image files into object storage (videoqueue.inputs) and return
        the records referring to them. Raises InputStorageUnavailableError or
        InputUploadError with nothing left behind."""
        done: builtins.list[JobRecord] = []
        try:
            for record, files in jobs:
                if not files:
                    done.append(record)
                    continue
                images = inputs.upload(self.input_storage(), record.id, record.request.images, files)
                request = record.request.model_copy(update={"images": images})
                done.append(record.model_copy(update={"request": request}))
        except BaseException:
            self._discard_inputs(done)
            raise
        return done

    def _discard_inputs(self, records: builtins.list[JobRecord]) -> None:
        """Delete the uploaded images of records that were not stored (or were withdrawn)."""
        uris = [uri for r in records for uri in inputs.uploaded_uris(r)]
        if uris:
            inputs.delete_quietly(self.input_storage(), uris)

    def _send(self, records: list[JobRecord]) -> None:
        app = producer_app_for(self.settings)
        sent = 0
        try:
            with app.producer_or_acquire() as producer:
                for record in records:
                    app.send_task(TASK_SUBMIT, args=[record.id], producer=producer)
                    sent += 1
        except Exception as exc:
            # Jobs without a message would never move: withdraw them so the caller can retry.
            for record in records[sent:]:
                self.store.delete(record.id)
            self._discard_inputs(records[sent:])
            raise EnqueueError(
                f"broker refused the job messages ({type(exc).__name__}); {sent} of {len(records)} enqueued"
            ) from exc

    def costs(
        self,
        by: GroupBy = "day",
        since: date | None = None,
        until: date | None = None,
        **filters: str | None,
    ) -> builtins.list[CostRow]:
        """What was spent, grouped by day, month, provider, model, tag or status, with
        estimate and actual side by side; filters: provider, model, tag, status."""
        return Ledger(self.store.redis).report(by, since, until, **filters)

    def archived(self, job_id: str) -> ArchivedJob | None:
        """The job `job_id` (a whole id) as its manifest in storage keeps it, once its record
        expired from Redis (JOB_RETENTION_S after it ended; videoqueue.archive), or None when
        storage holds no manifest of it (a job that cost nothing has none). `get` never reads
        the archive: it gives current records only, UnknownJobError for an expired one.
        Raises InputStorageUnavailableError when this install cannot read STORAGE_URL (s3://
        without the worker extra), StorageError when storage refuses."""
        return read_archived(self.input_storage(), self.settings.storage_url, job_id)

    def archived_ids(self, prefix: str) -> builtins.list[str]:
        """The ids of the jobs whose manifests are in storage and start with `prefix` (an
        id as `jobs` shows it), sorted: an expired job named by a prefix
        (videoqueue.archive). Lists the storage folder of STORAGE_URL. Raises
        InputStorageUnavailableError as `archived`, StorageError when storage cannot be
        listed (S3 without s3:ListBucket)."""
        return archived_ids(self.input_storage(), self.settings.storage_url, prefix)

    def get(self, job_id: str) -> JobRecord:
        """The current record of a job; UnknownJobError if there is none."""
        return self.get_many([job_id])[0]

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """Current records, in order; UnknownJobError naming every unknown id. A job
        waiting in its model's room carries where it stands (`queue_position`,
        `waiting_reason`, `estimated_start_at`)."""
        return self.with_standing(records(self.store, job_ids))

    def with_standing(self, jobs: builtins.list[JobRecord]) -> builtins.list[JobRecord]:
        """`jobs`, each queued one with where it stands in its model's waiting room now."""
        for job in jobs:
            if job.status is JobStatus.QUEUED:
                standing = self.room.standing(job)
                job.queue_position = standing.queue_position
                job.waiting_reason = None if standing.waiting_reason is None else standing.waiting_reason.value
                job.estimated_start_at = standing.estimated_start_at
        return jobs

    def resolve_id(self, ref: str) -> str:
        """The whole id of the one job `ref` names: a whole id, or a unique prefix of at
        least 4 characters (as git's short hashes; `jobs` and the demo show
        8). Raises UnknownJobError when no job matches, AmbiguousJobIdError when the prefix
        is too short or several jobs share it. A whole id costs one read; a prefix scans the
        index of all jobs (`JobStore.ids_starting_with`)."""
        return self.resolve_ids([ref])[0]

    def resolve_ids(self, refs: Sequence[str]) -> builtins.list[str]:
        """`resolve_id` of each of `refs` (in any case), in order; UnknownJobError names
        every ref that matches no job (videoqueue.jobids)."""
        return resolve_ids(self.store, refs)

    def list(self, status: JobStatus | str | None = None, limit: int = 50) -> list[JobRecord]:
        """Recent jobs, newest first, optionally only those in `status` (queued ones with
        where they stand, as `get_many`)."""
        return self.with_standing(self.store.list(JobStatus(status) if status else None, limit))

    def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        *,
        poll_interval: float | None = None,
        on_update: Callable[[builtins.list[JobRecord]], None] | None = None,
    ) -> builtins.list[JobRecord]:
        """Block until every job is final and return their records (in order).

        Raises UnknownJobError for unknown ids (before waiting) and WaitTimeoutError when
        `timeout` seconds pass first. `on_update` is called with the records on every read:
        the first, then whenever the event stream (videoqueue.events) names some of them,
        and every eventwait.FULL_READ_EVERY_S. Only the jobs an event names are read again
        (without `on_update`, only those an event ends: videoqueue.eventwait), so waiting
        costs Redis work per event, not per job and second. The records carry no
        waiting-room standing (`get_many` does). `poll_interval` is ignored: it set the
        pause of the polling wait of earlier versions.
        """
        del poll_interval
        client = self.store.redis
        plan = WaitPlan(job_ids, timeout, now=time.monotonic(), every_change=on_update is not None)
        plan.since = stream.newest_id(client)  # before the first read: no change falls between
        while True:
            ids = plan.to_read(time.monotonic())
            if ids:
                plan.read(records(self.store, ids))
                if on_update:
                    on_update(plan.records())
            if plan.done:
                return plan.records()
            if plan.timed_out(time.monotonic()):
                raise WaitTimeoutError(plan.records())
            plan.saw(stream.read_events(client, plan.since, block_ms=plan.block_ms(time.monotonic())))

    def events(
        self,
        since: str | None = None,
        *,
        job_ids: Iterable[str] | None = None,
        block: float | None = None,
    ) -> Iterator[JobEvent]:
        """The status changes of jobs as they happen, oldest first (videoqueue.events): those
        after event id `since` (`"0"`: from the oldest the stream still keeps, EVENTS_MAXLEN;
        None: only those from now on, the position taken at this call), of every job or
        only of `job_ids` (whole ids). Blocks for the next event; with `block` seconds, ends
        when none (of those jobs) came for that long (None: never ends). Resume a later call from the last
        event's `id`. Raises redis.RedisError when Redis is gone."""
        client = self.store.redis
        follow = stream.Follower(
            stream.newest_id(client) if since is None else since, job_ids, block, now=time.monotonic()
        )
        return self._follow(follow)

    def _follow(self, follow: stream.Follower) -> Iterator[JobEvent]:
        while (wait_ms := follow.block_ms(time.monotonic())) is not None:
            found = stream.read_events(self.store.redis, follow.since, block_ms=wait_ms)
            yield from follow.take(found, time.monotonic())

    def store_retry(self, job_id: str) -> JobRecord:
        """Store again a job the store step gave up on, while the provider still holds its
        video (`reopen_for_store`), and send the store task. Raises UnknownJobError, or
        StoreRetryRefusedError when it cannot be stored again."""
        self.get(job_id)
        reopened = reopen_for_store(self.store, job_id)
        app = producer_app_for(self.settings)
        app.send_task(TASK_STORE, args=[job_id])
        return reopened

    def retry(self, job_id: str, *, again: bool = False) -> JobRecord:
        """Resubmit a job that ended failed, expired or cancelled as a new job with the same
        request (its seed and input images included) and return the new job's record.

        The new job's `retry_of` names the old one, whose `retried_by` lists its retries; a
        client job id moves to the new job. A job already retried is refused unless
        `again`, so running a retry twice makes one new job. Raises UnknownJobError,
        RetryRefusedError (succeeded or still active, already retried, input images no
        longer stored), BudgetExceededError or EnqueueError; after a refusal nothing is
        stored or sent."""
        old = self.get(job_id)
        why = old.retry_refusal()
        if why is not None:
            raise RetryRefusedError(f"{job_id}: cannot retry: {why}")
        if old.model not in self.catalog.models:
            raise RetryRefusedError(f"{job_id}: cannot retry: its model {old.model} is no longer in the catalog")
        images = self._stored_images(old)
        # The new job gets its own copy of the images under its own key: the old job's go
        # at their release time (videoqueue.inputs), whatever becomes of the retry.
        [record] = self._upload([(self._new_record(old.request, retry_of=job_id), images)])
        refused: list[str] = []
        if self.store.update(job_id, _retry_claim(record.id, again, refused)) is None:
            self._discard_inputs([record])
            raise RetryRefusedError(f"{job_id}: cannot retry: {refused[-1] if refused else 'unknown job'}")
        try:
            self.store.create_many([record], self.budget)
        except BaseException:
            self.store.update(job_id, _retry_unclaim(record.id))
            self._discard_inputs([record])
            raise
        try:
            self._send([record])
        except BaseException:
            self.store.update(job_id, _retry_unclaim(record.id))
            raise
        return record

    def _stored_images(self, job: JobRecord) -> dict[str, ImageFile]:
        """The uploaded images of `job` as stored (object storage, or Redis for a job from
        before object-storage inputs), checked against their sha256; RetryRefusedError when
        one is gone."""
        images: dict[str, ImageFile] = {}
        for role, source in job.request.images.items():
            if not isinstance(source, ImageUpload):
                continue
            if source.uri is None:
                image = self.store.get_input(job.id, role)
            else:
                data = self.input_storage().read(source.uri)
                image = None if data is None else ImageFile(source.file, source.mime_type, data)
            if image is None or image.sha256 != source.sha256:
                raise RetryRefusedError(
                    f"{job.id}: cannot retry: its {role.replace('_', ' ')} image {source.file!r} is no longer "
                    f"stored (inputs are kept {inputs.RETRY_GRACE_S // 3600} h past the job's end); "
                    "submit the request again with the file"
                )
            images[role] = image
        return images

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel a job. One not yet at the provider ends `cancelled` at once; one already
        there is marked `cancel_requested` and a worker cancels it at the provider (or
        discards its result if the provider can no longer stop it). Final jobs stay as
        they are."""
        job = self.get(job_id)
        now = utcnow()
        held_slot = self.room.limits.holds_slot(job.provider, job.model, job.id)
        # Only a queued job ends at once: one further on is cancelled by a worker, which
        # asks the provider first.
        cancelled = self.store.update(job_id, cancel_queued(now))
        if cancelled is not None:
            if held_slot:
                # Admitted but not yet created: its slot is free again, and a worker admits
                # the next waiting job at once (else the sweep would, later).
                self.send_admit(job.provider, job.model)
            return cancelled

        requested = self.store.update(job_id, request_cancel(now))
        if requested is not None:
            app = producer_app_for(self.settings)
            app.send_task(TASK_CANCEL, args=[job_id])
            return requested
        return self.get(job_id)

    # --- movies (producer/movie.py) ---------------------------------------------------------

    def submit_movie(self, movie: Movie | Mapping[str, Any]) -> MovieRecord:
        """Validate a storyboard (`producer.movie.Movie`, or a dict of its fields), store
        every scene's job and the movie in one transaction, reserving the whole estimate,
        and send the scenes that may start. Raises InvalidRequestError before any write."""
        from producer import movie as movies_api

        return movies_api.submit(self, movie)

    def movie(self, movie_id: str) -> MovieRecord:
        """A movie's record (its scenes' job ids, state, output, total cost). Raises
        UnknownMovieError."""
        from producer import movie as movies_api

        return movies_api.get(self, movie_id)[0]

    def cancel_movie(self, movie_id: str) -> MovieRecord:
        """Cancel a movie: its scenes not yet rendered are cancelled (their reservations
        released) and it ends `cancelled`. Raises UnknownMovieError."""
        from producer import movie as movies_api

        return movies_api.cancel(self, movie_id)


def check_batch(jobs: builtins.list[PreparedJob]) -> None:
    """Refuse (InvalidRequestError) a batch about to be stored in which a client job id
    repeats: `enqueue`'s check, for batches not made by `prepare_many`."""
    client_ids = [job.record.request.client_job_id for job in jobs]
    repeats = repeated_client_ids(client_ids)
    repeated = sorted({c for i, c in enumerate(client_ids) if c is not None and i in repeats})
    if repeated:
        raise InvalidRequestError({"client_job_id": f"repeated within one submission: {', '.join(repeated)}"})


def cancel_queued(now: datetime) -> Mutation:
    """`cancel`'s first move: a job still queued ends `cancelled` at once (declined in any
    other status)."""
    return transition({JobStatus.QUEUED}, JobStatus.CANCELLED, cancel_requested_at=now)


def request_cancel(now: datetime) -> Mutation:
    """`cancel`'s second move, for a job already further on: mark it `cancel_requested`
    (a worker then cancels it at the provider); declined when it is final or already so
    marked."""

    def mutate(record: JobRecord) -> JobRecord | None:
        if record.status.is_final or record.cancel_requested:
            return None
        record.cancel_requested_at = now
        return record

    return mutate


def _retry_claim(new_id: str, again: bool, refused: list[str]) -> Callable[[JobRecord], JobRecord | None]:
    """The compare-and-set that links a job to its retry `new_id`, or declines, saying why
    in `refused`: one claim wins when two retries of one job race."""

    def claim(record: JobRecord) -> JobRecord | None:
        why = record.retry_refusal()
        if why is None and record.retried_by and not again:
            why = f"it was already retried by {', '.join(record.retried_by)} (give --again to retry it once more)"
        if why is not None:
            refused.append(why)
            return None
        record.retried_by = [*record.retried_by, new_id]
        return record

    return claim


def _retry_unclaim(new_id: str) -> Callable[[JobRecord], JobRecord | None]:
    def unclaim(record: JobRecord) -> JobRecord | None:
        if new_id not in record.retried_by:
            return None
        record.retried_by = [j for j in record.retried_by if j != new_id]
        return record

    return unclaim


def _default_seed(client_job_id: str | None) -> int:
    """The seed of a request that names none: drawn at random, or derived from its client
    job id, so that sending the same request again with that id is the same request."""
    if client_job_id is None:
        return secrets.randbelow(2**31)
    return int.from_bytes(hashlib.sha256(client_job_id.encode()).digest()[:4], "big") % 2**31


def reopen_for_store(store: JobStore, job_id: str) -> JobRecord:
    """Move a job that failed in storage back to `downloading` with a fresh
    STORE_MAX_ATTEMPTS and STORE_DEADLINE_S (counted from now). Its cost was settled when it
    failed and is not settled again when it ends. Raises StoreRetryRefusedError when it did
    not fail in storage or the provider no longer holds its video."""
    now = utcnow()
    refused: list[str] = []

    def reopen(record: JobRecord) -> JobRecord | None:
        why = record.store_retry_refusal(now)
        if why is not None:
            refused.append(why)
            return None
        record.status = JobStatus.DOWNLOADING
        record.store_attempts = 0
        record.store_lease_until = None
        record.store_retries += 1
        record.store_retried_at = now
        record.error = None
        record.finished_at = None
        record.next_due_at = now
        return record

    reopened = store.update(job_id, reopen)
    if reopened is None:
        raise StoreRetryRefusedError(f"{job_id}: cannot store again: {refused[-1] if refused else 'unknown job'}")
    return reopened
