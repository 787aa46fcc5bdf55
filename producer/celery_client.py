"""A Celery app for producers: it only sends messages by task name and imports no worker
code, so a producer needs celery and pydantic, not the provider SDKs or boto3."""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from celery import Celery

from videoqueue import namespace, redisconn
from videoqueue.queues import AMQP_SETTINGS, celery_conf, is_amqp
from videoqueue.settings import Settings


def producer_app(broker_url: str, transport_options: Mapping[str, Any] | None = None) -> Celery:
    """A Celery app that sends to `broker_url`, into the queues of the current namespace,
    with the shared settings of videoqueue/celeryconfig.py; `transport_options` (kombu's,
    JSON-able) on top of theirs, such as a Sentinel broker's master name."""
    frozen = json.dumps(dict(transport_options or {}), sort_keys=True)
    return _producer_app(broker_url, namespace.current(), frozen)


def producer_app_for(settings: Settings) -> Celery:
    """`producer_app` for the broker `settings` name: BROKER_URL, REDIS_URL, or with
    REDIS_SENTINELS the primary the sentinels name."""
    return producer_app(settings.effective_broker_url, redisconn.broker_transport_options(settings))


@lru_cache(maxsize=8)
def _producer_app(broker_url: str, name: str, transport_options: str) -> Celery:
    app = Celery("videoqueue-producer")
    app.config_from_object("videoqueue.celeryconfig")
    # The queues must be declared as the workers on this broker declare them.
    with namespace.using(name):
        app.conf.update(broker_url=broker_url, **celery_conf(broker_url))
    if is_amqp(broker_url):
        app.conf.update(AMQP_SETTINGS)
    extra = json.loads(transport_options)
    if extra:
        app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}), **extra}
    return app
