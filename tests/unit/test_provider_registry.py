"""The provider registry: every adapter registers itself, the catalog's providers all have
one, and adapters read models a PRICING_FILE adds (the catalog with its overrides)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from google.genai import errors as genai_errors

from videoqueue.catalog import load_catalog
from videoqueue.job import ErrorCode, JobRecord, JobStatus
from videoqueue.settings import Settings
from worker.probe import Status
from worker.providers import get_provider, provider_names, registry, reset_providers
from worker.providers import veo as veo_module
from worker.providers.base import ProviderError
from worker.providers.byteplus import BytePlusProvider
from worker.providers.veo import VeoProvider

NEW_SEEDANCE = "seedance-2-0-test"
NEW_VEO = "veo-9-test"


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    reset_providers()
    yield
    reset_providers()


def test_each_adapter_is_registered_under_its_provider_name() -> None:
    assert provider_names() == ("byteplus", "veo")
    assert registry.adapter("byteplus") is BytePlusProvider
    assert registry.adapter("veo") is VeoProvider


def test_every_provider_of_the_catalog_has_an_adapter() -> None:
    assert set(load_catalog().providers()) <= set(provider_names())


def test_a_provider_without_an_adapter_is_an_invalid_request() -> None:
    with pytest.raises(ProviderError) as info:
        get_provider("sora", Settings(_env_file=None))
    assert info.value.code is ErrorCode.INVALID_REQUEST
    assert info.value.message == "no adapter for provider 'sora'"


def test_a_second_adapter_for_a_name_is_refused() -> None:
    class Impostor(BytePlusProvider):
        pass

    with pytest.raises(ValueError, match="two adapters for provider 'byteplus'"):
        registry.register(Impostor)
    assert registry.adapter("byteplus") is BytePlusProvider


def test_adapters_are_built_once_per_process_and_need_their_credentials() -> None:
    settings = Settings(_env_file=None, byteplus_api_key="k")
    provider = get_provider("byteplus", settings)
    assert isinstance(provider, BytePlusProvider)
    assert get_provider("byteplus", settings) is provider
    with pytest.raises(ProviderError) as info:
        get_provider("veo", settings)
    assert info.value.code is ErrorCode.AUTH


def test_missing_credentials_name_the_settings() -> None:
    bare = Settings(_env_file=None)
    assert BytePlusProvider.missing_credentials(bare) == "BYTEPLUS_API_KEY"
    assert VeoProvider.missing_credentials(bare) == "GOOGLE_API_KEY or GOOGLE_CLOUD_PROJECT"
    keyed = Settings(_env_file=None, byteplus_api_key="k", google_cloud_project="p")
    assert BytePlusProvider.missing_credentials(keyed) is None
    assert VeoProvider.missing_credentials(keyed) is None


# -- models a PRICING_FILE adds -------------------------------------------------------------------


def pricing_file(tmp_path: Path) -> str:
    """An override adding an audio-capable Seedance model, and a Veo model made the default."""
    path = tmp_path / "prices.toml"
    path.write_text(
        f"""
[models."{NEW_SEEDANCE}"]
provider = "byteplus"
label = "Seedance test"
durations = [5]
resolutions = ["720p"]
ratios = ["16:9"]
audio = true
image_roles = []
service_tiers = ["default"]
fps = 24
pixels = "seedance"
expected_render_s = 60
[models."{NEW_SEEDANCE}".price]
unit = "token"
usd_per_million_audio = 2.4
usd_per_million_silent = 1.2
source = "test"
as_of = "2026-11-29"

[models."{load_catalog().default_model("veo")}"]
default_for_provider = false

[models."{NEW_VEO}"]
provider = "veo"
label = "Veo test"
default_for_provider = true
durations = [8]
resolutions = ["720p"]
ratios = ["16:9"]
audio = true
image_roles = []
service_tiers = ["default"]
fps = 24
expected_render_s = 60
[models."{NEW_VEO}".price]
unit = "second"
usd_per_second = {{ "720p" = {{ audio = 0.4, silent = 0.2 }} }}
source = "test"
as_of = "2026-11-29"
"""
    )
    return str(path)


def job(model: str) -> JobRecord:
    now = datetime.now(UTC)
    request = {
        "prompt": "a fox",
        "duration": 5,
        "resolution": "720p",
        "ratio": "16:9",
        "audio": True,
        "seed": 7,
        "service_tier": "default",
    }
    return JobRecord(
        id="j-override",
        status=JobStatus.QUEUED,
        provider="byteplus",
        model=model,
        request=request,
        cost_estimate_usd="0.1",
        created_at=now,
        updated_at=now,
        deadline_at=now,
    )


def test_byteplus_asks_for_sound_from_a_model_the_pricing_file_adds(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, byteplus_api_key="k", pricing_file=pricing_file(tmp_path))
    provider = BytePlusProvider(settings, httpx.Client())
    sent: dict[str, Any] = {}

    def create(**fields: Any) -> Any:
        sent.update(fields)
        return SimpleNamespace(id="cgt-1")

    provider._client = SimpleNamespace(content_generation=SimpleNamespace(tasks=SimpleNamespace(create=create)))
    assert provider.create(job(NEW_SEEDANCE), {}) == "cgt-1"
    # Without PRICING_FILE the model is unknown and the flag is left out (None).
    assert sent["generate_audio"] is True


def test_the_veo_probe_asks_for_the_default_model_of_the_pricing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    class Client:
        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        @property
        def operations(self) -> Any:
            def get(operation: Any) -> Any:
                asked.append(operation.name)
                raise genai_errors.APIError(404, {"error": {"status": "NOT_FOUND", "message": "no such operation"}})

            return SimpleNamespace(get=get)

    monkeypatch.setattr(veo_module, "genai_client", lambda settings, timeout_s: Client())
    settings = Settings(_env_file=None, google_api_key="g", pricing_file=pricing_file(tmp_path))
    probe = VeoProvider.probe(settings, 1.0)
    assert probe.status is Status.OK, probe.detail
    assert asked == [f"publishers/google/models/{NEW_VEO}/operations/{veo_module.PROBE_OPERATION_ID}"]


def test_each_adapter_says_how_long_its_provider_keeps_a_finished_video() -> None:
    # ModelArk's 24 h, an hour of margin off; Vertex AI documents none.
    assert registry.adapter("byteplus").result_ttl_s == 23 * 3600.0
    assert registry.adapter("veo").result_ttl_s is None
