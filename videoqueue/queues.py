"""The three queues and how they are declared on each kind of broker. Producers and
workers must declare them identically (a broker refuses a second, different declaration),
so both build them here, from the broker URL in use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kombu import Exchange, Queue

from videoqueue import namespace
from videoqueue.job import (
    TASK_ADMIT,
    TASK_CANCEL,
    TASK_DELIVER,
    TASK_MOVIE_ADVANCE,
    TASK_POLL,
    TASK_STORE,
    TASK_SUBMIT,
    TASK_UNPARK,
)
from videoqueue.settings import Settings


def is_amqp(broker_url: str) -> bool:
    """True for RabbitMQ URLs."""
    return broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


AMQP_SETTINGS: dict[str, Any] = {
    "task_default_queue_type": "quorum",
    "task_default_exchange_type": "topic",
    "worker_detect_quorum_queues": True,
    "broker_transport_options": {"confirm_publish": True},
}
"""The Celery settings of a RabbitMQ broker, for workers (videoqueue/celeryconfig.py) and
producers (producer/celery_client.py) alike: quorum queues (replicated, durable) with Celery's
native delayed delivery, so a countdown message waits in the broker, not in a worker's
memory, and a killed worker strands nothing. Native delayed delivery routes through topic
exchanges; publisher confirms make a send return only once the broker has the message."""


WEBHOOKS = "webhooks"
"""The queue of deliveries (webhooks and completion tasks: videoqueue.webhooks), beside the
three step queues: `vq.webhooks`, `vq@N.webhooks`. Network waits like polls: a thread pool's."""


def consumed_queues(name: str | None = None) -> tuple[str, ...]:
    """Every queue a worker of namespace `name` (default: the current one) consumes unless
    told otherwise: the three step queues, then the deliveries' queue."""
    return (*namespace.queues(name), namespace.queue(WEBHOOKS, name))


def task_queues(broker_url: str) -> tuple[Queue, ...]:
    """The queues of the current namespace for `broker_url`: on RabbitMQ quorum queues
    behind topic exchanges (what native delayed delivery binds to), on Redis plain direct ones."""
    if is_amqp(broker_url):
        return tuple(
            Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
            for name in consumed_queues()
        )
    return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in consumed_queues())


_STEP_OF_TASK = {
    TASK_SUBMIT: "submit",
    TASK_CANCEL: "submit",
    TASK_ADMIT: "submit",
    TASK_POLL: "poll",
    TASK_UNPARK: "poll",
    TASK_STORE: "store",
    TASK_DELIVER: WEBHOOKS,
    TASK_MOVIE_ADVANCE: "store",
}


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict[str, str] | None:
    """Celery router: each task to its step's queue in the namespace current when it is sent."""
    step = _STEP_OF_TASK.get(name)
    return {"queue": namespace.queue(step)} if step else None


def celery_conf(broker_url: str) -> dict[str, Any]:
    """The Celery settings that depend on the current namespace: its queues, default queue,
    and control and event exchanges (Redis broker options: keys.broker_transport_options)."""
    return {
        "task_queues": task_queues(broker_url),
        "task_default_queue": namespace.queue("submit"),
        **namespace.celery_names(),
    }


def own_queues(selected: list[str]) -> tuple[list[str], list[str]]:
    """The queues a worker selected with -Q, as queues of the current namespace: a step's
    default name (`vq.submit`) means that step's queue here (`vq@N.submit`), so one command
    line (compose's WORKER_QUEUES, the README's) serves every namespace. Returns (the
    queues to consume, the names that belong to another namespace or to no step)."""
    own = consumed_queues()
    by_default_name = dict(zip(consumed_queues(namespace.DEFAULT), own, strict=True))
    mapped: list[str] = []
    foreign: list[str] = []
    for name in selected:
        if name in own:
            mapped.append(name)
        elif name in by_default_name:
            mapped.append(by_default_name[name])
        else:
            foreign.append(name)
    return mapped, foreign


# A message's countdown plus the task it starts must end this long before the broker's
# visibility timeout, or the broker hands the held message to a second worker.
VISIBILITY_MARGIN_S = 60


@dataclass(frozen=True)
class BrokerTiming:
    """Time limits of a task and the visibility timeout of the Redis broker, derived from
    the settings in one place: videoqueue/celeryconfig.py configures Celery with them and the
    pipeline bounds every countdown it schedules by `max_countdown_s`."""

    soft_time_limit_s: int
    time_limit_s: int
    visibility_timeout_s: int
    max_countdown_s: float


def broker_timing(settings: Settings) -> BrokerTiming:
    """The soft limit is one store lease (STORE_BUSY_S): it raises inside the task, and the
    store step counts it as a failed attempt. The hard limit, 300 s later, kills the pool
    child. On Redis a countdown message is delivered at once and held, unacknowledged,
    until due, so the visibility timeout must exceed the longest countdown plus the longest
    task: the longest countdown any step needs (RETRY_MAX_S, POLL_MAX_S, a submit lease and
    the second the submit step adds to it), plus the hard limit, plus a minute. Longer waits
    (a long Retry-After, a fleet-wide back-off) are not sent as countdowns but parked in
    the job store and sent when due."""
    soft = int(settings.store_busy_s)
    hard = soft + 300
    longest = max(settings.retry_max_s, settings.poll_max_s, settings.submit_lease_s + 1.0)
    visibility = int(longest + hard + VISIBILITY_MARGIN_S)
    return BrokerTiming(
        soft_time_limit_s=soft,
        time_limit_s=hard,
        visibility_timeout_s=visibility,
        max_countdown_s=float(visibility - hard - VISIBILITY_MARGIN_S),
    )
