"""A request as the job record stores it: every parameter a worker needs, with the chosen
model's defaults filled in and checked against what that model supports.

`producer.request.resolve` builds it from what a user asked for; workers, the catalog's cost
estimate, budgets and the ledger read it. Its JSON is the `request` object of a stored job
record, a manifest and `videoqueue status --json`: the field order here is the order there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ImageRole = Literal["first_frame", "last_frame"]
"""What an input image is to the video: its first or its last frame."""

IMAGE_ROLES: tuple[ImageRole, ...] = ("first_frame", "last_frame")
"""Every image role, in the order the providers take the images."""


class ImageUrl(BaseModel):
    """An input image the provider fetches itself: JSON `{"url": ...}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str


class ImageUpload(BaseModel):
    """An input image read from the producer's disk, stored beside the job (the job
    store's input key for its role) until a worker sends it: JSON `{"file", "mime_type",
    "bytes", "sha256"}`, the file's base name, type, size in bytes and hex digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    mime_type: str
    bytes: int
    sha256: str


ImageSource = ImageUrl | ImageUpload


class ResolvedRequest(BaseModel):
    """One job's parameters as stored: `duration` in seconds, `resolution` like "720p",
    `ratio` like "16:9", `seed` None only when the producer did not set one (it does before
    storing), `images` by role."""

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
