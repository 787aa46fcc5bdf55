"""Unit tests run on built-in defaults, whatever the environment or a `.env` file says,
in the `default` namespace (the integration suite, collected in the same run, serves `test`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from videoqueue import namespace
from videoqueue.settings import Settings, env_name, get_settings


@pytest.fixture(autouse=True)
def _hermetic_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    monkeypatch.delenv("ARK_API_KEY", raising=False)
    monkeypatch.setitem(Settings.model_config, "env_file", None)
    get_settings.cache_clear()
    with namespace.using(namespace.DEFAULT):
        yield
    get_settings.cache_clear()
