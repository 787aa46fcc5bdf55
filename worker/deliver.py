"""One attempt at a delivery (videoqueue.webhooks): claim it, POST the webhook or send the
completion task, record the outcome and, for a webhook that may succeed later, when to try
again.

An attempt is claimed in the job's delivery record first (WATCH/MULTI on its hash: the
attempt counted and a lease set), so two copies of the task, or the sweep's and the
worker's, never make one attempt twice at once; the outcome is recorded only if the record
is still the one claimed (a replay meanwhile wins). Retries follow WEBHOOK_RETRY_SCHEDULE_S
(Svix's schedule by default): after a timeout, a connection error, a 429 or a 5xx; any
other answer from 300 up ends the delivery `failed`. A wait within COUNTDOWN_HORIZON_S is
a countdown message; a longer one waits in the delivery index, which the sweep reads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from videoqueue import batches, keys, webhooks
from videoqueue.job import TASK_DELIVER
from videoqueue.settings import Settings
from videoqueue.urlguard import FetchLimits, ForbiddenURLError, URLFetchError, URLStatusError, open_url
from videoqueue.webhooks import DELIVERY_GRACE_S, Delivery

log = logging.getLogger("videoqueue.webhooks")

LEASE_MARGIN_S = 30.0
"""An attempt's lease outlasts its POST's deadline by this much."""

SendTask = Callable[..., Any]
"""Celery's `app.send_task(name, args=..., queue=..., task_id=..., countdown=...)`."""


@dataclass(frozen=True)
class Outcome:
    """What one attempt did: `state` after it (videoqueue.webhooks.DeliveryState, or
    "skipped" when there was nothing to attempt now), the HTTP status, the error, and the
    wait (s) before the next attempt, if one is due."""

    state: str
    code: int | None = None
    error: str | None = None
    retry_in: float | None = None
    counted: bool = True
    """False: no attempt was made (this worker cannot sign): it does not count."""


def retryable(code: int | None) -> bool:
    """Whether an answer (None: no answer, a timeout or a connection error) is worth
    another attempt: none, 429 or 5xx."""
    return code is None or code == 429 or code >= 500


def claim(client: redis.Redis, delivery_id: str, lease_s: float, now: float) -> tuple[Delivery, str] | None:
    """Count an attempt of `delivery_id` and lease it for `lease_s`, returning it with its
    body; None when there is nothing to attempt now: unknown (expired), done, leased by
    another attempt, or its retry not yet due (the index keeps when)."""
    name = keys.deliveries_key(webhooks.job_of(delivery_id))
    pipe: Any
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(name)
                raw, body = pipe.hmget(name, [delivery_id, f"{delivery_id}:body"])
                if raw is None or body is None:
                    pipe.multi()
                    pipe.zrem(keys.DELIVERIES_DUE, delivery_id)
                    pipe.execute()
                    return None
                delivery = Delivery.model_validate_json(raw)
                if body == "":  # a batch's: made when sent, once the batch has ended
                    body = batches.delivery_body(client, delivery.kind, delivery.job_id)
                    if body is None:
                        pipe.unwatch()
                        return None
                busy = delivery.lease_until is not None and delivery.lease_until > now
                early = delivery.next_at is not None and delivery.next_at > now + 1.0
                if delivery.state != "pending" or busy or early:
                    pipe.unwatch()
                    if delivery.state != "pending":
                        client.zrem(keys.DELIVERIES_DUE, delivery_id)
                    return None
                claimed = delivery.model_copy(
                    update={"attempts": delivery.attempts + 1, "lease_until": now + lease_s, "next_at": None}
                )
                pipe.multi()
                pipe.hset(name, delivery_id, claimed.to_json())
                # Lost with its worker, the attempt is the sweep's once the lease ends.
                pipe.zadd(keys.DELIVERIES_DUE, {delivery_id: now + lease_s + DELIVERY_GRACE_S})
                pipe.execute()
                return claimed, str(body)
            except redis.WatchError:
                continue


def record(client: redis.Redis, claimed: Delivery, outcome: Outcome, now: float, horizon_s: float) -> bool:
    """Store the outcome of the attempt `claimed` made, if the record still holds that
    attempt (not replayed meanwhile); returns whether it was stored. A retry due within
    `horizon_s` (COUNTDOWN_HORIZON_S) goes as a countdown message: the index keeps it a
    grace longer, for a message lost with its worker; a later one is the sweep's to send,
    when due."""
    name = keys.deliveries_key(claimed.job_id)
    update: dict[str, Any] = {"lease_until": None, "last_code": outcome.code, "last_error": outcome.error}
    if not outcome.counted:
        update["attempts"] = claimed.attempts - 1
    if outcome.state == "delivered":
        update |= {"state": "delivered", "delivered_at": now}
    elif outcome.retry_in is not None:
        update["next_at"] = now + outcome.retry_in
    else:
        update["state"] = "failed"
    after = claimed.model_copy(update=update)
    pipe: Any
    with client.pipeline() as pipe:
        try:
            pipe.watch(name)
            raw = pipe.hget(name, claimed.id)
            if raw is None or Delivery.model_validate_json(raw) != claimed:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.hset(name, claimed.id, after.to_json())
            if after.state == "pending" and after.next_at is not None:
                counted_down = outcome.retry_in is not None and outcome.retry_in <= horizon_s
                grace = DELIVERY_GRACE_S if counted_down else 0.0
                pipe.zadd(keys.DELIVERIES_DUE, {claimed.id: after.next_at + grace})
            else:
                pipe.zrem(keys.DELIVERIES_DUE, claimed.id)
            pipe.execute()
            return True
        except redis.WatchError:
            return False


def post(delivery: Delivery, body: str, settings: Settings) -> tuple[int | None, str | None]:
    """POST a webhook through the URL guard (the addresses it checked at submit, checked
    again, connected to as checked; no redirect followed), signed with every secret of
    WEBHOOK_SECRET. Returns (HTTP status or None, error or None)."""
    if settings.webhook_secret is None:
        return None, "WEBHOOK_SECRET is not set on this worker"
    payload = body.encode()
    headers = webhooks.sign(webhooks.secrets_of(settings.webhook_secret), delivery.id, payload)
    headers["user-agent"] = "videoqueue-webhooks"
    limits = FetchLimits(max_bytes=64 * 1024, timeout_s=settings.webhook_timeout_s, max_redirects=0)
    try:
        with open_url(
            delivery.target, webhooks.allow_list(settings), limits, method="POST", headers=headers, body=payload
        ) as response:
            return response.status, None
    except URLStatusError as exc:
        return exc.status, f"answered HTTP {exc.status}"
    except ForbiddenURLError as exc:
        return 0, str(exc)  # a redirect, or an address refused: not worth retrying
    except URLFetchError as exc:
        return None, str(exc)


def attempt(
    client: redis.Redis,
    delivery_id: str,
    settings: Settings,
    send_task: SendTask,
    now: Callable[[], float] = time.time,
) -> Outcome:
    """Make one attempt at `delivery_id` if one is due (`claim`), record its outcome, and
    send the next attempt when it is due within COUNTDOWN_HORIZON_S (later ones wait in the
    delivery index for the sweep). `send_task` sends Celery messages (completion tasks, and
    the next attempt as TASK_DELIVER)."""
    lease = settings.webhook_timeout_s + LEASE_MARGIN_S
    claimed = claim(client, delivery_id, lease, now())
    if claimed is None:
        return Outcome("skipped")
    delivery, body = claimed
    if delivery.kind == "task":
        outcome = _send_completion(delivery, body, send_task)
    elif settings.webhook_secret is None:
        # Not this worker's to make (it could not sign): uncounted, again a grace later,
        # when a worker that can may take it.
        log.error(
            "webhook not sent: WEBHOOK_SECRET is not set on this worker",
            extra={"job_id": delivery.job_id, "delivery_id": delivery.id},
        )
        outcome = Outcome(
            "pending",
            error="WEBHOOK_SECRET is not set on the worker that took it",
            retry_in=DELIVERY_GRACE_S,
            counted=False,
        )
    else:
        code, error = post(delivery, body, settings)
        outcome = _webhook_outcome(delivery, code, error, settings.webhook_retry_schedule_s)
    stored = record(client, delivery, outcome, now(), settings.countdown_horizon_s)
    log.info(
        "delivery attempted",
        extra={
            "job_id": delivery.job_id,
            "delivery_id": delivery.id,
            "attempt": delivery.attempts,
            "state": outcome.state,
            "code": outcome.code,
            "error": outcome.error,
        },
    )
    if stored and outcome.retry_in is not None and outcome.retry_in <= settings.countdown_horizon_s:
        # As every countdown the steps send: none, or at least a second (RabbitMQ's delayed
        # delivery counts whole seconds).
        countdown = max(1.0, outcome.retry_in) if outcome.retry_in > 0 else None
        send_task(TASK_DELIVER, args=[delivery.id], countdown=countdown)
    return outcome


def _webhook_outcome(delivery: Delivery, code: int | None, error: str | None, schedule: list[float]) -> Outcome:
    if code is not None and 200 <= code < 300:
        return Outcome("delivered", code=code)
    if code == 0 or not retryable(code):
        return Outcome("failed", code=code or None, error=error)
    # schedule[0] is the first attempt's (at once); after attempt n the next waits schedule[n].
    if delivery.attempts < len(schedule):
        return Outcome("pending", code=code, error=error, retry_in=schedule[delivery.attempts])
    return Outcome("failed", code=code, error=error)


def _send_completion(delivery: Delivery, body: str, send_task: SendTask) -> Outcome:
    try:
        queue = delivery.queue or webhooks.DEFAULT_TASK_QUEUE
        send_task(delivery.target, args=[json.loads(body)], queue=queue, task_id=delivery.id)
    except Exception as exc:  # noqa: BLE001 - whatever the broker raised, the sweep tries again
        # The broker refused: again at the sweep's next look (the index keeps it due).
        return Outcome("pending", error=f"{type(exc).__name__}: {exc}", retry_in=DELIVERY_GRACE_S)
    return Outcome("delivered")


def send_due(client: redis.Redis, send_task: SendTask, now: float, limit: int = 1000) -> list[str]:
    """The sweep's part: send the task of every delivery the index says is overdue (owed
    and never sent, a lost attempt, a retry beyond the countdown horizon), each moved on
    DELIVERY_GRACE_S in the index so the next sweep does not send it again meanwhile.
    Returns their ids."""
    due: list[str] = client.zrangebyscore(keys.DELIVERIES_DUE, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
    if not due:
        return []
    client.zadd(keys.DELIVERIES_DUE, dict.fromkeys(due, now + DELIVERY_GRACE_S), xx=True)
    for delivery_id in due:
        send_task(TASK_DELIVER, args=[delivery_id])
    return due
