"""How ModelArk statuses and SDK errors map onto ours."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from byteplussdkarkruntime._exceptions import (
    ArkAPIConnectionError,
    ArkAPIResponseValidationError,
    ArkAPITimeoutError,
    ArkAuthenticationError,
    ArkBadRequestError,
    ArkInternalServerError,
    ArkNotFoundError,
    ArkPermissionDeniedError,
    ArkRateLimitError,
)

from tests.unit.helpers import seedance_request
from videoqueue.job import ErrorCode
from worker.providers.base import ImageInput, ProviderError, TaskStatus
from worker.providers.byteplus import build_content, map_ark_error, task_state

REQUEST = httpx.Request("POST", "http://sim/api/v3/contents/generations/tasks")


def _status_error(cls: Any, status: int, code: str, headers: dict[str, str] | None = None) -> Any:
    body = {"code": code, "message": f"{code} happened", "param": "", "type": "x"}
    response = httpx.Response(status, request=REQUEST, headers=headers or {}, json={"error": body})
    return cls(f"Error code: {status}", response=response, body=body, request_id="r")


@pytest.mark.parametrize(
    ("cls", "status", "code", "ours"),
    [
        (ArkBadRequestError, 400, "InvalidParameter", ErrorCode.INVALID_REQUEST),
        (ArkBadRequestError, 400, "InputTextSensitiveContentDetected", ErrorCode.CONTENT_FILTERED),
        (ArkAuthenticationError, 401, "AuthenticationError", ErrorCode.AUTH),
        (ArkPermissionDeniedError, 403, "AccessDenied", ErrorCode.AUTH),
        (ArkNotFoundError, 404, "ResourceNotFound", ErrorCode.NOT_FOUND),
        (ArkRateLimitError, 429, "RateLimitExceeded", ErrorCode.RATE_LIMITED),
        (ArkInternalServerError, 500, "InternalServiceError", ErrorCode.UPSTREAM),
        (ArkInternalServerError, 503, "ServiceUnavailable", ErrorCode.UPSTREAM),
    ],
)
def test_status_errors(cls: Any, status: int, code: str, ours: ErrorCode) -> None:
    mapped = map_ark_error(_status_error(cls, status, code))
    assert mapped.code is ours
    assert mapped.provider_code == code
    assert mapped.message == f"{code} happened"
    assert mapped.retryable is (ours in {ErrorCode.RATE_LIMITED, ErrorCode.UPSTREAM})


def test_404_on_create_is_a_bad_model_not_a_lost_task() -> None:
    exc = _status_error(ArkNotFoundError, 404, "InvalidEndpointOrModel.NotFound")
    assert map_ark_error(exc, creating=True).code is ErrorCode.INVALID_REQUEST


def test_rate_limit_carries_retry_after() -> None:
    exc = _status_error(ArkRateLimitError, 429, "RateLimitExceeded", {"Retry-After": "7"})
    assert map_ark_error(exc).retry_after == 7.0


def test_connection_refused_was_not_sent_but_read_timeout_may_have_been() -> None:
    refused = ArkAPIConnectionError(request=REQUEST, request_id="r")
    refused.__cause__ = httpx.ConnectError("refused")
    timed_out = ArkAPITimeoutError(request=REQUEST, request_id="r")
    timed_out.__cause__ = httpx.ReadTimeout("slow")
    assert map_ark_error(refused).code is ErrorCode.TIMEOUT
    assert map_ark_error(refused).request_sent is False
    assert map_ark_error(timed_out).code is ErrorCode.TIMEOUT
    assert map_ark_error(timed_out).request_sent is True


def test_bad_body_is_upstream() -> None:
    response = httpx.Response(200, request=REQUEST, json={"nope": 1})
    exc = ArkAPIResponseValidationError(response=response, body={"nope": 1}, request_id="r")
    assert map_ark_error(exc).code is ErrorCode.UPSTREAM


def _task(status: str, **fields: Any) -> SimpleNamespace:
    return SimpleNamespace(status=status, **fields)


@pytest.mark.parametrize("status", ["queued", "running", "cancelled", "expired"])
def test_plain_statuses(status: str) -> None:
    assert task_state(_task(status)).status is TaskStatus(status)


def test_succeeded_carries_url_and_tokens() -> None:
    state = task_state(
        _task(
            "succeeded",
            content=SimpleNamespace(video_url="http://v/1.mp4"),
            usage=SimpleNamespace(completion_tokens=103818),
        )
    )
    assert (state.status, state.video_url, state.billed_units) == (TaskStatus.SUCCEEDED, "http://v/1.mp4", 103818)


def test_succeeded_carries_the_finish_time_to_the_middle_of_its_second() -> None:
    done = _task(
        "succeeded",
        content=SimpleNamespace(video_url="http://v/1.mp4"),
        usage=SimpleNamespace(completion_tokens=1),
        updated_at=1_790_000_000,
    )
    finished = task_state(done).finished_at
    assert finished is not None and finished.timestamp() == 1_790_000_000.5
    assert task_state(_task("running", updated_at=1_790_000_000)).finished_at is None


def test_succeeded_without_usage_is_an_upstream_error() -> None:
    with pytest.raises(ProviderError) as info:
        task_state(_task("succeeded", content=SimpleNamespace(video_url="http://v"), usage=None))
    assert info.value.code is ErrorCode.UPSTREAM


@pytest.mark.parametrize(
    ("code", "ours"),
    [
        ("OutputVideoSensitiveContentDetected", ErrorCode.CONTENT_FILTERED),
        ("InternalServiceError", ErrorCode.UPSTREAM),
        ("InvalidParameter.Duration", ErrorCode.INVALID_REQUEST),
    ],
)
def test_failed_task(code: str, ours: ErrorCode) -> None:
    state = task_state(_task("failed", error=SimpleNamespace(code=code, message="why")))
    assert (state.status, state.error_code, state.provider_error_code, state.error_message) == (
        TaskStatus.FAILED,
        ours,
        code,
        "why",
    )


def test_unknown_status_is_upstream() -> None:
    with pytest.raises(ProviderError):
        task_state(_task("pondering"))


def test_content_has_prompt_then_frames_by_url_or_data_uri() -> None:
    images = {
        "last_frame": ImageInput(data=b"\x89PNG\r\n\x1a\nxx", mime_type="image/png"),
        "first_frame": ImageInput(url="https://i/x.png"),
    }
    request = seedance_request(
        "p",
        model="m",
    )
    assert build_content(request, images) == [
        {"type": "text", "text": "p"},
        {"type": "image_url", "image_url": {"url": "https://i/x.png"}, "role": "first_frame"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgp4eA=="},
            "role": "last_frame",
        },
    ]
