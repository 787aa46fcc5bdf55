"""A Celery app for producers: it only sends messages by task name and imports no worker
code, so a producer needs celery and pydantic, not the provider SDKs or boto3."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from videoqueue import namespace
from videoqueue.brokertls import broker_use_ssl
from videoqueue.queues import AMQP_SETTINGS, celery_conf, is_amqp


def producer_app(broker_url: str) -> Celery:
    """A Celery app that sends to `broker_url`, into the queues of the current namespace,
    with the shared settings of videoqueue/celeryconfig.py."""
    return _producer_app(broker_url, namespace.current())


@lru_cache(maxsize=8)
def _producer_app(broker_url: str, name: str) -> Celery:
    app = Celery("videoqueue-producer")
    app.config_from_object("videoqueue.celeryconfig")
    # The queues must be declared as the workers on this broker declare them.
    with namespace.using(name):
        app.conf.update(broker_url=broker_url, **celery_conf(broker_url))
    if is_amqp(broker_url):
        app.conf.update(AMQP_SETTINGS)
    # rediss://: verify the server's certificate, as the job store's client does.
    app.conf.broker_use_ssl = broker_use_ssl(broker_url) or False
    return app
