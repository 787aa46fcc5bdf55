"""A request as the job record stores it: every parameter a worker needs, with the chosen
model's defaults filled in and checked against what that model supports.

`producer.request.resolve` builds it from what a user asked for; workers, the catalog's cost
estimate, budgets and the ledger read it. Its JSON is the `request` object of a stored job
record, a manifest and `videoqueue status --json`: the field order here is the order there.
`priority`, `tenant` and the notification fields (`on_complete`, `on_complete_queue`,
`webhook_url`, `webhook_events`) are left out of that JSON while they hold their defaults,
so that records stored before they existed load and serialise back unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    model_serializer,
)

ImageRole = Literal["first_frame", "last_frame"]
"""What an input image is to the video: its first or its last frame."""

IMAGE_ROLES: tuple[ImageRole, ...] = ("first_frame", "last_frame")
"""Every image role, in the order the providers take the images."""

MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 0, 9, 5
"""A job's priority: an integer from 0 to 9, higher first, 5 when the request gives none."""

DEFAULT_TENANT = "default"
"""The tenant of a request that names none."""

TENANT_RULE = "must be 1-64 characters, each an ASCII letter, a digit, '.', '_' or '-'"
"""What a tenant name must be, as an error message says it."""

_TENANT_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

FINAL_EVENTS: tuple[str, ...] = ("succeeded", "failed", "cancelled", "expired")
"""The webhook events of a job's end, one per final status: what a request with a
`webhook_url` is told unless it names its `webhook_events`."""

WEBHOOK_EVENTS: tuple[str, ...] = (*FINAL_EVENTS, "started", "progress")
"""Every webhook event: the final ones; `started`, the provider accepted the task (the move
to `running`); `progress`, every other status change that is not an end. A delivery's
`type` is the event with `job.` before it (`job.succeeded`)."""

# Left out of the stored JSON while they hold these defaults (see the module docstring).
_OMITTED_AT_DEFAULT: dict[str, object] = {
    "priority": DEFAULT_PRIORITY,
    "tenant": DEFAULT_TENANT,
    "on_complete": None,
    "on_complete_queue": None,
    "webhook_url": None,
    "webhook_events": FINAL_EVENTS,
}
_WITH_DEFAULTS = "videoqueue.with_defaults"
_ABSENT = object()


def is_tenant_name(name: object) -> bool:
    """Whether `name` may name a tenant (`TENANT_RULE`): it becomes part of Redis keys and
    metric labels, so only ASCII letters, digits, '.', '_' and '-', 1 to 64 of them."""
    return isinstance(name, str) and _TENANT_RE.fullmatch(name) is not None


class ImageUrl(BaseModel):
    """An input image the provider fetches itself: JSON `{"url": ...}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str


class ImageUpload(BaseModel):
    """An input image read from the producer's disk and put into object storage under
    the job's key (videoqueue.inputs) until a worker sends it: JSON `{"file", "mime_type",
    "bytes", "sha256", "uri"}`, the file's base name, type, size in bytes, hex digest and
    the object's URI (`file:///...` or `s3://bucket/key`). The record holds this
    reference, never the bytes. `uri` is None (and left out of the JSON) in records stored
    before inputs moved to object storage: their bytes are in the job store's input key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    mime_type: str
    bytes: int
    sha256: str
    uri: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_uri(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("uri") is None:
            data.pop("uri", None)
        return data


ImageSource = ImageUrl | ImageUpload


class ResolvedRequest(BaseModel):
    """One job's parameters as stored: `duration` in seconds, `resolution` like "720p",
    `ratio` like "16:9", `seed` None only when the producer did not set one (it does before
    storing), `images` by role, `priority` 0-9 (higher first), `tenant` whose share of the
    quota the job counts to; `on_complete` the producer's Celery task sent the final record
    when the job ends (on `on_complete_queue`, else Celery's routing of that name);
    `webhook_url` where the `webhook_events` (`WEBHOOK_EVENTS`) are POSTed, signed
    (videoqueue.webhooks). Its JSON leaves out `priority`, `tenant` and those four at their
    defaults; `json_fields` gives every field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    provider: str
    model: str
    duration: int
    resolution: str
    ratio: str
    audio: bool
    seed: int | None = None
    service_tier: Literal["default", "flex"]
    images: Mapping[ImageRole, ImageSource] = Field(default_factory=dict)
    negative_prompt: str | None = None
    person_generation: str | None = None
    tags: tuple[str, ...] = ()
    client_job_id: str | None = None
    priority: int = DEFAULT_PRIORITY
    tenant: str = DEFAULT_TENANT
    on_complete: str | None = None
    on_complete_queue: str | None = None
    webhook_url: str | None = None
    webhook_events: tuple[str, ...] = FINAL_EVENTS

    @model_serializer(mode="wrap")
    def _omit_new_fields_at_default(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        context = info.context
        if not (isinstance(context, dict) and context.get(_WITH_DEFAULTS)):
            for name, default in _OMITTED_AT_DEFAULT.items():
                value = data.get(name, _ABSENT)
                if value == default or (isinstance(value, list) and tuple(value) == default):
                    del data[name]
        return data

    def json_fields(self) -> dict[str, Any]:
        """Every field by name, as JSON values, those left out of the stored JSON at their
        defaults included: what two requests are compared by. Where an uploaded image
        is stored (its `uri`, under the job's own key) is not part of what was asked and is
        left out: the same file sent twice is the same request."""
        fields = self.model_dump(mode="json", context={_WITH_DEFAULTS: True})
        for image in fields.get("images", {}).values():
            image.pop("uri", None)
        return fields
