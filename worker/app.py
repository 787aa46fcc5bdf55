"""The Celery app of the worker fleet: `celery -A worker worker`."""

from __future__ import annotations

from celery import Celery

app = Celery("videoqueue")
app.config_from_object("celeryconfig")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
