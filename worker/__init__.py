"""videoqueue worker: the Celery app and tasks, provider adapters, storage.

Start a worker with `celery -A worker worker`.
"""

from worker.app import app

__all__ = ["app"]
