"""Where `celery -A worker` finds the app: Celery looks for `worker.app` as an attribute, then
for this module. The package does not import the app itself (worker/__init__.py says why).

Without the `worker` extra the app cannot load (no provider SDKs, no boto3), and Celery would
only say "Module 'worker' has no attribute 'celery'": the check below says what to install.
"""

from videoqueue.commands import WORKER_EXTRA, missing_worker_extra

_missing = missing_worker_extra()
if _missing:
    raise SystemExit(
        f"error: a videoqueue worker needs the worker extra (not installed here: {', '.join(_missing)}): {WORKER_EXTRA}"
    )

from worker.app import app  # noqa: E402 - only once the check above passed

__all__ = ["app"]
