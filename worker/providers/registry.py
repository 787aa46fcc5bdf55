"""Which adapter serves which provider. An adapter module in this package decorates its
class with `register`, under the provider name that models.toml and job records use; the
registry imports every module of the package once, on first use, so adding a provider is
one module here (plus its catalog entries and simulator routes), and no list elsewhere."""

from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import TypeVar

from videoqueue.job import ErrorCode
from worker.providers.base import ProviderAdapter, ProviderError

_A = TypeVar("_A", bound=ProviderAdapter)

_lock = threading.Lock()
_adapters: dict[str, ProviderAdapter] = {}
_discovered = False


def register(adapter: _A) -> _A:
    """Class decorator: `adapter` serves the provider named by its `name` attribute.
    ValueError if another adapter already has that name."""
    other = _adapters.setdefault(adapter.name, adapter)
    if other is not adapter:
        raise ValueError(f"two adapters for provider {adapter.name!r}: {other!r} and {adapter!r}")
    return adapter


def _discover() -> None:
    """Import every module of `worker.providers` (each adapter registers at import)."""
    global _discovered
    with _lock:
        if _discovered:
            return
        package = importlib.import_module("worker.providers")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _discovered = True


def adapter(name: str) -> ProviderAdapter:
    """The adapter class for provider `name`. ProviderError(INVALID_REQUEST) when none is
    registered."""
    _discover()
    found = _adapters.get(name)
    if found is None:
        raise ProviderError(ErrorCode.INVALID_REQUEST, f"no adapter for provider {name!r}")
    return found


def names() -> tuple[str, ...]:
    """Every provider with an adapter, sorted."""
    _discover()
    return tuple(sorted(_adapters))
