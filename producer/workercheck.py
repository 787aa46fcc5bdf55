"""Is any worker consuming the submit queue? `videoqueue submit` asks after enqueueing, so a
job that would sit `queued` with nobody to take it says so (seen after `make demo`, which
stops its worker).

How: a Celery remote-control broadcast (`active_queues`) over the broker the jobs were sent
to, the same channel `celery inspect active_queues` uses. Every running worker answers with
the queues it consumes, whatever its pool, and a worker that died answers nothing, so the
answer is about now (a registry key or a queue binding can outlive a `kill -9`). The
broadcast stops at the first worker that consumes the queue (milliseconds on a local
broker); only when none does does it wait the whole timeout (1 s), which is when the
warning is worth the second."""

from __future__ import annotations

import contextlib
from typing import Any

from celery import Celery

from videoqueue.job import TASK_SUBMIT

CHECK_TIMEOUT_S = 1.0


class _Found(Exception):
    """Raised from the reply callback to stop waiting for further replies."""


def submit_queue(app: Celery) -> str:
    """The queue `app` sends the submit task to."""
    route = app.amqp.router.route({}, TASK_SUBMIT)
    return str(route["queue"].name)


def consumers(app: Celery, queue: str, timeout: float = CHECK_TIMEOUT_S) -> list[str]:
    """Names of the workers that answer, within `timeout` seconds, that they consume
    `queue`; at most the first one found. Broker errors propagate."""
    found: list[str] = []

    def on_reply(reply: dict[str, Any]) -> None:
        for worker, queues in reply.items():
            if any(isinstance(q, dict) and q.get("name") == queue for q in queues or ()):
                found.append(worker)
        if found:
            raise _Found

    with contextlib.suppress(_Found):
        app.control.broadcast("active_queues", reply=True, timeout=timeout, callback=on_reply)
    return found


def no_worker_warning(app: Celery, timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """One line for people when no worker consumes the submit queue, else None. A failed
    check says nothing: the jobs were enqueued, and a broker hiccup is no reason to alarm."""
    queue = submit_queue(app)
    try:
        if consumers(app, queue, timeout):
            return None
    except Exception:  # noqa: BLE001 - the check is advisory
        return None
    return (
        f"warning: no worker consumes {queue} on this broker; the jobs wait `queued` until one starts "
        "(`make stack`, or `celery -A worker worker`)"
    )
