"""videoqueue worker: the Celery app and tasks, provider adapters, storage.

Start a worker with `celery -A worker worker`: Celery finds the app in worker/celery.py (its
convention for a package). Importing the package itself creates no app and reads no settings,
so the CLI can load worker/cli.py's commands cheaply on every start.
"""
