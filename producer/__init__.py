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
from producer.budget import BudgetExceededError
from producer.contract import ErrorCode, JobError, JobRecord, JobStatus
from producer.jobstore import DuplicateClientJobIdError
from producer.ledger import CostRow, LedgerEntry
from producer.request import InvalidRequestError, VideoRequest
from producer.settings import Settings

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
