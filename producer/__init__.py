"""videoqueue producer: enqueue AI video jobs and follow them.

Imports no provider SDK and no boto3, so producers install only celery and pydantic.
"""

from producer.api import EnqueueError, UnknownJobError, VideoQueue, WaitTimeoutError
from producer.contract import ErrorCode, JobError, JobRecord, JobStatus
from producer.request import InvalidRequestError, VideoRequest
from producer.settings import Settings

__all__ = [
    "EnqueueError",
    "ErrorCode",
    "InvalidRequestError",
    "JobError",
    "JobRecord",
    "JobStatus",
    "Settings",
    "UnknownJobError",
    "VideoQueue",
    "VideoRequest",
    "WaitTimeoutError",
]
