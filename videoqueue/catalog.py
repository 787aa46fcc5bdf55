"""The model catalog: capabilities and list prices of every supported model, loaded from
`models.toml` (data, not code), plus the rules that turn a request into billed units and
dollars. Producers validate and estimate with it; workers bill with it."""

from __future__ import annotations

import tomllib
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from videoqueue.resolved import ResolvedRequest

USD_QUANTUM = Decimal("0.000001")
MAX_IMAGE_BYTES = 10 * 1024 * 1024


class AudioPrice(BaseModel):
    """A per-unit price with and without generated sound."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    audio: Decimal
    silent: Decimal


class Price(BaseModel):
    """List price of one model: per million tokens, or per generated second by resolution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Literal["token", "second"]
    usd_per_million_audio: Decimal | None = None
    usd_per_million_silent: Decimal | None = None
    usd_per_second: dict[str, AudioPrice] | None = None
    flex_multiplier: Decimal = Decimal(1)
    source: str
    as_of: str

    @model_validator(mode="after")
    def _unit_has_its_prices(self) -> Price:
        if self.unit == "token" and (self.usd_per_million_audio is None or self.usd_per_million_silent is None):
            raise ValueError("token prices need usd_per_million_audio and usd_per_million_silent")
        if self.unit == "second" and not self.usd_per_second:
            raise ValueError("second prices need usd_per_second by resolution")
        return self


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
    pixels: dict[str, dict[str, tuple[int, int]]] | None = None
    expected_render_s: float = Field(gt=0)
    negative_prompt: bool = False
    person_generation: tuple[str, ...] = ()
    max_image_bytes: int = MAX_IMAGE_BYTES
    price: Price

    @model_validator(mode="after")
    def _prices_cover_capabilities(self) -> ModelSpec:
        if self.price.unit == "token":
            if self.pixels is None:
                raise ValueError(f"{self.id}: a token-priced model needs a pixel table")
            for resolution in self.resolutions:
                missing = set(self.ratios) - set(self.pixels.get(resolution, {}))
                if missing:
                    raise ValueError(f"{self.id}: no pixel size for {resolution} {sorted(missing)}")
        else:
            missing = set(self.resolutions) - set(self.price.usd_per_second or {})
            if missing:
                raise ValueError(f"{self.id}: no per-second price for {sorted(missing)}")
        return self

    def frame_size(self, resolution: str, ratio: str) -> tuple[int, int]:
        """Width and height in pixels of a token-priced model's output."""
        if self.pixels is None:
            raise ValueError(f"{self.id} has no pixel table")
        return self.pixels[resolution][ratio]

    def tokens(self, resolution: str, ratio: str, duration: int) -> int:
        """Tokens the provider bills for a clip: width x height x frames / 1024."""
        width, height = self.frame_size(resolution, ratio)
        frames = self.fps * duration + 1
        return width * height * frames // 1024

    def billed_units(self, resolution: str, ratio: str, duration: int) -> int:
        """What the provider will bill for one clip, in this model's unit."""
        return self.tokens(resolution, ratio, duration) if self.price.unit == "token" else duration

    def usd(self, units: int, *, audio: bool, service_tier: str, resolution: str) -> Decimal:
        """Dollar cost of `units` billed units, rounded to a micro-dollar."""
        price = self.price
        if price.unit == "token":
            per_million = price.usd_per_million_audio if audio else price.usd_per_million_silent
            assert per_million is not None
            amount = Decimal(units) * per_million / Decimal(1_000_000)
        else:
            assert price.usd_per_second is not None
            rate = price.usd_per_second[resolution]
            amount = Decimal(units) * (rate.audio if audio else rate.silent)
        if service_tier == "flex":
            amount *= price.flex_multiplier
        return amount.quantize(USD_QUANTUM, rounding=ROUND_HALF_UP)

    def usd_for_tokens(self, tokens: int, *, audio: bool, service_tier: str) -> Decimal:
        """Dollar cost of `tokens` for a token-priced model."""
        return self.usd(tokens, audio=audio, service_tier=service_tier, resolution="")

    def estimate(self, request: ResolvedRequest) -> tuple[int, Decimal]:
        """Billed units and dollars a resolved request will cost."""
        units = self.billed_units(request.resolution, request.ratio, request.duration)
        cost = self.usd(units, audio=request.audio, service_tier=request.service_tier, resolution=request.resolution)
        return units, cost

    def billed_usd(self, billed_units: int, request: ResolvedRequest) -> Decimal:
        """Dollars the provider charged for `billed_units` (its own count, e.g. ModelArk's
        `usage.completion_tokens`) of a resolved request."""
        return self.usd(
            billed_units, audio=request.audio, service_tier=request.service_tier, resolution=request.resolution
        )


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
        table_name = fields.pop("pixels", None)
        if table_name is not None and table_name not in tables:
            raise ValueError(f"{model_id}: unknown pixel table {table_name!r}")
        pixels = tables[table_name] if table_name is not None else None
        models[model_id] = ModelSpec(id=model_id, pixels=pixels, **fields)
    defaults: dict[str, list[str]] = {}
    for spec in models.values():
        if spec.default_for_provider:
            defaults.setdefault(spec.provider, []).append(spec.id)
    for provider, ids in defaults.items():
        if len(ids) > 1:
            raise ValueError(f"provider {provider} has several default models: {ids}")
    return Catalog(models=models)


def merge_override(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it: new models are added; for a known model each
    top-level field given replaces the shipped one (so a `price` table replaces the whole
    price, source and date included)."""
    merged = {**base, "pixel_tables": {**base.get("pixel_tables", {}), **override.get("pixel_tables", {})}}
    models = {name: dict(entry) for name, entry in base.get("models", {}).items()}
    for name, entry in override.get("models", {}).items():
        models[name] = {**models.get(name, {}), **entry}
    merged["models"] = models
    return merged


@lru_cache(maxsize=4)
def load_catalog(pricing_file: str | None = None) -> Catalog:
    """The catalog shipped with the package, with PRICING_FILE's overrides when given."""
    text = resources.files("videoqueue").joinpath("models.toml").read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    if pricing_file:
        try:
            with open(pricing_file, "rb") as handle:
                raw = merge_override(raw, tomllib.load(handle))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read PRICING_FILE {pricing_file}: {exc}") from exc
    return parse_catalog(raw)
