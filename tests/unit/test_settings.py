"""One rule for empty settings, and one clear line for unusable ones (issue 12)."""

from __future__ import annotations

from pathlib import Path

import pytest

from videoqueue.settings import InvalidSettingsError, Settings, env_name, load_settings

FIELDS = sorted(Settings.model_fields)


@pytest.fixture(autouse=True)
def _no_settings_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in FIELDS:
        monkeypatch.delenv(env_name(field), raising=False)
    monkeypatch.delenv("ARK_API_KEY", raising=False)


def defaults() -> Settings:
    return Settings(_env_file=None)


@pytest.mark.parametrize("field", FIELDS)
def test_an_empty_environment_variable_is_unset(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # No field of the model is required, so an empty value must take the default.
    assert not Settings.model_fields[field].is_required()
    monkeypatch.setenv(env_name(field), "")
    assert getattr(Settings(_env_file=None), field) == getattr(defaults(), field)


@pytest.mark.parametrize("field", FIELDS)
def test_an_empty_dotenv_line_is_unset(field: str, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"{env_name(field)}=\n")
    assert getattr(Settings(_env_file=env_file), field) == getattr(defaults(), field)


@pytest.mark.parametrize("field", FIELDS)
def test_an_empty_value_given_in_code_is_unset(field: str) -> None:
    assert getattr(Settings.model_validate({field: ""}), field) == getattr(defaults(), field)


def test_an_empty_endpoint_gives_boto3_none() -> None:
    # Before: '' reached boto3, which raised ValueError: Invalid endpoint.
    settings = Settings(_env_file=None, s3_endpoint_url="")
    assert settings.s3_endpoint_url is None
    assert settings.effective_s3_checksums == "when_supported"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MODEL_LIMITS", "nope", "invalid setting MODEL_LIMITS: not valid JSON (Per-model overrides, JSON:"),
        (
            "MODEL_LIMITS",
            '{"veo-3.1-generate-001": {"max_in_flight": 0}}',
            "invalid setting MODEL_LIMITS: veo-3.1-generate-001: max_in_flight must be a whole number "
            "from 1 to 1,000,000, not 0",
        ),
        (
            "MODEL_LIMITS",
            '{"veo-3.1-generate-001": {"max_inflight": 3}}',
            "invalid setting MODEL_LIMITS: veo-3.1-generate-001: unknown limit 'max_inflight'",
        ),
        ("MODEL_LIMITS", '{"nosuch": {"max_in_flight": 3}}', "invalid setting MODEL_LIMITS: unknown model"),
        ("MAX_IN_FLIGHT_PER_MODEL", "0", "invalid setting MAX_IN_FLIGHT_PER_MODEL: Input should be greater than"),
        ("BUDGET_TAGS_USD", "{", "invalid setting BUDGET_TAGS_USD: not valid JSON (Default caps per tag"),
        ("POLL_MIN_S", "abc", "invalid setting POLL_MIN_S: Input should be a valid number"),
        ("STORAGE_URL", "ftp://x", "invalid setting STORAGE_URL: STORAGE_URL must start with file://"),
        ("S3_CHECKSUMS", "always", "invalid setting S3_CHECKSUMS: Input should be 'when_required' or"),
        ("JOB_DEADLINE_S", "-1", "invalid setting JOB_DEADLINE_S: Input should be greater than 0"),
        ("REDIS_URL", "notaurl", "invalid setting REDIS_URL: REDIS_URL must start with redis://"),
        ("BROKER_URL", "bogus://x", "invalid setting BROKER_URL: BROKER_URL must start with redis://"),
        ("DEFAULT_PROVIDER", "sora", "invalid setting DEFAULT_PROVIDER: unknown provider 'sora'; known: byteplus, veo"),
    ],
)
def test_an_unusable_value_is_one_line_naming_the_variable(
    variable: str, value: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_a_secret_value_is_never_shown(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BYTEPLUS_API_KEY", "sk-secret-value-123")
    monkeypatch.setenv("POLL_MIN_S", "abc")
    with pytest.raises(InvalidSettingsError) as info:
        load_settings()
    assert "sk-secret-value-123" not in str(info.value)


def test_default_provider_may_be_one_the_pricing_file_adds(tmp_path: Path) -> None:
    override = tmp_path / "prices.toml"
    override.write_text(
        """
[models."sora-test"]
provider = "sora"
label = "Sora test"
default_for_provider = true
durations = [4]
resolutions = ["720p"]
ratios = ["16:9"]
audio = false
image_roles = []
service_tiers = ["default"]
fps = 24
expected_render_s = 60
[models."sora-test".price]
unit = "second"
usd_per_second = { "720p" = { audio = 0.1, silent = 0.1 } }
source = "test"
as_of = "2026-11-29"
"""
    )
    settings = Settings(_env_file=None, pricing_file=str(override), default_provider="sora")
    assert settings.default_provider == "sora"
    with pytest.raises(ValueError, match="unknown provider 'sora'; known: byteplus, veo"):
        Settings(_env_file=None, default_provider="sora")


# ------------------------------------------------------------------ TENANT_WEIGHTS (issue 15)

WEIGHT_RULE = "the weight must be a finite number greater than 0"
WEIGHTS_SHAPE = 'must be a JSON object of tenant to weight, such as {"acme": 2, "batch": 0.5}'


def test_tenant_weights_default_to_none_listed_and_weight_1(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.tenant_weights() == {}
    assert settings.weight_of("default") == 1.0 and settings.weight_of("acme") == 1.0


def test_tenant_weights_are_read_from_the_environment_and_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENANT_WEIGHTS", '{"acme": 3, "batch.eu_1-a": 0.25, "default": 2}')
    settings = load_settings()
    assert settings.tenant_weights() == {"acme": 3.0, "batch.eu_1-a": 0.25, "default": 2.0}
    assert all(type(w) is float for w in settings.tenant_weights().values())
    assert settings.weight_of("acme") == 3.0 and settings.weight_of("default") == 2.0
    assert settings.weight_of("someone-else") == 1.0
    settings.tenant_weights()["acme"] = 99  # a copy: the settings keep theirs
    assert settings.weight_of("acme") == 3.0
    monkeypatch.delenv("TENANT_WEIGHTS")
    (tmp_path / ".env").write_text('TENANT_WEIGHTS={"acme": 1.5}\n')
    assert Settings(_env_file=tmp_path / ".env").tenant_weights() == {"acme": 1.5}


def test_tenant_weights_given_in_code_as_a_dict_or_json() -> None:
    assert Settings(_env_file=None, tenant_weights={"a": 2}).weight_of("a") == 2.0
    assert Settings(_env_file=None, tenant_weights='{"a": 0.5}').weight_of("a") == 0.5
    assert env_name("tenant_weight_map") == "TENANT_WEIGHTS"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("nope", "not valid JSON (Weight of each tenant's share"),
        ('{"a": 1', "not valid JSON"),
        ("[1, 2]", WEIGHTS_SHAPE),
        ('"acme"', WEIGHTS_SHAPE),
        ("2", WEIGHTS_SHAPE),
        ('{"a": 0}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": -1}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": NaN}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": Infinity}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": -Infinity}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": 1e999}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": 1' + "0" * 400 + "}", f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": "2"}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": true}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": null}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"a": {"w": 1}}', f"tenant 'a': {WEIGHT_RULE}"),
        ('{"ok": 1, "two words": 1}', "tenant 'two words': a tenant name must be 1-64 characters"),
        ('{"": 1}', "tenant '': a tenant name must be 1-64 characters"),
        ('{"a:b": 1}', "tenant 'a:b': a tenant name must be 1-64 characters"),
        ('{"' + "x" * 65 + '": 1}', f"tenant '{'x' * 37}...': a tenant name must be 1-64 characters"),
    ],
)
def test_an_unusable_tenant_weights_is_one_line_naming_the_variable(
    value: str, problem: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENANT_WEIGHTS", value)
    with pytest.raises(InvalidSettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"invalid setting TENANT_WEIGHTS: {problem}"), message
    assert "\n" not in message
