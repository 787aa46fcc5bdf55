"""The one small interface every provider adapter implements, and the error and status
types adapters map the provider's own onto."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import httpx

from videoqueue.endpoints import Endpoint
from videoqueue.errors import ProviderError as ProviderError  # noqa: PLC0414 - re-export
from videoqueue.job import ErrorCode, JobRecord
from videoqueue.settings import Settings
from worker.probe import Probe


def error_for_status(
    status: int,
    message: str,
    provider_code: str | None,
    *,
    creating: bool = False,
    content_filtered: bool = False,
    retry_after: float | None = None,
) -> ProviderError:
    """Our error for an HTTP error status from a provider API (one table for every adapter)."""
    if status == 429:
        return ProviderError(ErrorCode.RATE_LIMITED, message, provider_code=provider_code, retry_after=retry_after)
    if status in (400, 422):
        code = ErrorCode.CONTENT_FILTERED if content_filtered else ErrorCode.INVALID_REQUEST
        return ProviderError(code, message, provider_code=provider_code)
    if status in (401, 403):
        return ProviderError(ErrorCode.AUTH, message, provider_code=provider_code)
    if status == 404:
        # On create a 404 means the model or endpoint does not exist: a bad request.
        code = ErrorCode.INVALID_REQUEST if creating else ErrorCode.NOT_FOUND
        return ProviderError(code, message, provider_code=provider_code)
    return ProviderError(ErrorCode.UPSTREAM, message, provider_code=provider_code)


class TaskStatus(StrEnum):
    """A provider task's status, in our words."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


@dataclass(frozen=True)
class TaskState:
    """What one status call told us about a provider task."""

    status: TaskStatus
    provider_status: str
    video_url: str | None = None
    # The last frame of the video as a PNG URL: ModelArk's, for a task created with
    # `return_last_frame` (a movie's scene); None otherwise.
    last_frame_url: str | None = None
    billed_units: int | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    provider_error_code: str | None = None
    # When the provider says the task finished, if it says (ModelArk does, Vertex AI not).
    finished_at: datetime | None = None


@dataclass(frozen=True)
class Lookup:
    """What a provider's task listing says about the task an interrupted create may have
    made.

    `candidates`: ids of tasks that match the job's request in every field the listing
    carries, oldest first. `complete`: the listing covered the whole time window and
    every task in it could be compared, so no candidate means no task was created.
    """

    candidates: tuple[str, ...] = ()
    complete: bool = True


@dataclass(frozen=True)
class ImageInput:
    """An input image for one role: a URL to pass on, or bytes the producer uploaded."""

    url: str | None = None
    data: bytes | None = None
    mime_type: str | None = None

    def data_uri(self) -> str:
        """`data:<mime>;base64,...` for providers that take inline images in JSON."""
        assert self.data is not None and self.mime_type is not None
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode()}"


@dataclass(frozen=True)
class VideoStream:
    """An open video: chunks to read once, and the size the source announced."""

    chunks: Iterator[bytes]
    size: int | None


class Provider(Protocol):
    """A video generation service as the pipeline sees it."""

    name: str

    def create(self, job: JobRecord, images: dict[str, ImageInput]) -> str:
        """Start a provider task for `job` (with its input images by role) and return its
        id. Never retried inside."""
        ...

    def find_created(self, job: JobRecord, since: datetime) -> Lookup:
        """After an uncertain create (the first at `since`), the tasks it may have made.
        Lookup(complete=False) when the provider cannot be asked."""
        ...

    def get(self, job: JobRecord) -> TaskState:
        """One status call for the provider task of `job`."""
        ...

    def cancel(self, task_id: str) -> bool:
        """Cancel a task that has not started rendering. True if it stopped; False if it
        cannot be stopped (already rendering, or finished: a finished task is never
        deleted, its result may not be stored yet)."""
        ...

    def open_video(self, job: JobRecord) -> AbstractContextManager[VideoStream]:
        """Open the finished video of `job` for streaming."""
        ...


class ProviderAdapter(Protocol):
    """An adapter class, as the registry (worker/providers/registry.py) holds it: it builds
    the process's `Provider` and probes the provider's endpoint for `videoqueue doctor`."""

    name: str
    """The provider's name in models.toml and in job records."""

    @property
    def result_ttl_s(self) -> float | None:
        """Seconds after a finish (a poll seeing it) that the provider still hands out the video;
        None when it documents no limit (the store step then tries until its own deadline)."""
        ...

    def __call__(self, settings: Settings, http: httpx.Client) -> Provider:
        """The adapter for this worker process; ProviderError(AUTH) without credentials.
        `http` is the process's client for video downloads."""
        ...

    def endpoint(self, settings: Settings) -> Endpoint:
        """The endpoint and account `settings` send this provider's calls to, as a
        fingerprint over the provider name, base URL and account (videoqueue.endpoints);
        an unconfigured provider has one too (of no account)."""
        ...

    def missing_credentials(self, settings: Settings) -> str | None:
        """The settings to set when `settings` give this provider no credentials (e.g.
        `BYTEPLUS_API_KEY`), else None."""
        ...

    def probe(self, settings: Settings, timeout_s: float) -> Probe:
        """One cheap authenticated call with the configured credentials (SDK retries off,
        each call at most `timeout_s` seconds): ok when they were accepted, fail when
        refused or unreachable, warn when the answer cannot tell. Only called when
        `missing_credentials` is None; the detail names hosts, never a secret."""
        ...
