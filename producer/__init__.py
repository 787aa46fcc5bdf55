"""videoqueue producer: enqueue AI video jobs and follow them.

Imports no provider SDK and no boto3, so producers install only celery and pydantic.
"""

from producer.api import (
    AmbiguousJobIdError,
    EnqueueError,
    RetryRefusedError,
    UnknownJobError,
    VideoQueue,
    WaitTimeoutError,
)
from producer.request import VideoRequest
from videoqueue.budget import BudgetExceededError
from videoqueue.errors import InvalidRequestError
from videoqueue.job import ErrorCode, JobError, JobRecord, JobStatus
from videoqueue.jobstore import DuplicateClientJobIdError
from videoqueue.ledger import CostRow, LedgerEntry
from videoqueue.settings import Settings

__all__ = [
    "AmbiguousJobIdError",
    "BudgetExceededError",
    "CostRow",
    "DuplicateClientJobIdError",
    "EnqueueError",
    "ErrorCode",
    "InvalidRequestError",
    "JobError",
    "JobRecord",
    "JobStatus",
    "LedgerEntry",
    "RetryRefusedError",
    "Settings",
    "UnknownJobError",
    "VideoQueue",
    "VideoRequest",
    "WaitTimeoutError",
]
