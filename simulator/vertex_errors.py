"""Google API errors as Vertex AI answers them, and the gRPC status codes operations end with."""

from __future__ import annotations

from starlette.responses import JSONResponse

# google.rpc.Code: the numeric codes of failed operations.
GRPC_CODES: dict[str, int] = {
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

# The HTTP status each canonical error status is sent with.
HTTP_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
}

INTERNAL_MESSAGE = "Internal error encountered."
UNAVAILABLE_MESSAGE = "The service is currently unavailable."


class GoogleError(Exception):
    """An error answered as ``{"error": {"code", "message", "status"}}``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.http_status = HTTP_STATUS[status]
        self.message = message

    def response(self) -> JSONResponse:
        """Render the error as the JSON response the real service sends."""
        body = {"error": {"code": self.http_status, "message": self.message, "status": self.status}}
        return JSONResponse(body, status_code=self.http_status)


def invalid_argument(field: str, detail: str) -> GoogleError:
    """Return a 400 INVALID_ARGUMENT error naming ``field``."""
    return GoogleError("INVALID_ARGUMENT", f"Invalid value for `{field}`: {detail}.")


def quota_exceeded(model: str) -> GoogleError:
    """Return the 429 RESOURCE_EXHAUSTED error of an exhausted per-model request quota."""
    return GoogleError(
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model "
        f"with base model: {model}. Please submit a quota increase request. "
        "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.",
    )
