"""The job store on `redis.asyncio`: the second driver of videoqueue.jobstore's decisions,
for the asyncio producer (producer/aio.py).

Nothing here decides: the transaction body of a batch of new jobs (`jobstore.create`), the
mutations (`jobstore.transition`, the producer's cancel moves), the move made ready for the
script with its final-move hooks (`jobstore.Move.of`, its `args`), the script (`MOVE`,
registered on this client as on the sync one) and the reading of its reply
(`jobstore.move_reply`) are the sync store's own. They read through a
`videoqueue.snapshot.Snapshot`, which this driver fills with async reads (`snapshot.settle`);
the writes they queue on it are sent in MULTI here. The replica wait after a write that
must survive a failover is the sync store's `ReplicaWait` (a blocking WAIT of up to
REDIS_REPLICA_WAIT_MS), run in a thread.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
import redis.asyncio

from videoqueue import batches, events, keys, lifecycle
from videoqueue.batches import Batch
from videoqueue.budget import BudgetPolicy
from videoqueue.job import JobRecord, JobStatus, working_copy
from videoqueue.jobstore import (
    Move,
    Mutation,
    create,
    create_watch_keys,
    durable_write,
    move_reply,
    newest,
    transition,
)
from videoqueue.keys import job_key, slot_key, status_index
from videoqueue.limits import live_lease
from videoqueue.movescript import CHANGED, MOVE, STORED
from videoqueue.replicawait import ReplicaWait
from videoqueue.snapshot import Read, Snapshot, commands, settle

log = logging.getLogger(__name__)


class AsyncJobStore:
    """Reads and compare-and-set writes of job records on a `redis.asyncio` client (decoded
    replies). `replicas`: the replica wait of the sync store on the same Redis, or None for
    none."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        replicas: ReplicaWait | None = None,
        events_maxlen: int = events.DEFAULT_MAXLEN,
    ) -> None:
        self.redis = client
        self._move: Any = client.register_script(MOVE)
        self.replicas = replicas
        self.events_maxlen = events_maxlen
        """About how many entries the event stream keeps (EVENTS_MAXLEN; videoqueue.events)."""
        self.on_deliveries: Callable[[builtins.list[str]], object] | None = None
        """`JobStore.on_deliveries`: called, in a thread, with the ids of the notifications
        a stored move owes (videoqueue.webhooks), so their tasks go at once (else the sweep
        sends them)."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None."""
        raw: str | None = await self.redis.get(job_key(job_id))
        return JobRecord.from_store_json(raw, job_id) if raw else None

    async def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records in the order of `job_ids`; None where unknown."""
        if not job_ids:
            return []
        raws: list[str | None] = await self.redis.mget([job_key(j) for j in job_ids])
        return [JobRecord.from_store_json(r, j) if r else None for j, r in zip(job_ids, raws, strict=True)]

    async def list(self, status: JobStatus | None = None, limit: int = 50) -> list[JobRecord]:
        """Newest first, optionally only those in `status`: `JobStore.list`."""
        count = max(limit, 1)
        if status:
            ids: list[str] = await self.redis.zrevrange(status_index(status), 0, count - 1)
        else:
            pipe = self.redis.pipeline(transaction=False)
            for each in JobStatus:
                pipe.zrevrange(status_index(each), 0, count - 1, withscores=True)
            ids = newest(await pipe.execute(), count)
        return [r for r in await self.get_many(ids) if r is not None]

    async def holds_slot(self, provider: str, model: str, job_id: str) -> bool:
        """True when the job holds a live slot of the model (`ProviderLimits.holds_slot`)."""
        return live_lease(await self.redis.zscore(slot_key(provider, model), job_id))

    async def _fetch(self, reads: Sequence[Read]) -> builtins.list[Any]:
        """The replies to `reads`, in one round trip (a snapshot's missing reads)."""
        pipe = self.redis.pipeline(transaction=False)
        for read in reads:
            pipe.execute_command(*read)
        replies: builtins.list[Any] = await pipe.execute()
        return replies

    async def create_many(
        self, records: Sequence[JobRecord], budget: BudgetPolicy | None = None, batch: Batch | None = None
    ) -> dict[str, JobRecord]:
        """`JobStore.create_many`: the same transaction (WATCH, the reads `jobstore.create`
        makes, MULTI with its writes, EXEC; again when a watched key changed meanwhile),
        the same result and errors; `batch` stored with the records (`jobstore.create`)."""
        existing: dict[str, JobRecord] = {}
        if not records:
            return existing
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(*create_watch_keys(records))
                    _, snapshot = await settle(
                        lambda s: create(s, records, budget, existing, self.events_maxlen, batch=batch), self._fetch
                    )
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for command in commands(snapshot):
                        pipe.execute_command(*command)
                    await pipe.execute()
                    break
                except redis.WatchError:
                    continue
        fresh = [r.id for r in records if r.id not in existing]
        if fresh:
            await self._replica_wait("create", fresh[0])
        return dict(existing)

    async def update(self, job_id: str, mutate: Mutation) -> JobRecord | None:
        """`JobStore.update`: the same compare-and-set by `MOVE`, from a fresh read (no
        record remembered between calls). Returns the stored record, or None when the job
        is unknown or `mutate` declined; raises IllegalTransitionError, TaskClaimedError.
        The replica wait after a durable write as there; no slot or final callbacks (a
        producer sets none); `on_deliveries` as there."""
        key = job_key(job_id)
        raw: str | None = await self.redis.get(key)
        while raw:
            current = JobRecord.from_store_json(raw, job_id)
            proposed = mutate(working_copy(current))
            if proposed is None:
                return None
            lifecycle.check(current.status, proposed.status)

            def prepare(reads: Snapshot, proposed: JobRecord = proposed, current: JobRecord = current) -> Any:
                # Move.of completes the record in place: each run on a copy of its own.
                changed = working_copy(proposed)
                return Move.of(reads, current, changed, self.events_maxlen), changed

            (move, changed), _ = await settle(prepare, self._fetch)
            code, carried = move_reply(changed, await self._move(keys=[key], args=move.args(raw, job_id)))
            if code == CHANGED:
                raw = carried  # moved on meanwhile: compute the move again from what it is now
                continue
            if code != STORED:
                return None
            durable = durable_write(current, changed)
            if durable is not None:
                await self._replica_wait(durable, changed.id)
            deliveries = list(move.deliveries)
            if move.ends and changed.batch_id and self.on_deliveries is not None:
                # `JobStore.update`: the batch's deliveries, if this move ended it.
                read = self.redis.hmget(keys.batch_key(changed.batch_id), ["finished_at", "extras"])
                finished, extras = await read  # type: ignore[misc]
                deliveries += batches.owed_when_finished(changed.batch_id, finished, extras)
            if deliveries and self.on_deliveries is not None:
                try:
                    await asyncio.to_thread(self.on_deliveries, deliveries)
                except Exception:
                    log.exception("sending deliveries after a move", extra={"job_id": job_id})
            return changed  # type: ignore[no-any-return]
        return None

    async def transition(
        self, job_id: str, allowed_from: Iterable[JobStatus], to: JobStatus, **changes: Any
    ) -> JobRecord | None:
        """`JobStore.transition`."""
        return await self.update(job_id, transition(allowed_from, to, **changes))

    async def _replica_wait(self, what: str, job_id: str) -> None:
        if self.replicas is not None and self.replicas.timeout_ms > 0:
            await asyncio.to_thread(self.replicas.after_write, what, job_id)
