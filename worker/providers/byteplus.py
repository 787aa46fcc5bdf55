"""BytePlus ModelArk (Seedance) through the official Ark SDK.

The SDK retries 408/409/429/5xx and timeouts on its own, POSTs included, which would
create duplicate paid tasks; the client here is built with `max_retries=0` and our
pipeline decides every retry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from byteplussdkarkruntime import Ark
from byteplussdkarkruntime._exceptions import (
    ArkAPIConnectionError,
    ArkAPIError,
    ArkAPIResponseValidationError,
    ArkAPIStatusError,
    ArkAPITimeoutError,
)

from videoqueue.catalog import Catalog, load_catalog
from videoqueue.endpoints import Endpoint, fingerprint, host_of
from videoqueue.job import ErrorCode, JobRecord
from videoqueue.resolved import IMAGE_ROLES, ResolvedRequest
from videoqueue.settings import Settings
from worker.callback_url import callback_url
from worker.download import stream_url
from worker.probe import Probe, Status, safe_url
from worker.providers.base import (
    ImageInput,
    Lookup,
    ProviderError,
    TaskState,
    TaskStatus,
    VideoStream,
    error_for_status,
)
from worker.providers.registry import register

_STATUSES = {
    "queued": TaskStatus.QUEUED,
    "running": TaskStatus.RUNNING,
    "succeeded": TaskStatus.SUCCEEDED,
    "failed": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
    "expired": TaskStatus.EXPIRED,
}
# How far back to look for a task an interrupted create may have made (clock skew).
_LOOKUP_SLACK = timedelta(minutes=2)
# ModelArk's largest page; the listing is read page by page, newest first, until it
# passes the start of the window. Past this many pages the lookup says it cannot tell.
_LOOKUP_PAGE_SIZE = 500
_LOOKUP_MAX_PAGES = 200
# ModelArk expires a task this long after creation by default (48 h); allowed 3600-259200 s.
_EXPIRES_AFTER_S = 172800
_TAG_SPAN_S = 3600


def expires_after_tag(job_id: str) -> int:
    """The `execution_expires_after` a job's tasks are created with: ModelArk's default
    48 h plus 0-3599 s taken from the job id.

    A listing echoes every parameter of a task but not its prompt or images, so two jobs
    with identical parameters and a fixed seed would look alike; this value, echoed too,
    tells them apart (two such jobs collide once in 3,600, and then the lookup says it
    cannot tell rather than guess)."""
    digest = hashlib.sha256(job_id.encode()).digest()
    return _EXPIRES_AFTER_S + int.from_bytes(digest[:4], "big") % _TAG_SPAN_S


def classify_failure_code(provider_code: str | None) -> ErrorCode:
    """Our error class for the `error.code` of a failed ModelArk task."""
    code = provider_code or ""
    if "Sensitive" in code or "Risk" in code or "Policy" in code:
        return ErrorCode.CONTENT_FILTERED
    if code.startswith("InvalidParameter") or code.startswith("MissingParameter"):
        return ErrorCode.INVALID_REQUEST
    return ErrorCode.UPSTREAM


def map_ark_error(exc: ArkAPIError, *, creating: bool = False) -> ProviderError:
    """Map an Ark SDK exception onto our error classes."""
    provider_code = getattr(exc, "code", None)
    message = _error_message(exc)
    if isinstance(exc, ArkAPITimeoutError | ArkAPIConnectionError):
        cause = exc.__cause__
        not_sent = isinstance(cause, httpx.ConnectError | httpx.ConnectTimeout)
        return ProviderError(
            ErrorCode.TIMEOUT,
            f"ModelArk unreachable: {message}",
            request_sent=not not_sent,
        )
    if isinstance(exc, ArkAPIResponseValidationError):
        return ProviderError(ErrorCode.UPSTREAM, f"ModelArk sent an unexpected body: {message}")
    if isinstance(exc, ArkAPIStatusError):
        return error_for_status(
            exc.status_code,
            message,
            provider_code,
            creating=creating,
            content_filtered=bool(provider_code and "Sensitive" in provider_code),
            retry_after=_retry_after(exc.response),
        )
    return ProviderError(ErrorCode.UPSTREAM, message, provider_code=provider_code)


def _error_message(exc: ArkAPIError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return str(getattr(exc, "message", exc))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _has_audio(catalog: Catalog, model: str) -> bool:
    spec = catalog.get(model)
    return bool(spec and spec.audio)


def ark_client(settings: Settings, timeout: httpx.Timeout) -> Ark:
    """An Ark client for the configured key, with the SDK's own retries off."""
    assert settings.byteplus_api_key is not None
    return Ark(
        base_url=settings.byteplus_base_url,
        api_key=settings.byteplus_api_key.get_secret_value(),
        max_retries=0,
        timeout=timeout,
    )


def build_content(request: ResolvedRequest, images: dict[str, ImageInput]) -> list[dict[str, Any]]:
    """The `content` array of a create call: the prompt, then the images by role (a URL
    as given, an uploaded file as a data URI)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
    for role in IMAGE_ROLES:
        image = images.get(role)
        if image is not None:
            url = image.url or image.data_uri()
            content.append({"type": "image_url", "image_url": {"url": url}, "role": role})
    return content


def _probe_failure(exc: ArkAPIError, where: str) -> Probe:
    """What a failed probe call says about the key and the endpoint."""
    error = map_ark_error(exc)
    status = f"HTTP {exc.status_code} " if isinstance(exc, ArkAPIStatusError) else ""
    said = f"{status}{error.provider_code or ''}: {error.message}".strip(": ")
    if error.code is ErrorCode.AUTH:
        return Probe(Status.FAIL, f"BYTEPLUS_API_KEY rejected by {where} ({said})")
    if error.code is ErrorCode.RATE_LIMITED:
        return Probe(Status.WARN, f"key accepted by {where}, but it is rate limiting ({said})")
    if error.code is ErrorCode.TIMEOUT:
        return Probe(Status.FAIL, f"cannot reach {where}: {error.message}")
    if error.code is ErrorCode.NOT_FOUND:
        return Probe(Status.FAIL, f"no ModelArk task API at {where} (check BYTEPLUS_BASE_URL): {said}")
    return Probe(Status.WARN, f"{where} answered an error, the key could not be confirmed ({said})")


def task_state(task: Any) -> TaskState:
    """Our view of a ModelArk task object."""
    raw_status = str(getattr(task, "status", "") or "")
    status = _STATUSES.get(raw_status)
    if status is None:
        raise ProviderError(ErrorCode.UPSTREAM, f"ModelArk returned unknown status {raw_status!r}")
    video_url = last_frame_url = None
    billed = None
    if status is TaskStatus.SUCCEEDED:
        content = getattr(task, "content", None)
        video_url = getattr(content, "video_url", None)
        last_frame_url = getattr(content, "last_frame_url", None)
        usage = getattr(task, "usage", None)
        billed = getattr(usage, "completion_tokens", None)
        if not video_url or not isinstance(billed, int):
            raise ProviderError(ErrorCode.UPSTREAM, "ModelArk reported success without video_url or usage")
    finished_at = None
    if status is TaskStatus.SUCCEEDED:
        updated = getattr(task, "updated_at", None)
        if isinstance(updated, int) and updated > 0:
            # Whole seconds: the middle of the second is the best guess of the moment.
            finished_at = datetime.fromtimestamp(updated + 0.5, UTC)
    error_code = error_message = provider_code = None
    if status is TaskStatus.FAILED:
        error = getattr(task, "error", None)
        provider_code = getattr(error, "code", None) or "Unknown"
        error_message = getattr(error, "message", None) or "task failed at ModelArk"
        error_code = classify_failure_code(provider_code)
    return TaskState(
        status=status,
        provider_status=raw_status,
        video_url=video_url,
        last_frame_url=last_frame_url if isinstance(last_frame_url, str) else None,
        billed_units=billed,
        error_code=error_code,
        error_message=error_message,
        provider_error_code=provider_code,
        finished_at=finished_at,
    )


@register
class BytePlusProvider:
    """Seedance on ModelArk."""

    name = "byteplus"
    # ModelArk keeps a finished task's video URL for 24 hours after the finish (its task API
    # reference); we count from when a poll saw the finish, a little later, so an hour of
    # margin is taken off.
    result_ttl_s = 24 * 3600.0 - 3600.0

    def __init__(self, settings: Settings, http: httpx.Client) -> None:
        if self.missing_credentials(settings):
            raise ProviderError(ErrorCode.AUTH, "BYTEPLUS_API_KEY is not set")
        self._client = ark_client(settings, httpx.Timeout(settings.provider_timeout_s, connect=10.0))
        self._http = http
        self._catalog = load_catalog(settings.pricing_file)
        self._settings = settings

    @classmethod
    def endpoint(cls, settings: Settings) -> Endpoint:
        base = settings.byteplus_base_url.rstrip("/")
        key = settings.byteplus_api_key.get_secret_value() if settings.byteplus_api_key else ""
        return Endpoint(cls.name, host_of(base), fingerprint(cls.name, base, "key", key))

    @classmethod
    def missing_credentials(cls, settings: Settings) -> str | None:
        return "BYTEPLUS_API_KEY" if settings.byteplus_api_key is None else None

    @classmethod
    def probe(cls, settings: Settings, timeout_s: float) -> Probe:
        """One `tasks.list(page_size=1)` with the configured key."""
        where = safe_url(settings.byteplus_base_url)
        client = ark_client(settings, httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)))
        try:
            client.content_generation.tasks.list(page_size=1)
        except ArkAPIError as exc:
            return _probe_failure(exc, where)
        finally:
            client.close()
        return Probe(Status.OK, f"key accepted by {where} (tasks.list answered)")

    def create(self, job: JobRecord, images: dict[str, ImageInput]) -> str:
        request = job.request
        try:
            created = self._client.content_generation.tasks.create(
                model=job.model,
                content=build_content(request, images),
                duration=request.duration,
                resolution=request.resolution,
                ratio=request.ratio,
                # Only audio-capable models know the flag; the others reject it.
                generate_audio=request.audio if _has_audio(self._catalog, job.model) else None,
                seed=request.seed,
                service_tier=request.service_tier,
                execution_expires_after=expires_after_tag(job.id),
                # ModelArk POSTs the task there when its status changes (None: not sent).
                callback_url=callback_url(self._settings, job.id),
                # A movie's scene: the next scene starts from its last frame (videoqueue.movies).
                return_last_frame=True if job.movie_id is not None else None,
            )
        except ArkAPIError as exc:
            raise map_ark_error(exc, creating=True) from exc
        task_id = getattr(created, "id", None)
        if not task_id:
            raise ProviderError(ErrorCode.UPSTREAM, "ModelArk create returned no task id")
        return str(task_id)

    def find_created(self, job: JobRecord, since: datetime) -> Lookup:
        """Tasks of this model created since `since` (less a slack for clock skew) whose
        echoed fields all equal the job's request: seed, duration, ratio, resolution,
        service tier, audio and the job's `execution_expires_after` tag. The listing
        carries neither prompt nor images; the tag stands in for them. A task in the
        window with a field missing cannot be compared: the lookup is then incomplete."""
        cutoff = (since - _LOOKUP_SLACK).timestamp()
        expected = self._echoed(job)
        tasks = self._client.content_generation.tasks
        found: list[tuple[int, str]] = []
        complete = True
        for page in range(1, _LOOKUP_MAX_PAGES + 1):
            try:
                listing = tasks.list(
                    page_num=page,
                    page_size=_LOOKUP_PAGE_SIZE,
                    model=job.model,
                    service_tier=job.request.service_tier,
                )
            except ArkAPIError as exc:
                raise map_ark_error(exc) from exc
            items = list(getattr(listing, "items", None) or [])
            created = [int(getattr(item, "created_at", 0) or 0) for item in items]
            for item, at in zip(items, created, strict=True):
                if at < cutoff:
                    continue
                echoed = {name: getattr(item, name, None) for name in expected}
                if any(value is None for value in echoed.values()):
                    complete = False
                elif echoed == expected:
                    found.append((at, str(item.id)))
            if len(items) < _LOOKUP_PAGE_SIZE or min(created) < cutoff:
                break
        else:
            complete = False  # the window holds more tasks than we read
        return Lookup(candidates=tuple(task_id for _, task_id in sorted(found)), complete=complete)

    def _echoed(self, job: JobRecord) -> dict[str, Any]:
        """The fields a listed task echoes, as this job's create sent them."""
        request = job.request
        echoed: dict[str, Any] = {
            "seed": request.seed,
            "duration": request.duration,
            "resolution": request.resolution,
            "service_tier": request.service_tier,
            "execution_expires_after": expires_after_tag(job.id),
        }
        if request.ratio != "adaptive":  # ModelArk reports the ratio it chose
            echoed["ratio"] = request.ratio
        if _has_audio(self._catalog, job.model):
            echoed["generate_audio"] = request.audio
        return echoed

    def get(self, job: JobRecord) -> TaskState:
        try:
            task = self._client.content_generation.tasks.get(task_id=job.provider_task_id)
        except ArkAPIError as exc:
            raise map_ark_error(exc) from exc
        return task_state(task)

    def cancel(self, task_id: str) -> bool:
        # DELETE cancels a queued task, is refused for a running one, and *deletes* a
        # finished one with its result: so look first, and delete only what is queued.
        try:
            task = self._client.content_generation.tasks.get(task_id=task_id)
        except ArkAPIError as exc:
            raise map_ark_error(exc) from exc
        if getattr(task, "status", None) != "queued":
            return False
        try:
            self._client.content_generation.tasks.delete(task_id)
        except ArkAPIStatusError as exc:
            if exc.status_code in (400, 409):
                return False  # it started rendering meanwhile
            raise map_ark_error(exc) from exc
        except ArkAPIError as exc:
            raise map_ark_error(exc) from exc
        return True

    @contextmanager
    def open_video(self, job: JobRecord) -> Iterator[VideoStream]:
        if not job.video_url:
            raise ProviderError(ErrorCode.UPSTREAM, "job has no video URL")
        with stream_url(self._http, job.video_url) as stream:
            yield stream
