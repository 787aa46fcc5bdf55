"""The three queues and how they are declared on each kind of broker. Producers and
workers must declare them identically (a broker refuses a second, different declaration),
so both build them here, from the broker URL in use."""

from __future__ import annotations

from dataclasses import dataclass

from kombu import Exchange, Queue

from producer.contract import QUEUE_POLL, QUEUE_STORE, QUEUE_SUBMIT
from producer.settings import Settings

QUEUES = (QUEUE_SUBMIT, QUEUE_POLL, QUEUE_STORE)


def is_amqp(broker_url: str) -> bool:
    """True for RabbitMQ URLs."""
    return broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


def task_queues(broker_url: str) -> tuple[Queue, ...]:
    """The queues for `broker_url`: on RabbitMQ quorum queues behind topic exchanges (what
    native delayed delivery binds to), on Redis plain direct ones."""
    if is_amqp(broker_url):
        return tuple(
            Queue(name, Exchange(name, type="topic"), routing_key=name, queue_arguments={"x-queue-type": "quorum"})
            for name in QUEUES
        )
    return tuple(Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES)


# A message's countdown plus the task it starts must end this long before the broker's
# visibility timeout, or the broker hands the held message to a second worker.
VISIBILITY_MARGIN_S = 60


@dataclass(frozen=True)
class BrokerTiming:
    """Time limits of a task and the visibility timeout of the Redis broker, derived from
    the settings in one place: celeryconfig.py configures Celery with them and the
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
