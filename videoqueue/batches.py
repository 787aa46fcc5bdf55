"""Batches: jobs submitted together and followed as one (`VideoQueue.submit_batch`).

A batch is one Redis hash (`keys.batch_key`) written in the transaction that stores its
jobs (`jobstore.create`: all or nothing) and kept up to date by its jobs' own moves: each
job record carries its `batch_id`, and the move script of every status change of such a job
(videoqueue.jobstore `_Move.of`, `on_move` here) also moves the batch's counts by status
(HINCRBY `n:<status>`), adds at the job's first end what it was charged (HINCRBY `actual`,
micro-dollars, as the fleet counters: videoqueue.stats) and counts it out of `open`. The
count of open jobs is the signal of the end: the script's `VQ.HINCRBY-THEN`
(`movescript.Writes.hincrby_then`) runs the batch's end writes only in the move that takes
`open` to 0: `finished_at`, the `batch.completed` entry in the event stream
(videoqueue.events, a `BatchEvent`), the batch's deliveries made due (videoqueue.webhooks:
its webhook and completion task were written, pending and not indexed, with the batch) and
the expiry of the batch JOB_RETENTION_S later. A step run twice loses its compare-and-set
and counts nothing; a job reopened by `store retry` counts back into `open` (its end then
stamps `finished_at` again, the deliveries are not sent twice).

The delivery bodies are made when sent (`delivery_body`): the batch as it stands then, which
is final once `finished_at` is set.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

from videoqueue import keys, namespace, retention, webhooks
from videoqueue.budget import from_micro, to_micro
from videoqueue.errors import JobStoreError
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.movescript import Writes

ID_PREFIX = "batch-"
"""What every batch id starts with (job ids are bare uuids: the two never mix)."""

EVENT_TYPE = "batch.completed"
"""The type of a batch's webhook and of its event in the stream."""

WEBHOOK_EVENTS = ("completed",)
"""The events a batch's webhook may ask for."""


@dataclass(frozen=True)
class BatchOptions:
    """What `submit_batch` takes besides the requests: a name and tags for people, the
    batch's completion task (`on_complete`, on `on_complete_queue`) and webhook
    (`webhook_url`, for `webhook_events` among WEBHOOK_EVENTS), as a job's request takes."""

    name: str = ""
    tags: Sequence[str] = ()
    on_complete: str | None = None
    on_complete_queue: str | None = None
    webhook_url: str | None = None
    webhook_events: Sequence[str] = WEBHOOK_EVENTS


class UnknownBatchError(JobStoreError, KeyError):
    """No batch has this id (or prefix) in this deployment, or several share the prefix
    (`candidates`)."""

    def __init__(self, ref: str, candidates: Sequence[str] = ()) -> None:
        self.ref, self.candidates = ref, list(candidates)
        more = f": matches {', '.join(sorted(candidates))}; give more characters" if candidates else ""
        super().__init__(f"unknown batch id {ref!r}{more} (in namespace {namespace.current()!r})")

    def __str__(self) -> str:
        return str(self.args[0])


def new_id() -> str:
    """A new batch id: `batch-` and a uuid4."""
    return f"{ID_PREFIX}{uuid.uuid4()}"


def is_batch_id(ref: str) -> bool:
    """True when `ref` is (a prefix of) a batch id rather than a job's."""
    return ref.lower().startswith(ID_PREFIX)


class Batch(BaseModel):
    """A batch as stored and as users see it: its jobs in submit order, how many are in
    each status now (`counts`, every status present), the sum of their estimates and what
    its ended jobs were charged so far (USD), when it was created and when its last job
    ended (None while any is active). `on_complete`/`webhook_url` as a job's request."""

    id: str
    name: str = ""
    tags: list[str] = Field(default_factory=list)
    job_ids: list[str] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    cost_estimate_usd: Decimal = Decimal(0)
    cost_usd: Decimal = Decimal(0)
    created_at: datetime
    finished_at: datetime | None = None
    on_complete: str | None = None
    on_complete_queue: str | None = None
    webhook_url: str | None = None

    @property
    def size(self) -> int:
        """How many jobs the batch holds."""
        return len(self.job_ids)

    @property
    def ended(self) -> int:
        """How many of its jobs are in a final status."""
        return sum(n for status, n in self.counts.items() if JobStatus(status).is_final)

    @property
    def done(self) -> bool:
        """True once its last job ended."""
        return self.finished_at is not None

    def public_dict(self) -> dict[str, Any]:
        """The batch as JSON-ready data (CLI `--json`, webhook `data`, completion task)."""
        data = self.model_dump(mode="json")
        data["cost_estimate_usd"] = float(self.cost_estimate_usd)
        data["cost_usd"] = float(self.cost_usd)
        data["size"] = self.size
        data["ended"] = self.ended
        return data


def _meta(batch: Batch) -> str:
    return batch.model_dump_json(include={"id", "name", "tags", "job_ids", "cost_estimate_usd", "created_at"})


def _extras(batch: Batch) -> str:
    return json.dumps(
        {
            "on_complete": batch.on_complete,
            "on_complete_queue": batch.on_complete_queue,
            "webhook_url": batch.webhook_url,
        }
    )


def create(pipe: Any, batch: Batch, records: Sequence[JobRecord]) -> None:
    """Queue, inside the MULTI of `jobstore.create`, the batch record of `records` (the
    jobs stored new; their `batch_id` is the batch's), its index entry and its deliveries
    (pending, not yet due: the last job's move makes them due)."""
    name = keys.batch_key(batch.id)
    fields: dict[str, Any] = {
        "meta": _meta(batch),
        "extras": _extras(batch),
        "open": len(records),
        "actual": 0,
        f"n:{JobStatus.QUEUED.value}": len(records),
    }
    pipe.hset(name, mapping=fields)
    pipe.zadd(keys.BATCH_INDEX, {batch.id: batch.created_at.timestamp()})
    for delivery in webhooks.batch_deliveries(batch):
        pipe.hset(keys.deliveries_key(batch.id), mapping={delivery.id: delivery.to_json(), f"{delivery.id}:body": ""})


def delivery_ids(batch_id: str) -> list[str]:
    """The ids a batch's deliveries may have (its webhook's, its completion task's)."""
    return [f"{batch_id}:completed", f"{batch_id}:{webhooks.TASK_SUFFIX}"]


def on_move(before: JobRecord, after: JobRecord, events_maxlen: int) -> Callable[[Any], None] | None:
    """The writes a move of a batch's job owes its batch (see the module), or None for a
    job of no batch or a move that changes nothing the batch counts."""
    batch_id = after.batch_id
    if batch_id is None or after.status == before.status:
        return None
    name = keys.batch_key(batch_id)
    ends = after.status.is_final and not before.status.is_final
    reopens = before.status.is_final and not after.status.is_final
    charged = after.charged_usd if ends and before.settled_at is None else None

    def write(multi: Any) -> None:
        multi.hincrby(name, f"n:{before.status.value}", -1)
        multi.hincrby(name, f"n:{after.status.value}", 1)
        if charged:
            multi.hincrby(name, "actual", to_micro(charged))
        if reopens:  # `store retry`: the batch is open again until this job ends again
            multi.hincrby(name, "open", 1)
            multi.hset(name, "finished_at", "")
        if ends:
            multi.hincrby_then(name, "open", -1, end_writes(batch_id, after.updated_at, events_maxlen))

    return write


def withdraw(pipe: Any, record: JobRecord) -> None:
    """Queue the counting out of its batch of an active job withdrawn (`JobStore.delete`:
    its message could not be sent). A batch left with no job is `drop`ped by the caller."""
    name = keys.batch_key(str(record.batch_id))
    pipe.hincrby(name, f"n:{record.status.value}", -1)
    pipe.hincrby(name, "open", -1)


def drop(client: Any, batch_id: str) -> None:
    """Delete a batch none of whose jobs was enqueued (its record, index entry, deliveries)."""
    pipe = client.pipeline()
    pipe.delete(keys.batch_key(batch_id), keys.deliveries_key(batch_id))
    pipe.zrem(keys.BATCH_INDEX, batch_id)
    pipe.execute()


def end_writes(batch_id: str, at: datetime, events_maxlen: int) -> Writes:
    """The writes of a batch's end, made by the move of its last job (`on_move`)."""
    name = keys.batch_key(batch_id)
    then = Writes()
    then.hset(name, "finished_at", f"{at.timestamp():.3f}")
    then.xadd(keys.EVENTS_STREAM, {"b": batch_id, "s": EVENT_TYPE, "t": f"{at.timestamp():.3f}"}, maxlen=events_maxlen)
    due = time.time() + webhooks.DELIVERY_GRACE_S
    then.zadd(keys.DELIVERIES_DUE, dict.fromkeys(delivery_ids(batch_id), due), nx=True)
    seconds = retention.retention_s()
    if seconds > 0:
        then.expire(name, seconds)
        then.expire(keys.deliveries_key(batch_id), seconds)
    return then


def parse(raw: dict[str, str]) -> Batch | None:
    """The batch of a batch hash's fields (HGETALL), None when empty (unknown, expired)."""
    if not raw or "meta" not in raw:
        return None
    batch = Batch.model_validate_json(raw["meta"])
    extras = json.loads(raw.get("extras") or "{}")
    counts = {status.value: 0 for status in JobStatus}
    for field, value in raw.items():
        if field.startswith("n:") and field[2:] in counts:
            counts[field[2:]] = int(value)
    finished = raw.get("finished_at")
    return batch.model_copy(
        update={
            **extras,
            "counts": counts,
            "cost_usd": from_micro(raw.get("actual")),
            "finished_at": datetime.fromtimestamp(float(finished), UTC) if finished else None,
        }
    )


def text(value: Any) -> str:
    """A reply's value as text (str or bytes clients)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def read(client: Any, batch_id: str) -> Batch | None:
    """The batch `batch_id` as stored now, or None (sync client)."""
    raw = client.hgetall(keys.batch_key(batch_id))
    return parse({text(k): text(v) for k, v in raw.items()})


def newest_ids(client: Any, limit: int) -> list[str]:
    """The ids of the `limit` newest batches, newest first (sync client)."""
    return [text(b) for b in client.zrevrange(keys.BATCH_INDEX, 0, max(limit, 1) - 1)]


def ids_starting_with(client: Any, prefix: str, limit: int = 6) -> list[str]:
    """Up to `limit` batch ids starting with `prefix` (a ZSCAN of the batch index)."""
    found: list[str] = []
    for member, _score in client.zscan_iter(keys.BATCH_INDEX, match=prefix.replace("*", r"\*") + "*", count=1000):
        batch_id = text(member)
        if batch_id not in found:
            found.append(batch_id)
        if len(found) >= limit:
            break
    return found


def finished_deliveries(client: Any, batch_id: str) -> list[str]:
    """After a job of batch `batch_id` ended: the ids of the batch's deliveries to send now
    if the batch has ended (one HMGET), else none. Several workers may find it ended: a
    delivery's claim makes one attempt of it (worker.deliver)."""
    finished, extras = client.hmget(keys.batch_key(batch_id), ["finished_at", "extras"])
    return owed_when_finished(batch_id, finished, extras)


def owed_when_finished(batch_id: str, finished: Any, extras: Any) -> list[str]:
    """`finished_deliveries` from the batch's `finished_at` and `extras` fields as read
    (an asyncio reader reads them itself)."""
    if not finished or not extras:
        return []
    asked = json.loads(text(extras))
    ids = delivery_ids(batch_id)
    return [ids[0]] * bool(asked.get("webhook_url")) + [ids[1]] * bool(asked.get("on_complete"))


def delivery_body(client: Any, kind: str, batch_id: str) -> str | None:
    """The body of a batch delivery made when sent: the webhook's event `{"type":
    "batch.completed", "timestamp", "data": the batch}` or the completion task's argument
    (the batch); None while the batch has not ended (or is gone)."""
    batch = read(client, batch_id)
    if batch is None or batch.finished_at is None:
        return None
    data = batch.public_dict()
    body: Any = data
    if kind == "webhook":
        body = {"type": EVENT_TYPE, "timestamp": batch.finished_at.isoformat(), "data": data}
    return json.dumps(body, separators=(",", ":"))


def now_batch(
    batch_id: str,
    name: str,
    tags: Sequence[str],
    records: Sequence[JobRecord],
    *,
    on_complete: str | None = None,
    on_complete_queue: str | None = None,
    webhook_url: str | None = None,
) -> Batch:
    """A new batch of `records` (their estimates summed), created now."""
    return Batch(
        id=batch_id,
        name=name,
        tags=list(tags),
        job_ids=[r.id for r in records],
        counts={JobStatus.QUEUED.value: len(records)},
        cost_estimate_usd=sum((r.cost_estimate_usd or Decimal(0) for r in records), Decimal(0)),
        created_at=utcnow(),
        on_complete=on_complete,
        on_complete_queue=on_complete_queue,
        webhook_url=webhook_url,
    )
