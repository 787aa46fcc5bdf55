"""Google Veo on Vertex AI through the official google-genai SDK.

Vertex mode only: the 3.x SDK refuses `generate_videos` in API-key Gemini mode. Two ways
in: express mode with GOOGLE_API_KEY, or GOOGLE_CLOUD_PROJECT + GOOGLE_CLOUD_LOCATION with
application default credentials. The operation name is all we keep between polls.

The SDK's HTTP retries are off (`retry_options=None`); our pipeline decides every retry.
One `genai.Client` per process: a collected client closes the connection that calls made
through it still use, so the adapter (held for the life of the process) owns it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from videoqueue.catalog import MAX_IMAGE_BYTES, load_catalog
from videoqueue.endpoints import Endpoint, fingerprint, host_of
from videoqueue.job import ErrorCode, JobRecord
from videoqueue.settings import Settings
from worker.download import CHUNK_BYTES, fetch_image
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
from worker.providers.gcs import stream_gcs
from worker.providers.registry import register

INLINE = "inline"
# A well-formed operation id that no operation has: NOT_FOUND proves the key was accepted.
PROBE_OPERATION_ID = "00000000-0000-4000-8000-000000000000"
PROBE_FALLBACK_MODEL = "veo-3.1-fast-generate-001"
VERTEX_HOST = "aiplatform.googleapis.com"

# google-genai sends through httpx2 (a fork of httpx under its own name) when it is
# installed, through httpx otherwise: transport errors can come from either.
_NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)
_TRANSPORT: tuple[type[Exception], ...] = (httpx.HTTPError,)
try:
    import httpx2

    _NOT_SENT += (httpx2.ConnectError, httpx2.ConnectTimeout)
    _TRANSPORT += (httpx2.HTTPError,)
except ImportError:  # pragma: no cover - depends on the google-genai release
    pass

# google.rpc.Code values an operation can end with.
_GRPC_CODES = {
    3: ErrorCode.INVALID_REQUEST,  # INVALID_ARGUMENT
    5: ErrorCode.NOT_FOUND,
    7: ErrorCode.AUTH,  # PERMISSION_DENIED
    16: ErrorCode.AUTH,  # UNAUTHENTICATED
    9: ErrorCode.INVALID_REQUEST,  # FAILED_PRECONDITION
    11: ErrorCode.INVALID_REQUEST,  # OUT_OF_RANGE
}
_GRPC_DEADLINE_EXCEEDED = 4
_SAFETY_WORDS = ("responsible ai", "safety", "violate", "policy", "sensitive")


def map_genai_error(exc: Exception, *, creating: bool = False) -> ProviderError:
    """Map an SDK or transport exception onto our error classes."""
    if isinstance(exc, genai_errors.APIError):
        status = int(exc.code or 0)
        message = exc.message or str(exc)
        provider_code = exc.status or str(status)
        filtered = any(word in message.lower() for word in _SAFETY_WORDS)
        return error_for_status(status, message, provider_code, creating=creating, content_filtered=filtered)
    if isinstance(exc, _NOT_SENT):
        return ProviderError(ErrorCode.TIMEOUT, f"Vertex AI unreachable: {exc!r}", request_sent=False)
    if isinstance(exc, _TRANSPORT):
        return ProviderError(ErrorCode.TIMEOUT, f"Vertex AI call broke: {exc!r}")
    return ProviderError(ErrorCode.UPSTREAM, f"Vertex AI answered something unexpected: {exc!r}")


def operation_state(op: Any, duration_s: int) -> TaskState:
    """Our view of a GenerateVideosOperation (billing: seconds generated)."""
    if not getattr(op, "done", False):
        return TaskState(status=TaskStatus.RUNNING, provider_status="running")
    error = getattr(op, "error", None)
    if error:
        grpc_code = int(error.get("code", 0) or 0)
        message = str(error.get("message") or "operation failed")
        if grpc_code == _GRPC_DEADLINE_EXCEEDED:
            return TaskState(status=TaskStatus.EXPIRED, provider_status="deadline_exceeded", error_message=message)
        return TaskState(
            status=TaskStatus.FAILED,
            provider_status="failed",
            error_code=_GRPC_CODES.get(grpc_code, ErrorCode.UPSTREAM),
            error_message=message,
            provider_error_code=str(grpc_code),
        )
    response = getattr(op, "response", None)
    videos = list(getattr(response, "generated_videos", None) or [])
    filtered = int(getattr(response, "rai_media_filtered_count", 0) or 0)
    reasons = [str(r) for r in getattr(response, "rai_media_filtered_reasons", None) or [] if r]
    if not videos:
        # Either sign is the safety filter: Vertex AI has been seen to send the reasons
        # without a count (the count is optional in the response), and the reasons are
        # what tells the user why.
        if filtered or reasons:
            what = f"{filtered} video(s)" if filtered else "the video"
            return TaskState(
                status=TaskStatus.FAILED,
                provider_status="filtered",
                error_code=ErrorCode.CONTENT_FILTERED,
                error_message=f"Veo filtered {what}: {'; '.join(reasons) or 'no reason given'}",
                provider_error_code="RAI_MEDIA_FILTERED",
            )
        return TaskState(
            status=TaskStatus.FAILED,
            provider_status="empty",
            error_code=ErrorCode.UPSTREAM,
            error_message="Veo finished without a video",
        )
    video = videos[0].video
    uri = getattr(video, "uri", None)
    if not uri and not getattr(video, "video_bytes", None):
        raise ProviderError(ErrorCode.UPSTREAM, "Veo returned a video with neither bytes nor a URI")
    return TaskState(
        status=TaskStatus.SUCCEEDED,
        provider_status="succeeded",
        video_url=uri or INLINE,
        billed_units=duration_s * len(videos),
    )


def genai_client(settings: Settings, timeout_s: float) -> genai.Client:
    """A Vertex AI client for the configured credentials (express-mode key, else project
    and location with application default credentials), with the SDK's retries off.
    ProviderError(AUTH) when neither is configured."""
    options = types.HttpOptions(base_url=settings.veo_base_url, timeout=int(timeout_s * 1000), retry_options=None)
    if settings.google_api_key is not None:
        return genai.Client(vertexai=True, api_key=settings.google_api_key.get_secret_value(), http_options=options)
    if settings.google_cloud_project:
        return genai.Client(
            vertexai=True,
            project=settings.google_cloud_project,
            location=settings.google_cloud_location,
            http_options=options,
        )
    raise ProviderError(
        ErrorCode.AUTH, "set GOOGLE_API_KEY (express mode) or GOOGLE_CLOUD_PROJECT + GOOGLE_CLOUD_LOCATION"
    )


@register
class VeoProvider:
    """Veo on Vertex AI."""

    name = "veo"
    # The video is fetched again from the operation (its name is `provider_task_id`) or from
    # our own gs:// bucket; Vertex AI documents no retention for either, so the attempt is
    # made and the provider's answer decides.
    result_ttl_s = None

    def __init__(self, settings: Settings, http: httpx.Client) -> None:
        self._client = genai_client(settings, settings.provider_timeout_s)
        self._http = http
        self._output_gcs_uri = settings.veo_output_gcs_uri
        self._fetch_allow = settings.fetch_allow_list
        self._fetch_timeout_s = settings.fetch_timeout_s

    @classmethod
    def endpoint(cls, settings: Settings) -> Endpoint:
        if settings.google_api_key is not None:
            base = (settings.veo_base_url or f"https://{VERTEX_HOST}").rstrip("/")
            account: tuple[str, ...] = ("key", settings.google_api_key.get_secret_value())
        else:
            location = settings.google_cloud_location
            base = (settings.veo_base_url or f"https://{location}-{VERTEX_HOST}").rstrip("/")
            account = ("project", settings.google_cloud_project or "", location)
        return Endpoint(cls.name, host_of(base), fingerprint(cls.name, base, *account))

    @classmethod
    def missing_credentials(cls, settings: Settings) -> str | None:
        if settings.google_api_key is None and not settings.google_cloud_project:
            return "GOOGLE_API_KEY or GOOGLE_CLOUD_PROJECT"
        return None

    @classmethod
    def probe(cls, settings: Settings, timeout_s: float) -> Probe:
        """fetchPredictOperation of a made-up operation of the default Veo model:
        NOT_FOUND means the credentials passed, 401/403 (or Google's API_KEY_INVALID) that
        they did not."""
        model = load_catalog(settings.pricing_file).default_model(cls.name) or PROBE_FALLBACK_MODEL
        resource = f"publishers/google/models/{model}"
        project, location = settings.google_cloud_project, settings.google_cloud_location
        if settings.google_api_key is not None:
            mode, what = "express mode", "GOOGLE_API_KEY"
        else:
            mode, what = f"project {project} in {location}", "the application default credentials"
            resource = f"projects/{project}/locations/{location}/{resource}"
        where = safe_url(settings.veo_base_url) if settings.veo_base_url else "Vertex AI"
        # As `get` rebuilds an operation from its name between polls.
        name = f"{resource}/operations/{PROBE_OPERATION_ID}"
        operation = types.GenerateVideosOperation.model_validate({"name": name})
        try:
            with genai_client(settings, timeout_s) as client:
                client.operations.get(operation)
        except genai_errors.APIError as exc:
            said = f"{exc.code} {exc.status or ''}: {exc.message or ''}".strip()
            code = map_genai_error(exc).code
            if code is ErrorCode.NOT_FOUND:
                return Probe(Status.OK, f"{what} accepted by {where}, {mode} (made-up operation: {exc.code})")
            rejected_key = exc.code == 400 and "api key" in (exc.message or "").lower()
            if code is ErrorCode.AUTH or rejected_key:
                return Probe(Status.FAIL, f"{what} rejected by {where}, {mode} ({said})")
            if code is ErrorCode.RATE_LIMITED:
                return Probe(Status.WARN, f"{where} is rate limiting, {mode} ({said})")
            return Probe(Status.WARN, f"{where} answered an error, credentials not confirmed, {mode} ({said})")
        except Exception as exc:  # noqa: BLE001 - transport errors, missing default credentials
            error = map_genai_error(exc)
            if error.code is ErrorCode.TIMEOUT:
                return Probe(Status.FAIL, f"cannot reach {where}: {error.message}")
            return Probe(Status.FAIL, f"cannot call {where}, {mode}: {type(exc).__name__}: {exc}")
        return Probe(Status.OK, f"{what} accepted by {where}, {mode}")

    def _image(self, image: ImageInput) -> types.Image:
        if image.data is not None:
            return types.Image(image_bytes=image.data, mime_type=image.mime_type)
        assert image.url is not None
        if image.url.startswith("gs://"):
            return types.Image(gcs_uri=image.url)
        data, mime = fetch_image(image.url, self._fetch_allow, MAX_IMAGE_BYTES, self._fetch_timeout_s)
        return types.Image(image_bytes=data, mime_type=mime)

    def create(self, job: JobRecord, images: dict[str, ImageInput]) -> str:
        request = job.request
        first = images.get("first_frame")
        last = images.get("last_frame")
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            duration_seconds=request.duration,
            aspect_ratio=request.ratio,
            resolution=request.resolution,
            generate_audio=request.audio,
            seed=request.seed,
            negative_prompt=request.negative_prompt,
            person_generation=request.person_generation,
            last_frame=self._image(last) if last else None,
            output_gcs_uri=self._output_gcs_uri,
        )
        source = types.GenerateVideosSource(prompt=request.prompt, image=self._image(first) if first else None)
        try:
            operation = self._client.models.generate_videos(model=job.model, source=source, config=config)
        except Exception as exc:  # the SDK raises its own, httpx's and pydantic's errors
            raise map_genai_error(exc, creating=True) from exc
        if not operation.name:
            raise ProviderError(ErrorCode.UPSTREAM, "Vertex AI returned an operation without a name")
        return operation.name

    def find_created(self, job: JobRecord, since: datetime) -> Lookup:
        # Vertex AI cannot list predictLongRunning operations: we cannot tell.
        return Lookup(complete=False)

    def _operation(self, name: str) -> Any:
        try:
            operation = types.GenerateVideosOperation.model_validate({"name": name})
            return self._client.operations.get(operation)
        except Exception as exc:
            raise map_genai_error(exc) from exc

    def get(self, job: JobRecord) -> TaskState:
        assert job.provider_task_id is not None
        return operation_state(self._operation(job.provider_task_id), job.request.duration)

    def cancel(self, task_id: str) -> bool:
        # predictLongRunning operations cannot be cancelled through the API.
        return False

    @contextmanager
    def open_video(self, job: JobRecord) -> Iterator[VideoStream]:
        if job.video_url and job.video_url.startswith("gs://"):
            with stream_gcs(self._http, job.video_url) as stream:
                yield stream
            return
        if not job.provider_task_id:
            raise ProviderError(ErrorCode.UPSTREAM, "job has no operation name")
        # Inline results live in the operation; fetch it again rather than keep bytes in Redis.
        state_op = self._operation(job.provider_task_id)
        videos = list(getattr(getattr(state_op, "response", None), "generated_videos", None) or [])
        data = getattr(videos[0].video, "video_bytes", None) if videos else None
        if not data:
            raise ProviderError(ErrorCode.UPSTREAM, "the finished operation no longer carries the video")
        view = memoryview(data)
        yield VideoStream(
            chunks=(bytes(view[i : i + CHUNK_BYTES]) for i in range(0, len(view), CHUNK_BYTES)), size=len(data)
        )
