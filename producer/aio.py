"""The producer API for asyncio code (FastAPI, aiohttp): `AsyncVideoQueue`.

The same jobs, checks and errors as `VideoQueue` (producer/api.py), which it holds and
shares everything with: validation and the records it builds (`VideoQueue.prepare`,
`prepare_many`, `check_batch`), the job store's decisions (videoqueue.jobstore, driven on
`redis.asyncio` by producer/aiostore.py), the cancel moves (`cancel_queued`,
`request_cancel`). What blocks runs in a thread (`asyncio.to_thread`), not rewritten: URL
checks and reading local image files (`prepare`), image uploads and deletes (object
storage), and sending the Celery messages (kombu's producer, blocking I/O; kombu has no
asyncio API for Redis or AMQP brokers). So does the replica wait after a durable write,
and the place in the waiting room of a queued job (`VideoQueue.with_standing`: its Lua
script and counters, on the sync client), read only when a record read is queued.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

import redis.asyncio

from producer.aiostore import AsyncJobStore
from producer.api import (
    EnqueueError,
    PreparedJob,
    VideoQueue,
    WaitTimeoutError,
    cancel_queued,
    check_batch,
    request_cancel,
)
from producer.celery_client import producer_app_for
from producer.request import VideoRequest
from videoqueue import batches, inputs, keys, redisconn
from videoqueue import events as stream
from videoqueue.batches import Batch, BatchOptions, UnknownBatchError
from videoqueue.events import JobEvent
from videoqueue.eventwait import WaitPlan
from videoqueue.job import TASK_CANCEL, JobRecord, JobStatus, utcnow
from videoqueue.jobids import known
from videoqueue.settings import Settings

Request = VideoRequest | Mapping[str, Any]


class AsyncVideoQueue:
    """Entry point for asyncio producers; each method is `VideoQueue`'s, awaited.

    >>> async with AsyncVideoQueue() as vq:
    ...     job = await vq.submit({"prompt": "a red fox in snow", "duration": 5})
    ...     [done] = await vq.wait([job.id], timeout=600)
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        queue: VideoQueue | None = None,
        client: redis.asyncio.Redis | None = None,
    ) -> None:
        """`queue`: the sync producer whose settings, catalog, budgets, input storage and
        broker this one uses (default: `VideoQueue(settings)`); `client`: the asyncio Redis
        client of its job store (default: REDIS_URL's, or REDIS_SENTINELS' primary)."""
        self.sync = queue or VideoQueue(settings)
        self.settings = self.sync.settings
        self.store = AsyncJobStore(
            client or redisconn.connect_settings_async(self.settings),
            self.sync.store.replicas,
            self.sync.store.events_maxlen,
        )
        self.store.on_deliveries = self.sync.send_deliveries

    async def __aenter__(self) -> AsyncVideoQueue:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the asyncio Redis client's connections."""
        await self.store.redis.aclose()

    async def submit(self, request: Request) -> JobRecord:
        """`VideoQueue.submit`: validate, store and enqueue one job. Raises
        InvalidRequestError (DuplicateClientJobIdError) before any write."""
        job = await asyncio.to_thread(self.sync.prepare, request)
        return (await self.enqueue([job]))[0]

    async def submit_many(self, requests: Iterable[Request]) -> builtins.list[JobRecord]:
        """`VideoQueue.submit_many`: every request validated first (InvalidRequestError
        naming the items, nothing stored), then all stored in one transaction and sent."""
        jobs = await asyncio.to_thread(self.sync.prepare_many, builtins.list(requests))
        return await self.enqueue(jobs)

    async def submit_batch(
        self,
        requests: Iterable[Request],
        *,
        name: str = "",
        tags: Sequence[str] = (),
        on_complete: str | None = None,
        on_complete_queue: str | None = None,
        webhook_url: str | None = None,
        webhook_events: Sequence[str] = batches.WEBHOOK_EVENTS,
    ) -> Batch:
        """`VideoQueue.submit_batch`: the jobs and their batch record stored in one
        transaction, then sent; the batch as stored."""
        options = BatchOptions(name, tags, on_complete, on_complete_queue, webhook_url, webhook_events)
        jobs = await asyncio.to_thread(self.sync.prepare_many, builtins.list(requests))
        batch = await asyncio.to_thread(self.sync.new_batch, jobs, options)
        await self.enqueue(jobs, batch)
        return await self.batch(batch.id)

    async def batch(self, batch_id: str) -> Batch:
        """`VideoQueue.batch`: the batch (a whole id) as it stands now; UnknownBatchError."""
        raw: dict[Any, Any] = await self.store.redis.hgetall(keys.batch_key(batch_id.lower()))  # type: ignore[misc]
        found = batches.parse({batches.text(k): batches.text(v) for k, v in raw.items()})
        if found is None:
            raise UnknownBatchError(batch_id)
        return found

    async def enqueue(self, jobs: builtins.list[PreparedJob], batch: Batch | None = None) -> builtins.list[JobRecord]:
        """`VideoQueue.enqueue`: store the prepared jobs (and their `batch`) in one
        transaction, then send one message each; the records in order (a client job id
        that named the same request: that job's record, no message)."""
        check_batch(jobs)
        records = [job.record for job in jobs]
        if any(job.images for job in jobs):
            records = await asyncio.to_thread(self.sync._upload, [(job.record, job.images) for job in jobs])
        try:
            existing = await self.store.create_many(records, self.sync.budget, batch)
        except BaseException:
            await self._discard_inputs(records)
            raise
        # A client job id that already names the same request keeps that job's images.
        await self._discard_inputs([r for r in records if r.id in existing])
        fresh = [r for r in records if r.id not in existing]
        if fresh:
            # On a refusal it withdraws the jobs it could not send (sync store, same thread).
            try:
                await asyncio.to_thread(self.sync._send, fresh)
            except EnqueueError:
                if batch is not None and not any(await self.store.get_many(batch.job_ids)):
                    await asyncio.to_thread(batches.drop, self.sync.store.redis, batch.id)
                raise
        return [existing.get(r.id, r) for r in records]

    async def _discard_inputs(self, records: builtins.list[JobRecord]) -> None:
        if any(inputs.uploaded_uris(r) for r in records):
            await asyncio.to_thread(self.sync._discard_inputs, records)

    async def get(self, job_id: str) -> JobRecord:
        """The current record of a job; UnknownJobError if there is none."""
        return (await self.get_many([job_id]))[0]

    async def get_many(self, job_ids: Sequence[str]) -> builtins.list[JobRecord]:
        """`VideoQueue.get_many`: current records, in order, queued ones with where they
        stand; UnknownJobError naming every unknown id."""
        return await self._with_standing(known(job_ids, await self.store.get_many(job_ids)))

    async def list(self, status: JobStatus | str | None = None, limit: int = 50) -> builtins.list[JobRecord]:
        """`VideoQueue.list`: recent jobs, newest first, optionally only those in `status`."""
        return await self._with_standing(await self.store.list(JobStatus(status) if status else None, limit))

    async def _with_standing(self, jobs: builtins.list[JobRecord]) -> builtins.list[JobRecord]:
        if any(job.status is JobStatus.QUEUED for job in jobs):
            return await asyncio.to_thread(self.sync.with_standing, jobs)
        return jobs

    async def cancel(self, job_id: str) -> JobRecord:
        """`VideoQueue.cancel`: a queued job ends `cancelled` at once; one further on is
        marked `cancel_requested` and a worker cancels it at the provider; a final one
        stays as it is. UnknownJobError for an unknown id."""
        job = await self.get(job_id)
        now = utcnow()
        held_slot = await self.store.holds_slot(job.provider, job.model, job.id)
        cancelled = await self.store.update(job_id, cancel_queued(now))
        if cancelled is not None:
            if held_slot:
                await asyncio.to_thread(self.sync.send_admit, job.provider, job.model)
            return cancelled
        requested = await self.store.update(job_id, request_cancel(now))
        if requested is not None:
            app = producer_app_for(self.settings)
            await asyncio.to_thread(app.send_task, TASK_CANCEL, args=[job_id])
            return requested
        return await self.get(job_id)

    async def wait(
        self,
        job_ids: Sequence[str],
        timeout: float | None = None,
        *,
        on_update: Callable[[builtins.list[JobRecord]], object] | None = None,
    ) -> builtins.list[JobRecord]:
        """`VideoQueue.wait`, without blocking the event loop: the records (in order) once
        every job is final. The same decisions (videoqueue.eventwait): the records read
        once, then only those the event stream names, and all still pending now and then.
        Raises UnknownJobError (before waiting), WaitTimeoutError after `timeout` seconds.
        `on_update` is called with the records on every read. Each wait holds one
        connection of the client's pool while it blocks on the stream (XREAD BLOCK, at most
        events.MAX_BLOCK_MS at a time)."""
        plan = WaitPlan(job_ids, timeout, now=time.monotonic())
        plan.since = await self._newest_id()  # before the first read: no change falls between
        while True:
            ids = plan.to_read(time.monotonic())
            if ids:
                plan.read(known(ids, await self.store.get_many(ids)))
                if on_update:
                    on_update(plan.records())
            if plan.done:
                return plan.records()
            if plan.timed_out(time.monotonic()):
                raise WaitTimeoutError(plan.records())
            plan.saw(await self._read_events(plan.since, plan.block_ms(time.monotonic())))

    async def events(
        self,
        since: str | None = None,
        *,
        job_ids: Iterable[str] | None = None,
        block: float | None = None,
    ) -> AsyncGenerator[JobEvent, None]:
        """`VideoQueue.events` as an async generator: the status changes of jobs, oldest
        first, after event id `since` ("0": the oldest kept; None: from now on, the position
        taken at the first iteration), of every job or only of `job_ids`. Each read blocks
        on the stream (XREAD BLOCK) without blocking the event loop; with `block` seconds,
        ends when none (of those jobs) came for that long (None: never ends). Resume a
        later call from the last event's `id`. Raises redis.RedisError when Redis is gone.

        >>> async for event in vq.events(since="0"):
        ...     print(event.job_id, event.status)
        """
        position = await self._newest_id() if since is None else since
        follow = stream.Follower(position, job_ids, block, now=time.monotonic())
        while (wait_ms := follow.block_ms(time.monotonic())) is not None:
            for event in follow.take(await self._read_events(follow.since, wait_ms), time.monotonic()):
                yield event

    async def _newest_id(self) -> str:
        """`events.newest_id` on the asyncio client."""
        return stream.last_id(await self.store.redis.xrevrange(keys.EVENTS_STREAM, "+", "-", count=1))

    async def _read_events(self, since: str, block_ms: int, count: int = 1000) -> builtins.list[JobEvent]:
        """`events.read_events` on the asyncio client: up to `count` events after `since`,
        blocking up to `block_ms` (1 to events.MAX_BLOCK_MS) for one."""
        block = max(1, min(block_ms, stream.MAX_BLOCK_MS))
        reply = await self.store.redis.xread({keys.EVENTS_STREAM: since}, count=count, block=block)
        return stream.decode_all(stream.entries(reply))
