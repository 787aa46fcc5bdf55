"""A producer's own Celery app for the completion-task tests, run as its own `celery
worker` (`celery -A tests.integration.completion_app worker -Q <queue>`): its one task
pushes the record it is given (as JSON) to a Redis list, for the test to read."""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

BROKER = os.environ["COMPLETION_BROKER_URL"]
RESULTS = "completion-test:records"

app = Celery("completion-test", broker=BROKER)


@app.task(name="completion_test.on_video")
def on_video(record: dict[str, Any]) -> None:
    """Keep the final job record videoqueue sent."""
    redis.Redis.from_url(BROKER).rpush(RESULTS, json.dumps(record))
