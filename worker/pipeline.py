"""The job lifecycle as the worker runs it: one object with the four steps (worker/steps/),
wired to a job store, providers, storage and a dispatcher. Celery's tasks (worker/tasks.py)
call `submit`, `poll`, `store_video`, `cancel` and `movie_advance`.
"""

from __future__ import annotations

from worker.steps.movie import MovieStep
from worker.steps.store import StoreRetry, StoreStep
from worker.steps.submit import SubmitStep

__all__ = ["Pipeline", "StoreRetry"]


class Pipeline(SubmitStep, MovieStep, StoreStep):
    """The steps of a job, sharing one set of dependencies (`StepBase.__init__`)."""
