"""The error tree of videoqueue: every exception the package raises on purpose derives from
`VideoqueueError`, with one branch per part (request, budget, job store, provider, storage),
so `except VideoqueueError` catches them all and `except JobStoreError` one part's.

The tree (a built-in base in brackets is kept for callers that catch it, such as
`except ValueError`; a leaf defined outside this module names its module):

    VideoqueueError
        RequestError
            InvalidRequestError (ValueError)
                DuplicateClientJobIdError
            RetryRefusedError (ValueError)           producer.api
            StoreRetryRefusedError (ValueError)      producer.api
            InputStorageUnavailableError (ValueError) videoqueue.inputs
            UnknownDeliveryError (LookupError)       videoqueue.webhooks
            UnknownMovieError (LookupError)          videoqueue.movies
        BudgetError
            BudgetExceededError (ValueError)
            BudgetInputError (ValueError)            producer.cli_budget
        JobStoreError
            JobExistsError (RuntimeError)
            TaskClaimedError (RuntimeError)
            IllegalTransitionError (RuntimeError)
            UnknownJobError (KeyError)               videoqueue.jobids
            AmbiguousJobIdError (ValueError)         videoqueue.jobids
            UnknownBatchError (KeyError)             videoqueue.batches
        ProviderError
        StorageError
            VideoCheckError                          worker.storage.base
                VideoDecodeError                     worker.storage.base
            FetchError                               worker.storage.fetch
            MediaError                               worker.media
            VideoGoneError                           worker.steps.movie
        InvalidSettingsError (ValueError)
            AllowListError                           videoqueue.urlguard
        EnqueueError (RuntimeError)                  producer.api
        WaitTimeoutError (TimeoutError)              producer.api
        JobFailed                                    worker.outcome
        InputUploadError (RuntimeError)              videoqueue.inputs
        WebhookVerificationError (ValueError)        producer.webhooks
        URLFetchError
            ForbiddenURLError (ValueError)           videoqueue.urlguard
            URLTooLargeError (ValueError)            videoqueue.urlguard
            URLTimeoutError (TimeoutError)           videoqueue.urlguard
            URLStatusError                           videoqueue.urlguard

Branch bases live here, in the core, so that any part can catch a branch without importing
the part that raises it; so do the leaves of the core's own parts. A leaf raised by one
outer part only (the producer API, the CLI, storage, the worker's tasks) lives beside the
code that raises it. Every class keeps the built-in base it had before the tree, so no
caller's `except` changes meaning. The modules the classes moved here from re-export them
(`videoqueue.jobstore.JobExistsError`, `worker.providers.base.ProviderError`, ...).

Outside the tree on purpose (`OUTSIDE_THE_TREE`): exceptions that steer control flow inside
one module and never reach a caller, so that `except VideoqueueError` never swallows them:
`StoreRetry` (worker.pipeline: the store step asks its task to run again later),
`_Found` (producer.workercheck: stops waiting for replies once a worker answered),
`TransferCancelled` (worker.storage.s3: ends the reads of an upload interrupted by a soft
time limit, inside boto3's transfer) and `ProbeFailed` (worker.storage.s3_probe: one failed
call of doctor's storage probe, turned into the probe's result).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING

from videoqueue.job import ErrorCode

if TYPE_CHECKING:
    from videoqueue.jobstore import ClientIdConflict

OUTSIDE_THE_TREE = frozenset({"StoreRetry", "_Found", "TransferCancelled", "ProbeFailed"})
"""Names of the exception classes deliberately not under `VideoqueueError` (see above)."""


class VideoqueueError(Exception):
    """Root of every error videoqueue raises on purpose; catch it to catch them all."""


# -- request ------------------------------------------------------------------------------------


class RequestError(VideoqueueError):
    """A call refused for what it asks (a request, a retry of a job); nothing was stored,
    sent or changed. The message says why."""


class InvalidRequestError(RequestError, ValueError):
    """A request that cannot be enqueued. `problems` maps each field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        detail = "; ".join(f"{field}: {msg}" for field, msg in problems.items())
        super().__init__(f"invalid video request: {detail}")


class DuplicateClientJobIdError(InvalidRequestError):
    """Client job ids already used for different requests; nothing was stored.
    `conflicts` names each id, the job holding it and the fields that differ. A request
    identical to the stored one is not an error: its job is returned instead."""

    def __init__(self, conflicts: Sequence[ClientIdConflict]) -> None:
        self.conflicts = list(conflicts)
        super().__init__({"client_job_id": "; ".join(c.describe() for c in self.conflicts)})


# -- budget -------------------------------------------------------------------------------------


class BudgetError(VideoqueueError):
    """A budget refused a job, or a budget cap given is not one."""


class BudgetExceededError(BudgetError, ValueError):
    """Enqueueing would cross a budget cap; nothing was stored or sent. Amounts in USD."""

    def __init__(
        self, budget: str, cap: Decimal, spent: Decimal, reserved: Decimal, requested: Decimal, *, created: bool = False
    ) -> None:
        self.budget, self.cap, self.spent, self.reserved, self.requested = budget, cap, spent, reserved, requested
        self.used = spent + reserved
        if created:
            # The worker's check: the job's own reservation is in `reserved` already.
            message = (
                f"budget {budget} is exceeded: cap ${cap:.2f}, spent ${spent:.4f}, reserved ${reserved:.4f} "
                f"(this job's ${requested:.4f} included); the job was not created at the provider"
            )
        else:
            message = (
                f"budget {budget} would be exceeded: cap ${cap:.2f}, spent ${spent:.4f}, reserved ${reserved:.4f}, "
                f"requested ${requested:.4f} (nothing was enqueued)"
            )
        super().__init__(message)


# -- job store ----------------------------------------------------------------------------------


class JobStoreError(VideoqueueError):
    """The job store does not hold a job (or a provider task) as asked: an id already taken,
    a task another job owns, an id or prefix that names no single job."""


class JobExistsError(JobStoreError, RuntimeError):
    """A job with this id is already stored."""


class TaskClaimedError(JobStoreError, RuntimeError):
    """The provider task a job would record already belongs to another job."""

    def __init__(self, task_id: str, owner: str) -> None:
        self.task_id, self.owner = task_id, owner
        super().__init__(f"provider task {task_id} already belongs to job {owner}")


class IllegalTransitionError(JobStoreError, RuntimeError):
    """A status move the lifecycle table (videoqueue.lifecycle.MOVES) does not allow: a
    bug in the code that asked for it, never a state of the job; nothing was stored.
    `source` and `target` are the status values."""

    def __init__(self, source: str, target: str) -> None:
        self.source, self.target = source, target
        super().__init__(f"a job cannot move from {source} to {target} (videoqueue.lifecycle.MOVES)")


# -- provider -----------------------------------------------------------------------------------

RETRYABLE = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM, ErrorCode.TIMEOUT})
"""The error codes of a provider call worth trying again later."""


class ProviderError(VideoqueueError):
    """A provider call failed, classified into one of our error codes (its kind: `code`).

    `request_sent` is False only when the request provably never reached the provider
    (connection refused, connect timeout): only then is a failed create safe to repeat
    blindly. `retry_after` is the provider's hint in seconds, if it gave one.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        provider_code: str | None = None,
        retry_after: float | None = None,
        request_sent: bool = True,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.provider_code = provider_code
        self.retry_after = retry_after
        self.request_sent = request_sent

    @property
    def retryable(self) -> bool:
        """Worth trying again later."""
        return self.code in RETRYABLE


# -- storage ------------------------------------------------------------------------------------


class StorageError(VideoqueueError):
    """Storage failed. Raised as is, a write or read failed in a way worth retrying (backend
    unreachable, I/O error); its subclasses name the other storage failures."""


# -- settings -----------------------------------------------------------------------------------


class InvalidSettingsError(VideoqueueError, ValueError):
    """Settings that cannot be used; the message is one line naming each variable at fault
    and what it expects (never a secret's value)."""


# -- fetching a user's URL ----------------------------------------------------------------------


class URLFetchError(VideoqueueError):
    """A URL a user gave could not be fetched (videoqueue.urlguard): refused by the guard,
    unreachable, timed out, too large, an HTTP error, too many redirects. The message is
    one line naming the URL and the cause."""
