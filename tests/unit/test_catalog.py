"""Token and price rules of the model catalog."""

from __future__ import annotations

from decimal import Decimal

import pytest

from videoqueue.catalog import load_catalog, parse_catalog
from videoqueue.resolved import ResolvedRequest

SEEDANCE_15 = "seedance-1-5-pro-251215"


def test_tokens_follow_the_frame_formula() -> None:
    spec = load_catalog().models[SEEDANCE_15]
    # 1248 x 704 pixels, 24 fps x 5 s + 1 frame, per 1024
    assert spec.tokens("720p", "16:9", 5) == 1248 * 704 * 121 // 1024 == 103818
    assert spec.tokens("1080p", "9:16", 10) == 1088 * 1920 * 241 // 1024


@pytest.mark.parametrize(
    ("audio", "tier", "expected"),
    [
        (True, "default", Decimal("0.249163")),  # $2.4 per million
        (False, "default", Decimal("0.124582")),  # $1.2 per million
        (True, "flex", Decimal("0.124582")),  # half
        (False, "flex", Decimal("0.062291")),
    ],
)
def test_price_by_audio_and_tier(audio: bool, tier: str, expected: Decimal) -> None:
    spec = load_catalog().models[SEEDANCE_15]
    assert spec.usd_for_tokens(103818, audio=audio, service_tier=tier) == expected


def test_every_price_names_its_source_and_date() -> None:
    for spec in load_catalog().models.values():
        assert spec.price.source.startswith("https://")
        assert len(spec.price.as_of) == 10


def test_catalog_rejects_a_model_without_pixel_sizes() -> None:
    raw = {
        "pixel_tables": {"t": {"720p": {"16:9": [1, 1]}}},
        "models": {
            "m": {
                "provider": "p",
                "label": "M",
                "durations": [5],
                "resolutions": ["720p"],
                "ratios": ["16:9", "1:1"],
                "audio": False,
                "image_roles": [],
                "service_tiers": ["default"],
                "fps": 24,
                "pixels": "t",
                "expected_render_s": 10,
                "price": {
                    "unit": "token",
                    "usd_per_million_audio": 1,
                    "usd_per_million_silent": 1,
                    "source": "https://example.invalid",
                    "as_of": "2026-01-01",
                },
            }
        },
    }
    with pytest.raises(ValueError, match="no pixel size for 720p"):
        parse_catalog(raw)


def test_default_model_per_provider() -> None:
    assert load_catalog().default_model("byteplus") == SEEDANCE_15


@pytest.mark.parametrize(
    ("model", "resolution", "audio", "duration", "expected"),
    [
        ("veo-3.1-generate-001", "1080p", True, 8, Decimal("3.20")),
        ("veo-3.1-generate-001", "720p", False, 8, Decimal("1.60")),
        ("veo-3.1-generate-001", "4k", True, 4, Decimal("2.40")),
        ("veo-3.1-fast-generate-001", "720p", True, 6, Decimal("0.60")),
        ("veo-3.1-fast-generate-001", "1080p", True, 8, Decimal("0.96")),
    ],
)
def test_veo_bills_seconds_by_resolution_and_audio(
    model: str, resolution: str, audio: bool, duration: int, expected: Decimal
) -> None:
    spec = load_catalog().models[model]
    request = ResolvedRequest(
        prompt="p",
        provider="veo",
        model=model,
        resolution=resolution,
        ratio="16:9",
        duration=duration,
        audio=audio,
        service_tier="default",
    )
    assert spec.estimate(request) == (duration, expected)


def test_a_second_priced_model_needs_a_price_for_every_resolution() -> None:
    raw = {
        "models": {
            "v": {
                "provider": "p",
                "label": "V",
                "durations": [4],
                "resolutions": ["720p", "4k"],
                "ratios": ["16:9"],
                "audio": True,
                "image_roles": [],
                "service_tiers": ["default"],
                "fps": 24,
                "expected_render_s": 10,
                "price": {
                    "unit": "second",
                    "usd_per_second": {"720p": {"audio": 1, "silent": 1}},
                    "source": "https://example.invalid",
                    "as_of": "2026-01-01",
                },
            }
        }
    }
    with pytest.raises(ValueError, match=r"no per-second price for \['4k'\]"):
        parse_catalog(raw)


def test_the_catalog_has_the_models_users_ask_for() -> None:
    catalog = load_catalog()
    assert {
        "seedance-1-5-pro-251215",
        "seedance-1-0-pro-250528",
        "seedance-1-0-pro-fast-251015",
        "veo-3.1-generate-001",
        "veo-3.1-fast-generate-001",
    } <= set(catalog.models)
    assert catalog.default_model("veo") == "veo-3.1-fast-generate-001"
    assert catalog.providers() == ["byteplus", "veo"]
