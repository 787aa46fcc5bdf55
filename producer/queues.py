"""The three queues and how they are declared on each kind of broker. Producers and
workers must declare them identically (a broker refuses a second, different declaration),
so both build them here, from the broker URL in use."""

from __future__ import annotations

from kombu import Exchange, Queue

from producer.contract import QUEUE_POLL, QUEUE_STORE, QUEUE_SUBMIT

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
