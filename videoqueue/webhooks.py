"""Telling producers of a job's moves: signed webhooks and the producer's completion task.

A request may carry a `webhook_url` (with its `webhook_events`, resolved.WEBHOOK_EVENTS) and
an `on_complete` task. The move that owes a notification writes it as a *delivery* into the
job's delivery record (`keys.deliveries_key`, a hash) and the delivery index
(`keys.DELIVERIES_DUE`), in the move's own script: an outbox, so a worker killed right after
the move loses nothing. After the move the worker sends one `videoqueue.deliver_webhook`
task per delivery on the `webhooks` queue (worker.deliver); the recovery sweep sends those
the index says are overdue. Each attempt is claimed in the record first (a lease), so two
copies of the task never make the same attempt at once; each writes its outcome there
(attempts, last status code, last error, delivered_at).

A webhook follows the Standard Webhooks specification (the `standardwebhooks` package
signs): headers `webhook-id` (the delivery id, `<job id>:<event>`, the same on every attempt
and replay, so receivers drop duplicates by it), `webhook-timestamp` (the attempt's time)
and `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, one per secret of
WEBHOOK_SECRET, space separated, for rotation); the body is JSON `{"type": "job.<event>",
"timestamp": the move's time (ISO 8601), "data": the job's public record as the move
stored it}`. The completion task is sent once, as `send_task(on_complete, args=[the public
record], queue=on_complete_queue or "celery", task_id="<job id>:on_complete")`; at least once in one
window: a worker that dies after sending it and before recording so sends it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from videoqueue import keys, retention
from videoqueue.errors import InvalidRequestError, RequestError
from videoqueue.job import JobRecord, JobStatus
from videoqueue.urlguard import AllowList, ForbiddenURLError, URLFetchError, resolve

if TYPE_CHECKING:
    from videoqueue.batches import Batch
    from videoqueue.resolved import ResolvedRequest
    from videoqueue.settings import Settings

DELIVERY_GRACE_S = 30.0
"""How long after a delivery was owed (or its retry was due) the sweep sends it itself, if
no worker's task has claimed it: the worker sends it at once, so this is only a crash's."""

TASK_SUFFIX = "on_complete"

DEFAULT_TASK_QUEUE = "celery"
"""Where a completion task goes when the request names no `on_complete_queue`: Celery's
own default queue, the one a producer's `celery worker` consumes unless told otherwise."""

DeliveryState = Literal["pending", "delivered", "failed"]


class UnknownDeliveryError(RequestError, LookupError):
    """A job with no delivery to replay (none asked for, or its record expired)."""


class Delivery(BaseModel):
    """One notification of one job: a webhook (`kind` "webhook": `target` the URL, `type`
    `job.<event>`) or the completion task (`kind` "task": `target` the task name, `queue`).
    Times are epoch seconds. `attempts` counts attempts made; `last_code` the last HTTP
    status (webhooks); `next_at` when a retry is due; `lease_until` the end of the attempt
    in progress."""

    id: str
    job_id: str
    kind: Literal["webhook", "task"]
    type: str
    target: str
    queue: str | None = None
    created_at: float
    state: DeliveryState = "pending"
    attempts: int = 0
    last_code: int | None = None
    last_error: str | None = None
    next_at: float | None = None
    lease_until: float | None = None
    delivered_at: float | None = None

    def to_json(self) -> str:
        """The delivery as the record holds it."""
        return self.model_dump_json(exclude_defaults=True)


# --- secrets and signing --------------------------------------------------------------------


def secrets_of(secret: SecretStr | str | Sequence[str]) -> list[str]:
    """The `whsec_` secrets of WEBHOOK_SECRET (comma separated) or of a list, each checked
    (ValueError naming its position, never its value)."""
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    items = [s.strip() for s in secret.split(",")] if isinstance(secret, str) else [s.strip() for s in secret]
    items = [s for s in items if s]
    if not items:
        raise ValueError("no secret given (whsec_ followed by base64)")
    for position, item in enumerate(items, 1):
        if not item.startswith("whsec_"):
            raise ValueError(f"secret {position} does not start with whsec_ (whsec_ followed by base64)")
        try:
            Webhook(item)
        except (ValueError, EmptyWebhookSecretError) as exc:  # binascii.Error is a ValueError
            raise ValueError(f"secret {position} is not whsec_ followed by base64 ({type(exc).__name__})") from None
    return items


def sign(secrets: Sequence[str], msg_id: str, body: bytes, at: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers of `body` sent as message `msg_id` at `at` (now): one
    `v1,` signature per secret, space separated."""
    when = at or datetime.now(UTC)
    signatures = " ".join(Webhook(secret).sign(msg_id, when, body) for secret in secrets)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
    }


# --- checks at submit -----------------------------------------------------------------------


EVERY_ADDRESS = "0.0.0.0/0,::/0"


def allow_list(settings: Settings) -> AllowList:
    """The addresses a webhook may reach besides public ones: all of them with
    WEBHOOK_ALLOW_PRIVATE (the URL guard still refuses cloud metadata), else none."""
    if settings.webhook_allow_private:
        return AllowList.parse(EVERY_ADDRESS)
    return AllowList()


def check_url(url: str, settings: Settings) -> str | None:
    """Why `url` may not receive webhooks, or None: https only unless WEBHOOK_ALLOW_HTTP;
    its host must resolve, and to no loopback, private or link-local address unless
    WEBHOOK_ALLOW_PRIVATE (the URL guard's rules; the worker's POST goes through the guard
    again, to the very address it checks)."""
    if not url.lower().startswith("https://") and not settings.webhook_allow_http:
        return f"{url} is not https:// (WEBHOOK_ALLOW_HTTP allows http://)"
    try:
        resolve(url, allow_list(settings))
    except ForbiddenURLError as exc:
        reason = str(exc).split(": not fetched", 1)[0]
        if not settings.webhook_allow_private and _allowed_if_private(url):
            return f"{reason}: no webhook goes there (WEBHOOK_ALLOW_PRIVATE allows private addresses)"
        return f"{reason}: no webhook goes there"
    except URLFetchError as exc:
        return str(exc)
    return None


def _allowed_if_private(url: str) -> bool:
    """Whether WEBHOOK_ALLOW_PRIVATE would let `url` through (not for cloud metadata, a bad
    port...): only then does a refusal name it."""
    try:
        resolve(url, AllowList.parse(EVERY_ADDRESS))
    except URLFetchError:
        return False
    return True


def check_request(request: ResolvedRequest, settings: Settings) -> None:
    """Refuse a request whose notifications cannot be sent (InvalidRequestError, before
    anything is stored): its webhook URL (`check_url`), or a webhook without WEBHOOK_SECRET."""
    if request.webhook_url is None:
        return
    problems: dict[str, str] = {}
    if settings.webhook_secret is None:
        problems["webhook_url"] = "WEBHOOK_SECRET is not set: deliveries could not be signed"
    else:
        why = check_url(request.webhook_url, settings)
        if why:
            problems["webhook_url"] = why
    if problems:
        raise InvalidRequestError(problems)


# --- what a move owes ------------------------------------------------------------------------


def event_of(before: JobRecord, after: JobRecord) -> str | None:
    """The event of a move (resolved.WEBHOOK_EVENTS), or None when the status stays."""
    if after.status == before.status:
        return None
    if after.status.is_final:
        return after.status.value if not before.status.is_final else None
    return "started" if after.status is JobStatus.RUNNING else "progress"


def planned(before: JobRecord, after: JobRecord) -> list[Delivery]:
    """The deliveries the move from `before` to `after` owes (their bodies: `owed`)."""
    request = after.request
    event = event_of(before, after)
    if event is None or (request.webhook_url is None and request.on_complete is None):
        return []
    now = time.time()
    out: list[Delivery] = []
    if request.webhook_url is not None and event in request.webhook_events:
        msg_id = f"{after.id}:{event}"
        if event == "progress":  # one per move: the status it reached and when
            msg_id += f":{after.status.value}:{int(after.updated_at.timestamp() * 1_000_000)}"
        out.append(
            Delivery(
                id=msg_id,
                job_id=after.id,
                kind="webhook",
                type=f"job.{event}",
                target=request.webhook_url,
                created_at=now,
            )
        )
    if request.on_complete is not None and after.status.is_final:
        out.append(completion_task(after.id, request.on_complete, request.on_complete_queue, now))
    return out


def completion_task(owner: str, task: str, queue: str | None, now: float) -> Delivery:
    """The delivery of the completion task `task` (on `queue`) of a job or a batch (`owner`, its id)."""
    return Delivery(
        id=f"{owner}:{TASK_SUFFIX}", job_id=owner, kind="task", type=task, target=task, queue=queue, created_at=now
    )


def owed(before: JobRecord, after: JobRecord) -> list[tuple[Delivery, str]]:
    """The deliveries the move owes, each with its body: a webhook's event
    (`{"type", "timestamp", "data"}`), the completion task's argument (the public record)."""
    deliveries = planned(before, after)
    if not deliveries:
        return []
    record = after.public_dict()
    out: list[tuple[Delivery, str]] = []
    for delivery in deliveries:
        body: Any = record
        if delivery.kind == "webhook":
            body = {"type": delivery.type, "timestamp": after.updated_at.isoformat(), "data": record}
        out.append((delivery, json.dumps(body, separators=(",", ":"))))
    return out


def owed_ids(before: JobRecord, after: JobRecord) -> list[str]:
    """The ids of the deliveries the move owes (what the worker sends after it)."""
    return [delivery.id for delivery in planned(before, after)]


def queue_owed(multi: Any, deliveries: list[tuple[Delivery, str]], final: bool) -> None:
    """Queue, with the move, the deliveries it owes: each written once (HSETNX: a job that
    ends twice in one status is not told twice; `replay` is how to ask again), indexed for
    the sweep DELIVERY_GRACE_S from now; the record expires with the job's after a final
    move."""
    if not deliveries:
        return
    job_id = deliveries[0][0].job_id
    name = keys.deliveries_key(job_id)
    for delivery, body in deliveries:
        multi.hsetnx(name, delivery.id, delivery.to_json())
        multi.hsetnx(name, f"{delivery.id}:body", body)
        multi.zadd(keys.DELIVERIES_DUE, {delivery.id: delivery.created_at + DELIVERY_GRACE_S}, nx=True)
    seconds = retention.retention_s() if final else 0
    if seconds > 0:
        multi.expire(name, seconds)


def on_status_change(before: JobRecord, after: JobRecord) -> Callable[[Any], None] | None:
    """The writes of the deliveries a move that is not an end owes (`started`, `progress`),
    or None; the final ones are a final-move hook (videoqueue.final_hooks.notifications)."""
    if after.status.is_final:
        return None
    deliveries = owed(before, after)
    if not deliveries:
        return None
    return lambda multi: queue_owed(multi, deliveries, final=False)


def batch_deliveries(batch: Batch) -> list[Delivery]:
    """The deliveries a batch asks for (`batch.completed` webhook, completion task), written
    with the batch and made due by its last job's move (videoqueue.batches); their bodies
    are made when sent (`batches.delivery_body`)."""
    now = time.time()
    out: list[Delivery] = []
    if batch.webhook_url is not None:
        out.append(
            Delivery(
                id=f"{batch.id}:completed",
                job_id=batch.id,
                kind="webhook",
                type="batch.completed",
                target=batch.webhook_url,
                created_at=now,
            )
        )
    if batch.on_complete is not None:
        out.append(completion_task(batch.id, batch.on_complete, batch.on_complete_queue, now))
    return out


def job_of(delivery_id: str) -> str:
    """The job id a delivery id starts with."""
    return delivery_id.partition(":")[0]


# --- reading and replaying -------------------------------------------------------------------


def deliveries(client: Any, job_id: str) -> list[Delivery]:
    """The deliveries of a job, oldest first (empty when none, or its record expired)."""
    raw: dict[str, str] = client.hgetall(keys.deliveries_key(job_id))
    found = [Delivery.model_validate_json(value) for name, value in raw.items() if not name.endswith(":body")]
    return sorted(found, key=lambda d: (d.created_at, d.id))


def replay(client: Any, job_id: str) -> Delivery:
    """Make the webhook of the job's end pending again, attempts reset, with the same
    `webhook-id`: the caller sends its task (`TASK_DELIVER`). Raises
    UnknownDeliveryError when the job has no such delivery."""
    name = keys.deliveries_key(job_id)
    ends = [
        d
        for d in deliveries(client, job_id)
        if d.kind == "webhook"
        and (d.type == "batch.completed" or d.type.removeprefix("job.") in {s.value for s in JobStatus if s.is_final})
    ]
    if not ends:
        raise UnknownDeliveryError(f"job {job_id} has no webhook of its end to replay (none was asked for, or expired)")
    last = ends[-1]
    now = time.time()
    again = last.model_copy(
        update={
            "state": "pending",
            "attempts": 0,
            "last_code": None,
            "last_error": None,
            "next_at": None,
            "lease_until": None,
            "delivered_at": None,
        }
    )
    pipe = client.pipeline()
    pipe.hset(name, last.id, again.to_json())
    pipe.zadd(keys.DELIVERIES_DUE, {last.id: now + DELIVERY_GRACE_S})
    pipe.execute()
    return again
