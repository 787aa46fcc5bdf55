"""The model catalog: capabilities and list prices of every supported model, loaded from
`models.toml` (data, not code), plus the token and price rules that turn a request into
dollars. Producers validate and estimate with it; workers bill with it."""

from __future__ import annotations

import tomllib
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

USD_QUANTUM = Decimal("0.000001")


class Price(BaseModel):
    """List price of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["token"]
    usd_per_million_audio: Decimal
    usd_per_million_silent: Decimal
    flex_multiplier: Decimal = Decimal(1)
    source: str
    as_of: str


class ModelSpec(BaseModel):
    """What one model accepts and what it costs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    provider: str
    label: str
    default_for_provider: bool = False
    durations: tuple[int, ...]
    resolutions: tuple[str, ...]
    ratios: tuple[str, ...]
    audio: bool
    image_roles: tuple[str, ...]
    service_tiers: tuple[str, ...]
    fps: int
    pixels: dict[str, dict[str, tuple[int, int]]]
    expected_render_s: float = Field(gt=0)
    price: Price

    @model_validator(mode="after")
    def _pixels_cover_capabilities(self) -> ModelSpec:
        for resolution in self.resolutions:
            missing = set(self.ratios) - set(self.pixels.get(resolution, {}))
            if missing:
                raise ValueError(f"{self.id}: no pixel size for {resolution} {sorted(missing)}")
        return self

    def frame_size(self, resolution: str, ratio: str) -> tuple[int, int]:
        """Width and height in pixels of the output for a resolution and ratio."""
        return self.pixels[resolution][ratio]

    def tokens(self, resolution: str, ratio: str, duration: int) -> int:
        """Tokens the provider bills for a clip: width x height x frames / 1024."""
        width, height = self.frame_size(resolution, ratio)
        frames = self.fps * duration + 1
        return width * height * frames // 1024

    def usd_for_tokens(self, tokens: int, *, audio: bool, service_tier: str) -> Decimal:
        """Dollar cost of `tokens` under this model's price, rounded to a micro-dollar."""
        per_million = self.price.usd_per_million_audio if audio else self.price.usd_per_million_silent
        if service_tier == "flex":
            per_million *= self.price.flex_multiplier
        return (Decimal(tokens) * per_million / Decimal(1_000_000)).quantize(USD_QUANTUM, rounding=ROUND_HALF_UP)


class Catalog(BaseModel):
    """All models, by id."""

    models: dict[str, ModelSpec]

    def get(self, model_id: str) -> ModelSpec | None:
        """The spec of `model_id`, or None when unknown."""
        return self.models.get(model_id)

    def default_model(self, provider: str) -> str | None:
        """The model a job of `provider` uses when it names none."""
        for spec in self.models.values():
            if spec.provider == provider and spec.default_for_provider:
                return spec.id
        return None

    def providers(self) -> list[str]:
        """Providers that have at least one model."""
        return sorted({spec.provider for spec in self.models.values()})


def parse_catalog(raw: dict[str, Any]) -> Catalog:
    """Build a catalog from the TOML structure of `models.toml`."""
    tables = raw.get("pixel_tables", {})
    models: dict[str, ModelSpec] = {}
    for model_id, entry in raw.get("models", {}).items():
        fields = dict(entry)
        table_name = fields.pop("pixels")
        if table_name not in tables:
            raise ValueError(f"{model_id}: unknown pixel table {table_name!r}")
        models[model_id] = ModelSpec(id=model_id, pixels=tables[table_name], **fields)
    return Catalog(models=models)


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The catalog shipped with the package."""
    text = resources.files("producer").joinpath("models.toml").read_text(encoding="utf-8")
    return parse_catalog(tomllib.loads(text))
