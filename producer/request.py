"""What a user asks for (`VideoRequest`) and its check against the model catalog.

A request is checked twice: its own shape by pydantic (types, unknown fields, prompt
limits), then against the chosen model's capabilities by `resolve`. Both raise
`InvalidRequestError`, which names each bad field, before anything is stored or sent.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from videoqueue.catalog import Catalog, ModelSpec
from videoqueue.errors import InvalidRequestError
from videoqueue.images import ImageFile, read_image_file
from videoqueue.resolved import (
    DEFAULT_PRIORITY,
    DEFAULT_TENANT,
    FINAL_EVENTS,
    MAX_PRIORITY,
    MIN_PRIORITY,
    TENANT_RULE,
    WEBHOOK_EVENTS,
    ImageRole,
    ImageSource,
    ImageUpload,
    ImageUrl,
    ResolvedRequest,
    is_tenant_name,
)

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**32 - 1
MAX_TAGS = 20
# A Celery task name (`myapp.tasks.on_video`) or queue name, as the completion task takes them.
_CELERY_NAME = r"^[A-Za-z_][A-Za-z0-9_.:@-]{0,199}$"
MAX_WEBHOOK_URL_CHARS = 2048

# Older ModelArk integrations wrote generation parameters into the prompt text
# (`--dur 10 --rt 9:16 --rs 1080p --wm true`); ModelArk warns against mixing them with the
# request fields we send, so such a prompt is refused, naming what to use instead.
# Each flag maps to its request field, or None where videoqueue has none.
_PROMPT_PARAMETERS: dict[str, str | None] = {
    "duration": "duration",
    "dur": "duration",
    "ratio": "ratio",
    "rt": "ratio",
    "resolution": "resolution",
    "rs": "resolution",
    "seed": "seed",
    "fps": None,
    "framespersecond": None,
    "camerafixed": None,
    "cf": None,
    "watermark": None,
    "wm": None,
}
_NO_FIELD_WHAT = {
    "fps": "frame rate",
    "framespersecond": "frame rate",
    "camerafixed": "fixed camera",
    "cf": "fixed camera",
    "watermark": "watermark",
    "wm": "watermark",
}
# `--name value` or `--name=value` as whole words, with a value such parameters take (a
# number, a ratio, a resolution, true/false, adaptive/keep_ratio): "well--known", "wait --
# what?" or "a --seed of doubt" are ordinary text.
_PROMPT_PARAMETER_RE = re.compile(
    r"(?<![\w-])--(" + "|".join(sorted(_PROMPT_PARAMETERS, key=len, reverse=True)) + r")"
    r"(?:\s*=\s*|\s+)"
    r"(-?\d+(?:\.\d+)?(?::\d+)?p?|\d+k|true|false|adaptive|keep_ratio)(?![\w-]|[:.]\d)",
    re.IGNORECASE,
)


def prompt_parameter_problems(prompt: str) -> list[str]:
    """What is wrong with each ModelArk-style `--parameter value` in `prompt` (empty if none)."""
    problems = []
    for match in _PROMPT_PARAMETER_RE.finditer(prompt):
        name = match.group(1).lower()
        field = _PROMPT_PARAMETERS[name]
        said = f"prompt carries {match.group(0)}"
        if field is not None:
            problems.append(f"{said}: use the request field {field} instead")
        else:
            problems.append(
                f"{said}: videoqueue has no request field for the {_NO_FIELD_WHAT[name]} (the provider's default "
                "applies); remove it from the prompt"
            )
    return problems


class VideoRequest(BaseModel):
    """One create-video job as a user describes it. Unset fields take the model's defaults."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str
    provider: str | None = None
    model: str | None = None
    duration: int | None = None
    resolution: str | None = None
    ratio: str | None = None
    audio: bool | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    service_tier: Literal["default", "flex"] | None = None
    image_url: str | None = None
    image_file: str | None = None
    last_frame_url: str | None = None
    last_frame_file: str | None = None
    negative_prompt: str | None = None
    person_generation: str | None = None
    tags: tuple[str, ...] = Field(default=(), strict=False)
    client_job_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    priority: int = DEFAULT_PRIORITY
    tenant: str = DEFAULT_TENANT
    on_complete: str | None = Field(default=None, pattern=_CELERY_NAME)
    on_complete_queue: str | None = Field(default=None, pattern=_CELERY_NAME)
    webhook_url: str | None = Field(default=None, max_length=MAX_WEBHOOK_URL_CHARS)
    webhook_events: tuple[str, ...] | None = Field(default=None, strict=False)

    if not TYPE_CHECKING:  # type checkers keep the field-by-field signature pydantic gives

        def __init__(self, /, **data: Any) -> None:
            """Raises `InvalidRequestError` (one message per bad field, unknown fields
            included), never pydantic's ValidationError."""
            try:
                super().__init__(**data)
            except ValidationError as exc:
                raise InvalidRequestError(problems_of(exc)) from None

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_is_text(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("must not be empty")
        if len(value) > MAX_PROMPT_CHARS:
            raise ValueError(f"is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")
        for char in value:
            if char not in "\n\t" and unicodedata.category(char) in {"Cc", "Cs", "Co", "Cn"}:
                raise ValueError(f"contains a control or non-text character {char!r}")
        # Letters, marks, numbers, punctuation or symbols: zero-width and format characters
        # alone are as empty as spaces.
        if not any(unicodedata.category(c)[0] in "LMNPS" for c in value):
            raise ValueError("must contain visible text")
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt_has_no_parameters(cls, value: str) -> str:
        problems = prompt_parameter_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @field_validator("image_url", "last_frame_url")
    @classmethod
    def _image_url_is_http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if any(c.isspace() for c in value):
            raise ValueError("must not contain whitespace")
        if parts.username is not None or parts.password is not None:
            # It would be stored in the job record and shown to everyone who reads it.
            raise ValueError("must not contain a user name or password")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url_is_http(cls, value: str | None) -> str | None:
        # The scheme and the address it leads to are checked at submit, with the settings
        # (videoqueue.webhooks.check_url): WEBHOOK_ALLOW_HTTP, WEBHOOK_ALLOW_PRIVATE.
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an https:// URL with a host")
        if any(c.isspace() for c in value):
            raise ValueError("must not contain whitespace")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not contain a user name or password")
        return value

    @field_validator("webhook_events")
    @classmethod
    def _webhook_events_are_known(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("name at least one event (or leave it out: the final events)")
        unknown = [name for name in value if name not in WEBHOOK_EVENTS and name != "final"]
        if unknown:
            raise ValueError(
                f"unknown event {unknown[0]!r}; known: final ({', '.join(FINAL_EVENTS)}), started, progress"
            )
        return value

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_in_range(cls, value: object) -> object:
        # Before pydantic's own check, so that "high", 5.5, True and 10 all get this message.
        if type(value) is not int or not MIN_PRIORITY <= value <= MAX_PRIORITY:
            raise ValueError(
                f"must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY} (higher first; "
                f"default {DEFAULT_PRIORITY}), not {value!r}"
            )
        return value

    @field_validator("tenant", mode="before")
    @classmethod
    def _tenant_is_a_name(cls, value: object) -> object:
        if not is_tenant_name(value):
            raise ValueError(f"{TENANT_RULE}, not {_shown(value)}")
        return value

    @field_validator("tags")
    @classmethod
    def _tags_are_short(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(value) > MAX_TAGS:
            raise ValueError(f"at most {MAX_TAGS} tags")
        for tag in value:
            if not tag or len(tag) > 64 or not tag.isprintable() or any(c.isspace() for c in tag):
                raise ValueError(f"tag {tag!r} must be 1-64 printable characters without spaces")
        return value

    @classmethod
    def parse(cls, data: Any) -> VideoRequest:
        """Build a request from loose data (a dict or JSON text), raising
        `InvalidRequestError` with one message per bad field."""
        if isinstance(data, VideoRequest):
            return data
        if not isinstance(data, str | bytes | dict):
            what = type(data).__name__
            raise InvalidRequestError({"request": f"must be a VideoRequest, a dict or JSON text, not {what}"})
        try:
            if isinstance(data, str | bytes):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequestError(problems_of(exc)) from None


def problems_of(exc: ValidationError) -> dict[str, str]:
    """What each field of a request pydantic refused has wrong (field -> message)."""
    problems: dict[str, str] = {}
    for err in exc.errors():
        inner = err.get("ctx", {}).get("error")
        if isinstance(inner, InvalidRequestError):
            # model_validate runs our __init__, whose error pydantic wraps once more.
            problems.update(inner.problems)
            continue
        field = ".".join(str(p) for p in err["loc"]) or "request"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (check the spelling)"
        problems.setdefault(field, message.removeprefix("Value error, "))
    return problems


def repeated_client_ids(client_ids: Sequence[str | None]) -> dict[int, int]:
    """Where a batch of requests repeats a client job id: for each position (index into
    `client_ids`) whose id an earlier one already gave, the position that gave it first."""
    first: dict[str, int] = {}
    repeats: dict[int, int] = {}
    for index, client_id in enumerate(client_ids):
        if client_id is None:
            continue
        if client_id in first:
            repeats[index] = first[client_id]
        else:
            first[client_id] = index
    return repeats


def resolve(
    request: VideoRequest, catalog: Catalog, default_provider: str
) -> tuple[ResolvedRequest, dict[str, ImageFile]]:
    """Fill in defaults from the chosen model and check the request against what that model
    supports. Returns the full set of parameters a worker needs (the seed is still None when
    the user gave none), and the local image files (read and checked) by role."""
    problems: dict[str, str] = {}
    provider = request.provider or default_provider
    if provider not in catalog.providers():
        raise InvalidRequestError(
            {"provider": f"unknown provider {provider!r}; known: {', '.join(catalog.providers())}"}
        )
    model_id = request.model or catalog.default_model(provider)
    spec: ModelSpec | None = catalog.get(model_id) if model_id else None
    if spec is None:
        known = ", ".join(sorted(m for m, s in catalog.models.items() if s.provider == provider))
        raise InvalidRequestError({"model": f"unknown model {model_id!r}; known: {known}"})
    if spec.provider != provider:
        raise InvalidRequestError({"model": f"{spec.id} is a {spec.provider} model, not {provider}"})

    duration = request.duration if request.duration is not None else _default_duration(spec)
    resolution = request.resolution or ("720p" if "720p" in spec.resolutions else spec.resolutions[0])
    ratio = request.ratio or ("16:9" if "16:9" in spec.ratios else spec.ratios[0])
    audio = request.audio if request.audio is not None else spec.audio
    tier = request.service_tier or "default"

    # Checked by the model's validator too; again here for a request built without validation.
    parameters = prompt_parameter_problems(request.prompt)
    if parameters:
        problems["prompt"] = "; ".join(parameters)
    if duration not in spec.durations:
        problems["duration"] = f"{duration} s is not supported by {spec.id}; choose one of {_list(spec.durations)}"
    if resolution not in spec.resolutions:
        problems["resolution"] = (
            f"{resolution!r} is not supported by {spec.id}; choose one of {_list(spec.resolutions)}"
        )
    if ratio not in spec.ratios:
        problems["ratio"] = f"{ratio!r} is not supported by {spec.id}; choose one of {_list(spec.ratios)}"
    if audio and not spec.audio:
        problems["audio"] = f"{spec.id} does not generate audio"
    if tier not in spec.service_tiers:
        problems["service_tier"] = f"{tier!r} is not offered for {spec.id}"
    if request.negative_prompt is not None and not spec.negative_prompt:
        problems["negative_prompt"] = f"{spec.id} does not take a negative prompt"
    if request.person_generation is not None and request.person_generation not in spec.person_generation:
        allowed = _list(spec.person_generation) if spec.person_generation else "nothing (not supported)"
        problems["person_generation"] = (
            f"{request.person_generation!r} is not allowed for {spec.id}; allowed: {allowed}"
        )
    images, files = _images(request, spec, problems)
    events = _notifications(request, problems)
    if problems:
        raise InvalidRequestError(problems)

    resolved = ResolvedRequest(
        prompt=request.prompt,
        provider=provider,
        model=spec.id,
        duration=duration,
        resolution=resolution,
        ratio=ratio,
        audio=audio,
        seed=request.seed,
        service_tier=tier,
        images=images,
        negative_prompt=request.negative_prompt,
        person_generation=request.person_generation,
        tags=request.tags,
        client_job_id=request.client_job_id,
        priority=request.priority,
        tenant=request.tenant,
        on_complete=request.on_complete,
        on_complete_queue=request.on_complete_queue,
        webhook_url=request.webhook_url,
        webhook_events=events,
    )
    return resolved, files


def webhook_events(names: Sequence[str] | None) -> tuple[str, ...]:
    """The events `names` asks for, each once, in `WEBHOOK_EVENTS` order (`final` stands
    for the four final ones); the final events when `names` is None."""
    if names is None:
        return FINAL_EVENTS
    wanted = {e for name in names for e in (FINAL_EVENTS if name == "final" else (name,))}
    return tuple(e for e in WEBHOOK_EVENTS if e in wanted)


def _notifications(request: VideoRequest, problems: dict[str, str]) -> tuple[str, ...]:
    """The webhook events of `request`, noting in `problems` a field given without the one
    it goes with (the settings' checks of the URL come at submit: videoqueue.webhooks)."""
    if request.on_complete_queue is not None and request.on_complete is None:
        problems["on_complete_queue"] = "goes with on_complete (the task to send there)"
    if request.webhook_events is not None and request.webhook_url is None:
        problems["webhook_events"] = "goes with webhook_url (where to send them)"
    return webhook_events(request.webhook_events)


IMAGE_FIELDS: dict[ImageRole, tuple[str, str]] = {
    "first_frame": ("image_url", "image_file"),
    "last_frame": ("last_frame_url", "last_frame_file"),
}
"""The `VideoRequest` fields that give the image of each role: (its URL, its local file)."""


def _images(
    request: VideoRequest, spec: ModelSpec, problems: dict[str, str]
) -> tuple[dict[ImageRole, ImageSource], dict[str, ImageFile]]:
    """Image inputs by role: a URL is passed on as it is; a local file is read and checked."""
    images: dict[ImageRole, ImageSource] = {}
    files: dict[str, ImageFile] = {}
    for role, (url_field, file_field) in IMAGE_FIELDS.items():
        url, path = getattr(request, url_field), getattr(request, file_field)
        if url is None and path is None:
            continue
        if url is not None and path is not None:
            problems[file_field] = f"give {url_field} or {file_field}, not both"
            continue
        if role not in spec.image_roles:
            problems[url_field if url else file_field] = f"{spec.id} does not take a {role.replace('_', ' ')} image"
            continue
        if url is not None:
            images[role] = ImageUrl(url=url)
            continue
        try:
            image = read_image_file(path, spec.max_image_bytes)
        except ValueError as exc:
            problems[file_field] = str(exc)
            continue
        files[role] = image
        images[role] = ImageUpload(
            file=image.name, mime_type=image.mime_type, bytes=len(image.data), sha256=image.sha256
        )
    if "last_frame" in images and "first_frame" not in images and not problems:
        problems["last_frame_url" if request.last_frame_url else "last_frame_file"] = (
            "a last frame needs a first frame (image_url or image_file)"
        )
    return images, files


def _default_duration(spec: ModelSpec) -> int:
    return 5 if 5 in spec.durations else spec.durations[0]


def _shown(value: object) -> str:
    """`value` as an error message shows it: its repr, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _list(values: tuple[Any, ...]) -> str:
    return ", ".join(str(v) for v in values)
