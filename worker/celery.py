"""Where `celery -A worker` finds the app: Celery looks for `worker.app` as an attribute, then
for this module. The package does not import the app itself (worker/__init__.py says why)."""

from worker.app import app

__all__ = ["app"]
