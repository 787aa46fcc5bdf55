"""videoqueue producer: enqueue AI video jobs and follow them.

Imports no provider SDK and no boto3 (nor the worker package): `pip install videoqueue`, without
the `worker` extra, is enough for a producer.
"""

from producer.aio import AsyncVideoQueue
from producer.api import (
    EnqueueError,
    RetryRefusedError,
    VideoQueue,
    WaitTimeoutError,
)
from producer.movie import Movie
from producer.request import VideoRequest
from videoqueue.errors import (
    BudgetError,
    BudgetExceededError,
    DuplicateClientJobIdError,
    InvalidRequestError,
    JobStoreError,
    ProviderError,
    RequestError,
    StorageError,
    VideoqueueError,
)
from videoqueue.events import JobEvent
from videoqueue.job import ErrorCode, JobError, JobFailure, JobRecord, JobStatus
from videoqueue.jobids import AmbiguousJobIdError, UnknownJobError
from videoqueue.ledger import CostRow, LedgerEntry
from videoqueue.movies import MovieRecord, MovieState, UnknownMovieError
from videoqueue.settings import Settings

__all__ = [
    "AmbiguousJobIdError",
    "AsyncVideoQueue",
    "BudgetError",
    "BudgetExceededError",
    "CostRow",
    "DuplicateClientJobIdError",
    "EnqueueError",
    "ErrorCode",
    "InvalidRequestError",
    "JobError",
    "JobEvent",
    "JobFailure",
    "JobRecord",
    "JobStatus",
    "JobStoreError",
    "LedgerEntry",
    "Movie",
    "MovieRecord",
    "MovieState",
    "ProviderError",
    "RequestError",
    "RetryRefusedError",
    "Settings",
    "StorageError",
    "UnknownJobError",
    "UnknownMovieError",
    "VideoQueue",
    "VideoRequest",
    "VideoqueueError",
    "WaitTimeoutError",
]
