"""The job store: one JSON record per job in Redis, indexed by status and creation time.

Every change is a compare-and-set: the caller's function sees the current record and
returns the new one, or None to leave it alone; one server-side script (videoqueue.movescript)
stores it with everything that goes with it only if the record is still the one read. A task
that runs twice therefore finds the record already moved on and changes nothing. (New
records are stored in a WATCH/MULTI/EXEC transaction: `create_many`, once per batch.)
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis

from videoqueue import batches, events, final_hooks, keys, lifecycle, redisconn, room, stats, webhooks
from videoqueue.budget import BudgetPolicy, check_and_reserve, settle
from videoqueue.errors import DuplicateClientJobIdError as DuplicateClientJobIdError  # noqa: PLC0414 - re-export
from videoqueue.errors import JobExistsError as JobExistsError  # noqa: PLC0414 - re-export
from videoqueue.errors import TaskClaimedError as TaskClaimedError  # noqa: PLC0414 - re-export
from videoqueue.images import ImageFile
from videoqueue.job import JobRecord, JobStatus, utcnow, working_copy
from videoqueue.keys import client_key, input_key, job_key, slot_key, status_index, task_claim_key
from videoqueue.movescript import CHANGED, CLAIMED, MOVE, STORED, Arg, Reads, Writes, reply_code
from videoqueue.replicawait import DEFAULT_TIMEOUT_MS, ReplicaWait
from videoqueue.resolved import IMAGE_ROLES, ResolvedRequest

if TYPE_CHECKING:
    from videoqueue.settings import Settings

MAX_HISTORY = 50

# Records a thread remembers at most (`JobStore.last_seen`, where `update` starts): a step
# sees one job, the odd admission a few more; past this the memory starts again.
_SEEN_MAX = 64

log = logging.getLogger("videoqueue.jobstore")

Mutation = Callable[[JobRecord], JobRecord | None]

SlotFreed = Callable[[str, str], object]
"""Told (provider, model) after a move freed a slot of that model: the caller admits the
next waiting jobs (videoqueue.room)."""

# The statuses in which a job may hold a slot of its model: `queued` once admitted (its
# submit message on its way), `submitting`, `running`.
_SLOT_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.SUBMITTING, JobStatus.RUNNING})
_AT_PROVIDER = frozenset({JobStatus.SUBMITTING, JobStatus.RUNNING})


def frees_slot(before: JobRecord, after: JobRecord) -> bool:
    """True when the move from `before` to `after` ends the job's hold on a slot: it left
    the provider (finished there: `downloading`; ended) or a create was given up for now
    (`submitting` -> `queued`)."""
    return before.status != after.status and before.status in _SLOT_STATUSES and after.status not in _AT_PROVIDER


# Inputs that producers before object-storage inputs stored in Redis outlive the job's
# deadline by this much, then Redis forgets them (videoqueue.inputs holds today's rule).
INPUT_GRACE_S = 86400


def active_index_keys() -> list[str]:
    """Index keys of the jobs not yet final, one per status: every create, every end and
    every withdrawal of a job changes one of them (what the budget rebuild WATCHes)."""
    return [status_index(status) for status in JobStatus if not status.is_final]


@dataclass(frozen=True)
class ClientIdConflict:
    """A client job id that already names a job whose request differs from the new one:
    `differences` maps each differing request field to (stored value, new value)."""

    client_job_id: str
    job_id: str
    differences: dict[str, tuple[Any, Any]]

    def describe(self) -> str:
        """One line: which job holds the id, and what differs."""
        fields = ", ".join(
            f"{name} ({_short(stored)} stored, {_short(new)} now)" for name, (stored, new) in self.differences.items()
        )
        return (
            f"client job id {self.client_job_id!r} was already used by job {self.job_id} "
            f"for a different request: {fields}"
        )


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def request_differences(stored: ResolvedRequest, new: ResolvedRequest) -> dict[str, tuple[Any, Any]]:
    """The fields in which two resolved requests (`JobRecord.request`) differ, with their
    (stored, new) JSON values; empty when they are the same request."""
    before, after = stored.json_fields(), new.json_fields()
    return {name: (before[name], after[name]) for name in sorted(before) if before[name] != after[name]}


CLIENT_ID_TTL_S = 90 * 86400


# A claim must outlast every lookup that could see its task: lookups search from a job's
# first create intent, which is at most its deadline old. The job's final move shortens it
# to what is left of that (retention.claim_after_end_s).
TASK_CLAIM_TTL_S = 7 * 86400


def _new_task(current: JobRecord, changed: JobRecord) -> str | None:
    """The provider task id a change records, if it records one (the move's script claims
    it for the job: TaskClaimedError when another job holds it)."""
    task_id = changed.provider_task_id
    if not task_id or task_id == current.provider_task_id:
        return None
    return task_id


def _write_indexes(pipe: Any, before: JobRecord | None, after: JobRecord) -> None:
    """Queue, on a MULTI pipeline or a move's `Writes`, what the indexes and counts of jobs
    say about a job stored new (`before` None) or changed: the index and count of its status
    (the index scored by creation time; no index of all jobs: the status ones together are
    it), and the due index (active jobs only)."""
    job_id = after.id
    if before is None:
        score = after.created_at.timestamp()
        pipe.zadd(status_index(after.status), {job_id: score})
        stats.on_create(pipe, after)
        if after.after_job is None:  # a movie's scene waiting for the one before is due when let go
            pipe.zadd(keys.DUE_INDEX, {job_id: score})
        return
    if after.status.is_final and not before.status.is_final:
        pipe.zrem(keys.DUE_INDEX, job_id)
        pipe.zrem(keys.PARKED_INDEX, job_id)
    elif after.next_due_at != before.next_due_at and after.next_due_at is not None:
        pipe.zadd(keys.DUE_INDEX, {job_id: after.next_due_at.timestamp()})
    if after.status != before.status:
        stats.on_status_change(pipe, before, after)
        pipe.zrem(status_index(before.status), job_id)
        pipe.zadd(status_index(after.status), {job_id: before.created_at.timestamp()})


def durable_write(before: JobRecord, after: JobRecord) -> str | None:
    """What the change from `before` to `after` records that must survive a failover, as a
    label, or None: "create intent" (a create is about to be sent: losing this would send a
    second one without looking for the first), "task id" (a provider task recorded) or
    "final move" (the job's end, with its ledger entry and settled cost)."""
    if after.status.is_final and not before.status.is_final:
        return "final move"
    if after.provider_task_id and after.provider_task_id != before.provider_task_id:
        return "task id"
    if after.submit_intent_at is not None and after.submit_intent_at != before.submit_intent_at:
        return "create intent"
    return None


def clear_final(record: JobRecord) -> None:
    """Drop, in place, what a final record no longer means (issue 18: a finished job keeps
    less): when the next step is due, the create and store leases, the endpoint it waited
    for, and the provider's short-lived video URL unless the job failed (`videoqueue store
    retry` of a failed job fetches the video from there; the manifest never keeps it). A
    store retry sets its own lease and due time again."""
    record.next_due_at = None
    record.submit_lease_until = None
    record.store_lease_until = None
    record.waiting_for_endpoint = None
    if record.status is not JobStatus.FAILED:
        record.video_url = None


@dataclass(frozen=True)
class _Move:
    """A change of a record made ready for `movescript.MOVE`: the record to store, the
    task claim key ("" for none) and every write that goes with it."""

    stored_raw: str
    claim: str
    reads: Reads
    writes: Writes
    freed: bool
    ends: bool
    deliveries: tuple[str, ...] = ()
    """The ids of the notifications the move owes (videoqueue.webhooks), to send after it."""

    @classmethod
    def of(
        cls, client: Any, current: JobRecord, changed: JobRecord, events_maxlen: int = events.DEFAULT_MAXLEN
    ) -> _Move:
        """Complete `changed` (updated_at, finished_at, history, settled_at, and submitted_at
        when it records a provider task: it is edited in place) and gather its writes:
        indexes and counts, the slot it frees, the final hooks' writes, and its event when
        the status changes (videoqueue.events, the stream capped at about `events_maxlen`
        entries). The hooks read with `client`,
        before the script, through `Reads`: the script stores the move only if every key
        they read (a job's ledger row, which a `costs rebuild` may write meanwhile) still
        holds what they read."""
        job_id = changed.id
        new_task = _new_task(current, changed)
        ends = changed.status.is_final and not current.status.is_final
        # A job the store step gave up on can be stored again (`videoqueue store retry`)
        # and end a second time: its cost was settled at the first end, never again.
        settles = ends and current.settled_at is None
        now = utcnow()
        changed.updated_at = now
        if new_task:
            # The create's answer is recorded now, with the move to `running`: one time
            # for both, so a stored record leaves it out once (storedform, version 4).
            changed.submitted_at = now
        if changed.status.is_final and changed.finished_at is None:
            changed.finished_at = now
        if changed.status != current.status:
            changed.history = [
                *changed.history[-(MAX_HISTORY - 1) :],
                {"at": now.isoformat(), "from": current.status, "to": changed.status},
            ]
        if settles:
            changed.settled_at = changed.finished_at  # the ledger entry's settled_at
        if changed.status.is_final:
            clear_final(changed)
        reads = Reads(client)
        hook_writes = [hook(reads, current, changed) for hook in final_hooks.FINAL_HOOKS] if ends else []
        hook_writes.append(webhooks.on_status_change(current, changed))  # started, progress
        hook_writes.append(batches.on_move(current, changed, events_maxlen))  # its batch's counts
        writes = Writes()
        _write_indexes(writes, current, changed)
        freed = frees_slot(current, changed)
        if freed:
            writes.zrem(slot_key(changed.provider, changed.model), job_id)
        for queue in hook_writes:
            if queue is not None:
                queue(writes)
        if changed.status != current.status:
            writes.xadd(keys.EVENTS_STREAM, events.encode(current, changed), maxlen=events_maxlen)
        claim = task_claim_key(changed.provider, new_task) if new_task else ""
        deliveries = tuple(webhooks.owed_ids(current, changed))
        return cls(changed.to_store_json(), claim, reads, writes, freed, ends, deliveries)

    def args(self, raw: str, job_id: str) -> list[Arg]:
        """`MOVE`'s ARGV for this move of job `job_id` computed from its record `raw` (its
        KEYS: the record's key alone)."""
        return [raw, self.stored_raw, self.claim, job_id, TASK_CLAIM_TTL_S, *self.reads.args(), *self.writes.args]


Move = _Move
"""A move made ready for `MOVE` (`Move.of`), for drivers of the job store other than
`JobStore` (the asyncio one: producer/aiostore.py)."""


def move_reply(changed: JobRecord, reply: Any) -> tuple[int, str | None]:
    """`MOVE`'s reply to the move to `changed` as (code, the record it carries, or None);
    raises TaskClaimedError when another job holds the task it records."""
    code, carried = reply_code(reply)
    if code == CLAIMED:
        raise TaskClaimedError(str(changed.provider_task_id), str(carried))
    return code, carried


def newest(indexes: Iterable[Iterable[tuple[str, float]]], count: int) -> list[str]:
    """The `count` newest ids of the newest (member, score) pairs of each status index, as
    one index of all jobs would give them (ties: the greater id first, as ZREVRANGE); a job
    read in two indexes (moving meanwhile) once."""
    scored = sorted(((score, member) for members in indexes for member, score in members), reverse=True)
    return list(dict.fromkeys(member for _score, member in scored))[:count]


def create_watch_keys(records: Sequence[JobRecord]) -> list[str]:
    """The keys the transaction of `create_many` WATCHes: the records' own keys, their
    budget counters, the caps and their client job ids."""
    job_keys = [job_key(r.id) for r in records]
    budget_keys = sorted({k for r in records for k in r.budget_keys})
    client_keys = [client_key(r.request.client_job_id) for r in records if r.request.client_job_id]
    return [*job_keys, *budget_keys, keys.BUDGET_CAPS, *dict.fromkeys(client_keys)]


def create(
    pipe: Any,
    records: Sequence[JobRecord],
    budget: BudgetPolicy | None,
    existing: dict[str, JobRecord],
    events_maxlen: int = events.DEFAULT_MAXLEN,
    *,
    also: Callable[[Any], None] | None = None,
    batch: batches.Batch | None = None,
) -> None:
    """The body of `create_many`'s transaction, on a pipeline WATCHing `create_watch_keys`
    (or a `snapshot.Snapshot` of it: producer/aiostore.py): read, decide, issue MULTI and
    queue the writes. Fills `existing` (cleared first) with the stored jobs that client job
    ids already name; raises as `create_many` says. Each new job's `queued` event goes with
    it (the stream capped at about `events_maxlen` entries). With `batch`, the batch record
    of the jobs stored new (videoqueue.batches) goes with them: a job whose client job id
    already named a stored job is returned, not counted in the batch."""
    existing.clear()
    taken = [r.id for r in records if pipe.exists(job_key(r.id))]
    if taken:
        raise JobExistsError(", ".join(taken))
    existing.update(_client_id_owners(pipe, records))
    fresh = [r for r in records if r.id not in existing]
    if any(r.budget_keys for r in fresh):
        check_and_reserve(pipe, budget or BudgetPolicy(), fresh)  # issues MULTI
    else:
        pipe.multi()
    for record in fresh:
        pipe.set(job_key(record.id), record.to_store_json())
        _write_indexes(pipe, None, record)
        pipe.xadd(keys.EVENTS_STREAM, events.encode(None, record), maxlen=events_maxlen, approximate=True)
        if record.request.client_job_id:
            pipe.set(client_key(record.request.client_job_id), record.id, ex=CLIENT_ID_TTL_S)
    if also is not None:
        also(pipe)
    if batch is not None:
        batches.create(pipe, batch.model_copy(update={"job_ids": [r.id for r in fresh]}), fresh)


def _client_id_owners(pipe: Any, records: Sequence[JobRecord]) -> dict[str, JobRecord]:
    """Inside a WATCHed transaction, before MULTI: the stored job each record's client
    job id already names, by record id, where the requests are equal; raises
    DuplicateClientJobIdError for those that differ."""
    owners: dict[str, JobRecord] = {}
    conflicts: list[ClientIdConflict] = []
    for record in records:
        client_id = record.request.client_job_id
        if not client_id or record.retry_of:
            continue
        owner_id = pipe.get(client_key(client_id))
        if not owner_id:
            continue
        raw = pipe.get(job_key(owner_id))
        if not raw:
            continue  # the job it named is gone (an enqueue undone): the id is free
        owner = JobRecord.from_store_json(raw, owner_id)
        differences = request_differences(owner.request, record.request)
        if differences:
            conflicts.append(ClientIdConflict(client_id, owner_id, differences))
        else:
            owners[record.id] = owner
    if conflicts:
        raise DuplicateClientJobIdError(conflicts)
    return owners


class JobStore:
    """Reads and compare-and-set writes of job records."""

    def __init__(self, client: redis.Redis, replicas: ReplicaWait | None = None) -> None:
        self.redis = client
        self._move: Any = client.register_script(MOVE)
        self._seen = threading.local()
        self.on_slot_freed: SlotFreed | None = None
        """Called after a move freed a slot (`frees_slot`), outside the transaction."""
        self.on_final: Callable[[JobRecord], object] | None = None
        """Called with the stored record after a move to a final status, outside the
        transaction (a worker deletes the job's input images when due: videoqueue.inputs)."""
        self.on_deliveries: Callable[[builtins.list[str]], object] | None = None
        """Called with the ids of the notifications a stored move owes (videoqueue.webhooks),
        outside the transaction: a worker sends their tasks at once (else the sweep does)."""
        self.replicas = replicas or ReplicaWait(client, DEFAULT_TIMEOUT_MS)
        """Waits for a replica after the writes that must survive a failover (`durable_write`)."""
        self.events_maxlen = events.DEFAULT_MAXLEN
        """About how many entries the event stream keeps (EVENTS_MAXLEN; videoqueue.events)."""

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        """A store on the Redis at `url`."""
        return cls(redisconn.connect(url))

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """A store on the Redis `settings` name (REDIS_URL, or the primary REDIS_SENTINELS
        name), waiting REDIS_REPLICA_WAIT_MS for a replica after the writes that must
        survive a failover."""
        client = redisconn.connect_settings(settings)
        store = cls(client, ReplicaWait(client, settings.redis_replica_wait_ms))
        store.events_maxlen = settings.events_maxlen
        return store

    def create_many(
        self,
        records: Sequence[JobRecord],
        budget: BudgetPolicy | None = None,
        *,
        also: Callable[[Any], None] | None = None,
        batch: batches.Batch | None = None,
    ) -> dict[str, JobRecord]:
        """Store several new records and their budget reservations in one transaction: all
        or none (input images are in object storage, the records refer to them:
        videoqueue.inputs), each with its `queued` event (videoqueue.events). Raises
        BudgetExceededError when a cap would be crossed:
        the caps in Redis, else those of `budget` (this process's settings).

        A record whose client job id already names a stored job is not stored when its
        request equals that job's (`request_differences`): the result maps its id to the
        stored job, which is not reserved again. When any request
        differs, DuplicateClientJobIdError names every such id and nothing is stored. The
        check runs inside the transaction that maps the ids, so producers racing with one
        client job id store one job. A retry (a record with `retry_of`) takes its client job
        id over from whichever job of its line holds it. `also` queues more writes in the
        same MULTI, after the records' (a movie's record: videoqueue.movies). `batch`: the
        batch record of these jobs, stored with them (`create`)."""
        existing: dict[str, JobRecord] = {}
        if records:
            self.redis.transaction(
                lambda pipe: create(pipe, records, budget, existing, self.events_maxlen, also=also, batch=batch),
                *create_watch_keys(records),
            )
            fresh = [r.id for r in records if r.id not in existing]
            if fresh:
                # The producer is about to be told these ids: they must outlive a failover.
                self.replicas.after_write("create", fresh[0])
        return dict(existing)

    def get_input(self, job_id: str, role: str) -> ImageFile | None:
        """An input image stored in Redis with a job by producers before object-storage
        inputs (`ImageUpload.uri` None), or None; read only, for such jobs."""
        raw: str | None = self.redis.get(input_key(job_id, role))  # type: ignore[assignment]
        if not raw:
            return None
        blob = json.loads(raw)
        return ImageFile(name=blob["name"], mime_type=blob["mime_type"], data=base64.b64decode(blob["data"]))

    def delete(self, job_id: str) -> None:
        """Remove a record, its inputs, index entries and budget reservation (used only to
        undo a failed enqueue)."""
        record = self.get(job_id)
        pipe = self.redis.pipeline()
        if record is not None and not record.status.is_final:
            settle(pipe, record.model_copy(update={"cost_usd": None}))
            pipe.hincrby(keys.STATS_JOBS, stats.jobs_field(record.status.value, record.provider, record.model), -1)
            if record.request.client_job_id and record.retry_of:
                pipe.set(client_key(record.request.client_job_id), record.retry_of, ex=CLIENT_ID_TTL_S)
            elif record.request.client_job_id:
                pipe.delete(client_key(record.request.client_job_id))
            if record.batch_id:
                batches.withdraw(pipe, record)
        if record is not None:
            room.leave(pipe, record)
            pipe.zrem(slot_key(record.provider, record.model), job_id)
        pipe.delete(job_key(job_id), *(input_key(job_id, role) for role in IMAGE_ROLES))
        pipe.zrem(keys.DUE_INDEX, job_id)
        pipe.zrem(keys.PARKED_INDEX, job_id)
        for status in JobStatus:
            pipe.zrem(status_index(status), job_id)
        pipe.execute()

    def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, or None."""
        raw: str | None = self.redis.get(job_key(job_id))  # type: ignore[assignment]
        if not raw:
            return None
        record = JobRecord.from_store_json(raw, job_id)
        self._saw(working_copy(record), raw)  # `record` is the caller's to edit
        return record

    def get_many(self, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records in the order of `job_ids`; None where unknown."""
        if not job_ids:
            return []
        raws: list[str | None] = self.redis.mget([job_key(j) for j in job_ids])  # type: ignore[assignment]
        return [JobRecord.from_store_json(r, j) if r else None for j, r in zip(job_ids, raws, strict=True)]

    def list(self, status: JobStatus | None = None, limit: int = 50) -> list[JobRecord]:
        """Newest first (by creation time), optionally only those in `status`.

        Without a status: the newest `limit` of each status index (one pipeline), merged by
        score, as one index of all jobs would give them (ties: the greater id first, as
        ZREVRANGE). A job moving between statuses while they are read shows once."""
        count = max(limit, 1)
        if status:
            ids: list[str] = self.redis.zrevrange(status_index(status), 0, count - 1)  # type: ignore[assignment]
            return [r for r in self.get_many(ids) if r is not None]
        pipe = self.redis.pipeline(transaction=False)
        for each in JobStatus:
            pipe.zrevrange(status_index(each), 0, count - 1, withscores=True)
        return [r for r in self.get_many(newest(pipe.execute(), count)) if r is not None]

    def ids_starting_with(self, prefix: str, limit: int = 10) -> builtins.list[str]:
        """Up to `limit` ids of stored jobs that start with `prefix`, in no particular order.

        A ZSCAN of each status index with MATCH: O(jobs in the store), on the server, in
        batches of 1000 (measured: 0.2 s for 200,000 jobs in one index). Whole ids need no
        scan: `get`."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        found: builtins.list[str] = []
        for status in JobStatus:
            for member, _score in self.redis.zscan_iter(status_index(status), match=pattern, count=1000):
                # SCAN may return an entry twice, and a job moving while scanned is in two indexes
                if member in found:
                    continue
                found.append(member)
                if len(found) >= limit:
                    return found
        return found

    def due_before(self, when: float, limit: int = 1000) -> builtins.list[str]:
        """Ids of active jobs whose next step was due before `when` (epoch seconds)."""
        ids: builtins.list[str] = self.redis.zrangebyscore(keys.DUE_INDEX, "-inf", when, start=0, num=limit)  # type: ignore[assignment]
        return ids

    def due_at(self, job_id: str) -> float | None:
        """When the job's next step is due (epoch seconds), or None if it is not indexed."""
        score: float | None = self.redis.zscore(keys.DUE_INDEX, job_id)  # type: ignore[assignment]
        return score

    def park(self, job_id: str, when: float) -> None:
        """Record that the job's next step is due at `when` but was not sent (the wait is
        longer than a countdown may be): the sweep sends it then (`unpark_due`). The
        pipeline parks through `videoqueue.parking` (which also arms the park timer)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zadd(keys.DUE_INDEX, {job_id: when}, xx=True)
        pipe.zadd(keys.PARKED_INDEX, {job_id: when})
        pipe.execute()

    def parked_at(self, job_id: str) -> float | None:
        """When the job's parked step is due, or None if nothing is parked."""
        score: float | None = self.redis.zscore(keys.PARKED_INDEX, job_id)  # type: ignore[assignment]
        return score

    def unpark_due(self, when: float, limit: int = 1000) -> builtins.list[str]:
        """Take the jobs whose parked step is due by `when` out of the parked index and
        return their ids: each id is returned to one caller only, who sends the step."""
        ids: builtins.list[str] = self.redis.zrangebyscore(keys.PARKED_INDEX, "-inf", when, start=0, num=limit)  # type: ignore[assignment]
        # ZREM answers 1 to one caller only. A job parked again meanwhile, for later, loses
        # that entry and runs early: its step then finds it must still wait, and parks again.
        return [job_id for job_id in ids if self.redis.zrem(keys.PARKED_INDEX, job_id)]

    def task_owners(self, provider: str, task_ids: Sequence[str]) -> dict[str, str]:
        """The job each of `task_ids` was recorded by, for those recorded at all."""
        if not task_ids:
            return {}
        owners: list[str | None] = self.redis.mget([task_claim_key(provider, t) for t in task_ids])  # type: ignore[assignment]
        return {t: o for t, o in zip(task_ids, owners, strict=True) if o}

    def count_by_status(self) -> dict[str, int]:
        """How many jobs are in each status."""
        pipe = self.redis.pipeline()
        for status in JobStatus:
            pipe.zcard(status_index(status))
        return dict(zip([s.value for s in JobStatus], pipe.execute(), strict=True))

    def update(self, job_id: str, mutate: Mutation) -> JobRecord | None:
        """Compare-and-set: apply `mutate` to the current record and store what it returns.

        Returns the stored record, or None when the job is unknown or `mutate` declined.
        The record is stored by one script call (videoqueue.movescript) only if it is still
        the one `mutate` saw; else `mutate` runs again on the current record. Everything
        below that happens "with the move" is written by that same script, atomically.
        A record that takes a provider task id claims the task for this job with the move;
        raises TaskClaimedError, storing nothing, when another job holds it. A change of status
        must be a move of the lifecycle table (videoqueue.lifecycle): raises
        IllegalTransitionError, storing nothing, for any other. A move to a final status
        runs the final-move hooks (videoqueue.final_hooks: ledger, budgets, limit slot,
        counters, waiting room) with the move. A change of status appends its event to the
        event stream (videoqueue.events) with the move. A move that frees a slot of the
        model (`frees_slot`) frees it with the move and then calls
        `on_slot_freed`, whose errors are logged, never raised (the sweep admits later).
        A change that records what must survive a failover (`durable_write`) then waits
        for a replica (`ReplicaWait.after_write`, which raises redis.RedisError when the
        primary is gone: the change may or may not have survived, and the caller's step,
        idempotent, runs again). A move to a final status then calls `on_final`, whose
        errors are logged too.
        """
        key = job_key(job_id)
        # Start from the record this thread just read or stored, if any (a step reads its
        # job, then moves it): the script's compare-and-set tells if it is still current.
        # It is kept parsed beside its JSON, so that it is not read from JSON again.
        seen = self._records_seen().get(job_id)
        raw = seen[1] if seen else None
        verified = raw is None
        if raw is None:
            raw = self.redis.get(key)  # type: ignore[assignment]
        while raw:
            current = seen[0] if seen is not None and raw == seen[1] else JobRecord.from_store_json(raw, job_id)
            changed = mutate(working_copy(current))
            moves = changed is not None and changed.status is not current.status
            if changed is None or (moves and not lifecycle.allowed(current.status, changed.status)):
                if not verified:
                    # Declined (or refused) on a remembered record, which may be stale:
                    # decide on the stored one.
                    fresh: str | None = self.redis.get(key)  # type: ignore[assignment]
                    verified = True
                    if fresh != raw:
                        raw = fresh
                        continue
                if changed is None:
                    self._saw(current, raw)
                    return None
            lifecycle.check(current.status, changed.status)
            move = _Move.of(self.redis, current, changed, self.events_maxlen)
            code, carried = move_reply(changed, self._move(keys=[key], args=move.args(raw, job_id)))
            if code == CHANGED:
                raw = carried  # moved on meanwhile: compute the move again from what it is now
                verified = True
                continue
            if code != STORED:
                self._forget(job_id)
                return None
            self._saw(working_copy(changed), move.stored_raw)  # `changed` is the caller's to edit
            self._after_update(changed, freed=move.freed, durable=durable_write(current, changed), ended=move.ends)
            deliveries = list(move.deliveries)
            if move.ends and changed.batch_id and self.on_deliveries is not None:
                # The last job's move made its batch's deliveries due: send them now.
                deliveries += batches.finished_deliveries(self.redis, changed.batch_id)
            if deliveries and self.on_deliveries is not None:
                try:
                    self.on_deliveries(deliveries)
                except Exception:
                    log.exception("sending deliveries after a move", extra={"job_id": job_id})
            return changed
        self._forget(job_id)
        return None

    def _records_seen(self) -> dict[str, tuple[JobRecord, str]]:
        seen: dict[str, tuple[JobRecord, str]] | None = getattr(self._seen, "records", None)
        if seen is None or len(seen) >= _SEEN_MAX:
            seen = self._seen.records = {}
        return seen

    def _saw(self, record: JobRecord, raw: str) -> None:
        """Remember the last record this thread read or stored of a job (and its JSON as
        stored), for `last_seen` and as where the next `update` starts: `record` must be
        what `raw` reads back as (`JobRecord.from_store_json`) and nobody else's to edit."""
        self._records_seen()[record.id] = (record, raw)

    def _forget(self, job_id: str) -> None:
        self._records_seen().pop(job_id, None)

    def last_seen(self, job_id: str) -> JobRecord | None:
        """The record of `job_id` as this thread last read (`get`, `update`) or stored it,
        taken out of the memory; None when this thread has not seen it since. What a task
        reports to Flower after its step (no second read: the step has just seen the job).
        A task calls it before its step too, so that a step starts from a fresh read."""
        entry = self._records_seen().pop(job_id, None)
        return entry[0] if entry else None

    def _after_update(self, stored: JobRecord, *, freed: bool, durable: str | None, ended: bool) -> None:
        """What follows a stored change, outside its transaction: admission when a slot was
        freed, the replica wait of a durable write, the final-move callback."""
        if freed and self.on_slot_freed is not None:
            try:
                self.on_slot_freed(stored.provider, stored.model)
            except Exception:
                log.exception("admission after a freed slot failed", extra={"job_id": stored.id})
        if durable is not None:
            self.replicas.after_write(durable, stored.id)
        if ended and self.on_final is not None:
            try:
                self.on_final(stored)
            except Exception:
                log.exception("after a final move", extra={"job_id": stored.id})

    def transition(
        self,
        job_id: str,
        allowed_from: Iterable[JobStatus],
        to: JobStatus,
        **changes: Any,
    ) -> JobRecord | None:
        """Move a job to `to` only if it is now in one of `allowed_from`, setting `changes`;
        returns the stored record, or None when the job is unknown or in another status.

        `allowed_from` is `lifecycle.sources(to)` for "wherever the move is allowed from",
        or a narrower set: a step's compare-and-set on its own state. Raises
        IllegalTransitionError, before reading the job, when the lifecycle table allows no
        move from one of them to `to`."""
        return self.update(job_id, transition(allowed_from, to, **changes))


def transition(allowed_from: Iterable[JobStatus], to: JobStatus, **changes: Any) -> Mutation:
    """The mutation of `JobStore.transition`: a move to `to` from one of `allowed_from`
    setting `changes`, declined from any other status. Raises IllegalTransitionError at
    once when the lifecycle table allows no move from one of them to `to`."""
    allowed = lifecycle.check_sources(allowed_from, to)

    def mutate(record: JobRecord) -> JobRecord | None:
        if record.status not in allowed:
            return None
        updated = record.model_copy(update={**changes, "status": to})
        if to.is_final and updated.finished_at is None:
            updated.finished_at = utcnow()
        return updated

    return mutate
