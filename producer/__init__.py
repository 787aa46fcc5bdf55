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
from videoqueue.job import ErrorCode, JobError, JobRecord, JobStatus
from videoqueue.ledger import CostRow, LedgerEntry
from videoqueue.settings import Settings

__all__ = [
    "AmbiguousJobIdError",
    "BudgetError",
    "BudgetExceededError",
    "CostRow",
    "DuplicateClientJobIdError",
    "EnqueueError",
    "ErrorCode",
    "InvalidRequestError",
    "JobError",
    "JobRecord",
    "JobStatus",
    "JobStoreError",
    "LedgerEntry",
    "ProviderError",
    "RequestError",
    "RetryRefusedError",
    "Settings",
    "StorageError",
    "UnknownJobError",
    "VideoQueue",
    "VideoRequest",
    "VideoqueueError",
    "WaitTimeoutError",
]
