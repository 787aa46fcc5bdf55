"""A Celery app for producers: it only sends messages by task name and imports no worker
code, so a producer needs celery and pydantic, not the provider SDKs or boto3."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery


@lru_cache(maxsize=8)
def producer_app(broker_url: str) -> Celery:
    """A Celery app that sends to `broker_url` with the shared settings of celeryconfig."""
    app = Celery("videoqueue-producer")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=broker_url)
    return app
