"""Runtime configuration of the simulator."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Smallest payload of a valid MP4 `free` box: its 8-byte header.
_MIN_PAD = 8


class SimConfig(BaseModel):
    """Tunable behaviour of the simulator; every field can be changed at run time."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    latency: float = Field(default=3.0, ge=0)
    latency_jitter: float = Field(default=0.0, ge=0)
    # "fixed": latency + uniform(0, latency_jitter); "realistic": lognormal per model,
    # scaled by duration and resolution (simulator/latency.py), times latency_scale.
    latency_profile: Literal["fixed", "realistic"] = "fixed"
    latency_sigma: float = Field(default=0.12, ge=0)
    latency_scale: float = Field(default=1.0, gt=0)
    concurrency_per_model: int = Field(default=10, ge=1)
    # Seconds added to every provider API call: a real one crosses the internet and the
    # provider's gateway (typically 0.1-0.5 s), which is what a worker pool waits on.
    api_delay: float = Field(default=0.0, ge=0)
    video_pad_bytes: int = Field(default=0, ge=0)
    # Seconds a video download takes: the body is sent in small pieces spread over this
    # time, like a slow or congested video host (0: as fast as the network goes).
    video_trickle_s: float = Field(default=0.0, ge=0)
    api_key: str | None = None
    google_api_key: str | None = None
    create_429_rate: float = Field(default=0.0, ge=0, le=1)
    # The Retry-After header (seconds) of a ModelArk 429.
    retry_after_s: float = Field(default=1.0, ge=0)
    create_5xx_rate: float = Field(default=0.0, ge=0, le=1)
    get_5xx_rate: float = Field(default=0.0, ge=0, le=1)
    fail_rate: float = Field(default=0.0, ge=0, le=1)
    expire_rate: float = Field(default=0.0, ge=0, le=1)
    seed: int | None = None
    public_url: str | None = None
    # ModelArk callbacks (a create's callback_url): seconds from the status change to the
    # POST, and the fraction of callbacks never sent and sent twice (simulator/callbacks.py).
    callback_delay_s: float = Field(default=0.0, ge=0)
    callback_loss_rate: float = Field(default=0.0, ge=0, le=1)
    callback_duplicate_rate: float = Field(default=0.0, ge=0, le=1)

    @field_validator("video_pad_bytes")
    @classmethod
    def _pad_fits_a_box(cls, value: int) -> int:
        if 0 < value < _MIN_PAD:
            raise ValueError(f"must be 0 or at least {_MIN_PAD} (the free box header)")
        return value

    @field_validator("api_key", "google_api_key", "public_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    def public_dict(self) -> dict[str, Any]:
        """Return the config as JSON-ready data with the API keys masked."""
        data = self.model_dump()
        for key in ("api_key", "google_api_key"):
            if data[key] is not None:
                data[key] = "***"
        return data

    def updated(self, changes: dict[str, Any]) -> SimConfig:
        """Return a validated copy with ``changes`` applied (raises ValidationError)."""
        return SimConfig.model_validate({**self.model_dump(), **changes})
