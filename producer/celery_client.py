"""A Celery app for producers: it only sends messages by task name and imports no worker
code, so a producer needs celery and pydantic, not the provider SDKs or boto3."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from pydantic import SecretStr

from videoqueue import namespace, redisconn
from videoqueue.brokertls import broker_use_ssl
from videoqueue.queues import AMQP_SETTINGS, celery_conf, is_amqp
from videoqueue.settings import Settings


def producer_app(broker_url: str) -> Celery:
    """A Celery app that sends to `broker_url`, into the queues of the current namespace,
    with the shared settings of videoqueue/celeryconfig.py."""
    return _producer_app(broker_url, namespace.current())


def producer_app_for(settings: Settings) -> Celery:
    """`producer_app` for the broker `settings` name: BROKER_URL, REDIS_URL, or with
    REDIS_SENTINELS the primary the sentinels name (kombu's `sentinel://` with the master's
    name in its transport options)."""
    url = settings.effective_broker_url
    if not url.startswith("sentinel://"):
        return producer_app(url)
    master = str(settings.redis_sentinel_master)
    return _sentinel_app(url, namespace.current(), master, settings.redis_sentinel_password)


@lru_cache(maxsize=8)
def _producer_app(broker_url: str, name: str) -> Celery:
    return _new_app(broker_url, name)


@lru_cache(maxsize=8)
def _sentinel_app(broker_url: str, name: str, master: str, password: SecretStr | None) -> Celery:
    app = _new_app(broker_url, name)
    # celeryconfig took this process's settings; these may be another's (VideoQueue(settings)).
    options = redisconn.sentinel_transport_options(master, password)
    app.conf.broker_transport_options = {**(app.conf.broker_transport_options or {}), **options}
    return app


def _new_app(broker_url: str, name: str) -> Celery:
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
