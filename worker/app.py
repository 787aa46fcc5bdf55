"""The Celery app of the worker fleet: `celery -A worker worker`."""

from __future__ import annotations

import sys

from celery import Celery

from producer.settings import InvalidSettingsError, get_settings

try:
    # Read before Celery reads celeryconfig, so that settings that cannot be used stop
    # `celery -A worker worker` with one line naming the variable, not a traceback.
    get_settings()
except InvalidSettingsError as exc:
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(2) from None

app = Celery("videoqueue")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
