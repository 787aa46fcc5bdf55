"""How Vertex AI (Veo) operations and SDK errors map onto ours."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from google.genai import errors as genai_errors

from videoqueue.job import ErrorCode
from worker.providers.base import ProviderError, TaskStatus
from worker.providers.veo import INLINE, map_genai_error, operation_state


def _api_error(status: int, status_name: str, message: str) -> genai_errors.APIError:
    body = {"error": {"code": status, "message": message, "status": status_name}}
    cls = genai_errors.ClientError if status < 500 else genai_errors.ServerError
    return cls(status, body)


@pytest.mark.parametrize(
    ("status", "name", "message", "ours"),
    [
        (400, "INVALID_ARGUMENT", "durationSeconds must be 4, 6 or 8", ErrorCode.INVALID_REQUEST),
        (400, "INVALID_ARGUMENT", "The prompt may violate our usage policy", ErrorCode.CONTENT_FILTERED),
        (401, "UNAUTHENTICATED", "API key not valid", ErrorCode.AUTH),
        (403, "PERMISSION_DENIED", "denied", ErrorCode.AUTH),
        (404, "NOT_FOUND", "no such operation", ErrorCode.NOT_FOUND),
        (429, "RESOURCE_EXHAUSTED", "Quota exceeded", ErrorCode.RATE_LIMITED),
        (500, "INTERNAL", "boom", ErrorCode.UPSTREAM),
        (503, "UNAVAILABLE", "try later", ErrorCode.UPSTREAM),
    ],
)
def test_http_errors(status: int, name: str, message: str, ours: ErrorCode) -> None:
    mapped = map_genai_error(_api_error(status, name, message))
    assert (mapped.code, mapped.provider_code, mapped.message) == (ours, name, message)


def test_404_on_create_is_an_unknown_model() -> None:
    assert map_genai_error(_api_error(404, "NOT_FOUND", "model"), creating=True).code is ErrorCode.INVALID_REQUEST


def test_transport_errors_tell_whether_the_request_was_sent() -> None:
    refused = map_genai_error(httpx.ConnectError("refused"))
    slow = map_genai_error(httpx.ReadTimeout("slow"))
    assert (refused.code, refused.request_sent) == (ErrorCode.TIMEOUT, False)
    assert (slow.code, slow.request_sent) == (ErrorCode.TIMEOUT, True)
    assert map_genai_error(ValueError("odd")).code is ErrorCode.UPSTREAM


def _op(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(**{"done": True, "error": None, "response": None, **fields})


def _videos(*videos: SimpleNamespace, filtered: int = 0) -> SimpleNamespace:
    return SimpleNamespace(
        generated_videos=[SimpleNamespace(video=v) for v in videos],
        rai_media_filtered_count=filtered,
        rai_media_filtered_reasons=["may violate Responsible AI practices"] if filtered else None,
    )


def test_not_done_is_running() -> None:
    assert operation_state(_op(done=None), 8).status is TaskStatus.RUNNING


def test_inline_and_gcs_results_bill_the_seconds_generated() -> None:
    inline = operation_state(_op(response=_videos(SimpleNamespace(uri=None, video_bytes=b"mp4"))), 6)
    assert (inline.status, inline.video_url, inline.billed_units) == (TaskStatus.SUCCEEDED, INLINE, 6)
    two = _videos(SimpleNamespace(uri="gs://b/0.mp4", video_bytes=None), SimpleNamespace(uri="gs://b/1.mp4"))
    stored = operation_state(_op(response=two), 8)
    assert (stored.video_url, stored.billed_units) == ("gs://b/0.mp4", 16)


def test_safety_filter_is_content_filtered_with_the_reasons() -> None:
    state = operation_state(_op(response=_videos(filtered=1)), 8)
    assert (state.status, state.error_code) == (TaskStatus.FAILED, ErrorCode.CONTENT_FILTERED)
    assert state.error_message == "Veo filtered 1 video(s): may violate Responsible AI practices"


@pytest.mark.parametrize("count", [None, 0])
def test_filter_reasons_without_a_count_are_content_filtered(count: int | None) -> None:
    # Issue 12: a done operation with raiMediaFilteredReasons and no raiMediaFilteredCount.
    response = SimpleNamespace(
        generated_videos=None, rai_media_filtered_count=count, rai_media_filtered_reasons=["unsafe: violence"]
    )
    state = operation_state(_op(response=response), 8)
    assert (state.status, state.error_code) == (TaskStatus.FAILED, ErrorCode.CONTENT_FILTERED)
    assert state.provider_error_code == "RAI_MEDIA_FILTERED"
    assert state.error_message == "Veo filtered the video: unsafe: violence"


@pytest.mark.parametrize(
    ("code", "status", "ours"),
    [
        (3, TaskStatus.FAILED, ErrorCode.INVALID_REQUEST),
        (7, TaskStatus.FAILED, ErrorCode.AUTH),
        (13, TaskStatus.FAILED, ErrorCode.UPSTREAM),
        (8, TaskStatus.FAILED, ErrorCode.UPSTREAM),
        (4, TaskStatus.EXPIRED, None),
    ],
)
def test_operation_errors(code: int, status: TaskStatus, ours: ErrorCode | None) -> None:
    state = operation_state(_op(error={"code": code, "message": "why"}), 8)
    assert (state.status, state.error_code, state.error_message) == (status, ours, "why")


def test_a_done_operation_without_video_is_upstream() -> None:
    assert operation_state(_op(response=_videos()), 8).error_code is ErrorCode.UPSTREAM
    with pytest.raises(ProviderError):
        operation_state(_op(response=_videos(SimpleNamespace(uri=None, video_bytes=None))), 8)
