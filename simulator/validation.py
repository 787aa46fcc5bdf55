"""Model rules, request validation and token accounting of the ModelArk emulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.responses import JSONResponse

from simulator.markers import MarkerError, Markers, parse_markers


@dataclass(frozen=True)
class ModelRule:
    """What one Seedance model accepts."""

    min_duration: int
    max_duration: int
    resolutions: tuple[str, ...]
    audio: bool


_ALL_RES = ("480p", "720p", "1080p")
MODELS: dict[str, ModelRule] = {
    "seedance-1-5-pro-251215": ModelRule(4, 12, _ALL_RES, audio=True),
    "seedance-1-0-pro-250528": ModelRule(2, 12, _ALL_RES, audio=False),
    "seedance-1-0-pro-fast-251015": ModelRule(2, 12, _ALL_RES, audio=False),
}
RATIOS = ("16:9", "4:3", "1:1", "3:4", "9:16", "21:9", "adaptive")
SERVICE_TIERS = ("default", "flex")
IMAGE_ROLES = ("first_frame", "last_frame")
IMAGE_URL_PREFIXES = ("http://", "https://", "data:image/")
MAX_EXPIRES_AFTER = 259200
FPS = 24

PIXELS: dict[str, dict[str, tuple[int, int]]] = {
    "480p": {
        "16:9": (864, 496),
        "4:3": (752, 560),
        "1:1": (640, 640),
        "3:4": (560, 752),
        "9:16": (496, 864),
        "21:9": (992, 432),
    },
    "720p": {
        "16:9": (1248, 704),
        "4:3": (1120, 832),
        "1:1": (960, 960),
        "3:4": (832, 1120),
        "9:16": (704, 1248),
        "21:9": (1504, 640),
    },
    "1080p": {
        "16:9": (1920, 1088),
        "4:3": (1664, 1248),
        "1:1": (1440, 1440),
        "3:4": (1248, 1664),
        "9:16": (1088, 1920),
        "21:9": (2176, 928),
    },
}


def completion_tokens(resolution: str, ratio: str, duration: int) -> int:
    """Return the tokens billed for a video: width * height * frames / 1024."""
    width, height = PIXELS[resolution]["16:9" if ratio == "adaptive" else ratio]
    return width * height * (FPS * duration + 1) // 1024


class ApiError(Exception):
    """An error answered in the ModelArk JSON error format."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type_: str,
        param: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type_
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """Render the error as the JSON response the real service sends."""
        body = {
            "error": {
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "type": self.type,
            }
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid(param: str, detail: str) -> ApiError:
    """Return a 400 InvalidParameter error naming ``param``."""
    message = f"The parameter `{param}` specified in the request is not valid: {detail}."
    return ApiError(400, "InvalidParameter", message, type_="BadRequest", param=param)


@dataclass(frozen=True)
class TaskSpec:
    """A validated create request with defaults applied (seed None = pick at random)."""

    model: str
    prompt: str
    duration: int
    resolution: str
    ratio: str
    generate_audio: bool
    service_tier: str
    execution_expires_after: int
    seed: int | None
    images: tuple[tuple[str, str], ...] = ()
    markers: Markers = field(default_factory=Markers)
    # Where to POST the task when its status changes (simulator/callbacks.py); None: nowhere.
    callback_url: str | None = None
    # `return_last_frame`: the finished task carries `content.last_frame_url`, a PNG.
    return_last_frame: bool = False


def _opt(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int subclass; a JSON true must not pass as a duration.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise invalid(name, f"expected {kind.__name__}, got {value!r}")
    return value


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...], default: str) -> str:
    value: str = _opt(body, name, str, default)
    if value not in allowed:
        raise invalid(name, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _parse_content(content: Any) -> tuple[str, tuple[tuple[str, str], ...]]:
    if not isinstance(content, list) or not content:
        raise invalid("content", "must be a non-empty list")
    texts: list[str] = []
    images: list[tuple[str, str]] = []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                raise invalid("content", "text item must have non-empty text")
            texts.append(text)
        elif kind == "image_url":
            images.append(_parse_image(item))
        else:
            raise invalid("content", f"unsupported content item type {kind!r}")
    if len(texts) != 1:
        raise invalid("content", f"expected exactly one text item, got {len(texts)}")
    roles = [role for role, _ in images]
    if any(roles.count(role) > 1 for role in IMAGE_ROLES):
        raise invalid("content", "at most one first_frame and one last_frame image")
    if "last_frame" in roles and "first_frame" not in roles:
        raise invalid("content", "a last_frame image requires a first_frame image")
    return texts[0], tuple(images)


def _parse_image(item: dict[str, Any]) -> tuple[str, str]:
    image = item.get("image_url")
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or not url.startswith(IMAGE_URL_PREFIXES):
        raise invalid("content", "image_url.url must be an http(s) URL or a data:image/ URI")
    role = item.get("role") or "first_frame"
    if role not in IMAGE_ROLES:
        raise invalid("content", f"image role {role!r} is not one of {', '.join(IMAGE_ROLES)}")
    return role, url


def parse_create(body: Any) -> TaskSpec:
    """Validate a create-task body as the SDK sends it (null means "not given")."""
    if not isinstance(body, dict):
        raise invalid("body", "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "a model name is required")
    rule = MODELS.get(model)
    if rule is None:
        message = f"The model or endpoint {model} does not exist or you do not have access to it."
        raise ApiError(404, "InvalidEndpointOrModel.NotFound", message, type_="NotFound", param="model")
    prompt, images = _parse_content(body.get("content"))

    duration: int = _opt(body, "duration", int, 5)
    if not rule.min_duration <= duration <= rule.max_duration:
        limits = f"{rule.min_duration}..{rule.max_duration}"
        raise invalid("duration", f"{duration} is outside {limits} for model {model}")
    resolution = _choice(body, "resolution", rule.resolutions, "720p")
    ratio = _choice(body, "ratio", RATIOS, "16:9")
    generate_audio: bool = _opt(body, "generate_audio", bool, rule.audio)
    if generate_audio and not rule.audio:
        raise invalid("generate_audio", f"model {model} cannot generate audio")
    service_tier = _choice(body, "service_tier", SERVICE_TIERS, "default")
    # The real service requires >= 3600; shorter values are allowed so tests can see expiry.
    expires: int = _opt(body, "execution_expires_after", int, 172800)
    if not 1 <= expires <= MAX_EXPIRES_AFTER:
        raise invalid("execution_expires_after", f"{expires} is outside 1..{MAX_EXPIRES_AFTER}")
    seed: int | None = _opt(body, "seed", int, None)
    if seed is not None and not -1 <= seed <= 2**32 - 1:
        raise invalid("seed", f"{seed} is outside -1..4294967295")
    callback_url: str | None = _opt(body, "callback_url", str, None)
    if callback_url is not None and not callback_url.startswith(("http://", "https://")):
        raise invalid("callback_url", "must be an http:// or https:// URL")
    return_last_frame: bool = _opt(body, "return_last_frame", bool, False)
    try:
        markers = parse_markers(prompt)
    except MarkerError as err:
        raise invalid("content", str(err)) from None
    return TaskSpec(
        model=model,
        prompt=prompt,
        duration=duration,
        resolution=resolution,
        ratio=ratio,
        generate_audio=generate_audio,
        service_tier=service_tier,
        execution_expires_after=expires,
        seed=None if seed == -1 else seed,
        images=images,
        markers=markers,
        callback_url=callback_url,
        return_last_frame=return_last_frame,
    )
