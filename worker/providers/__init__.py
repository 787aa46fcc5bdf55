"""Provider adapters, one per video service (each registers itself: registry.py), built
once per worker process."""

from __future__ import annotations

import threading

import httpx

from videoqueue.endpoints import Endpoint, fingerprint
from videoqueue.settings import Settings
from worker.providers import registry
from worker.providers.base import (
    ImageInput,
    Provider,
    ProviderAdapter,
    ProviderError,
    TaskState,
    TaskStatus,
    VideoStream,
)

__all__ = [
    "ImageInput",
    "Provider",
    "ProviderAdapter",
    "ProviderError",
    "TaskState",
    "TaskStatus",
    "VideoStream",
    "get_provider",
    "provider_endpoint",
    "provider_names",
]

_lock = threading.Lock()
_providers: dict[str, Provider] = {}
_http: httpx.Client | None = None


def download_client(settings: Settings) -> httpx.Client:
    """The process-wide HTTP client for video downloads."""
    global _http
    with _lock:
        if _http is None:
            _http = httpx.Client(
                timeout=httpx.Timeout(settings.download_timeout_s, connect=10.0),
                follow_redirects=True,
            )
        return _http


def get_provider(name: str, settings: Settings) -> Provider:
    """The adapter for `name`, created on first use in this process (after the fork).
    ProviderError(INVALID_REQUEST) for a provider without an adapter, (AUTH) for one
    without credentials."""
    with _lock:
        provider = _providers.get(name)
    if provider is not None:
        return provider
    provider = registry.adapter(name)(settings, download_client(settings))
    with _lock:
        return _providers.setdefault(name, provider)


def provider_names() -> tuple[str, ...]:
    """Every provider this worker has an adapter for, sorted."""
    return registry.names()


def provider_endpoint(name: str, settings: Settings) -> Endpoint:
    """The endpoint and account `settings` send provider `name`'s calls to (its adapter's
    `endpoint`); a provider without an adapter gets a fingerprint of its name alone."""
    try:
        adapter = registry.adapter(name)
    except ProviderError:
        return Endpoint(name, "-", fingerprint(name))
    return adapter.endpoint(settings)


def reset_providers() -> None:
    """Forget built adapters (after a fork, or in tests)."""
    global _http
    with _lock:
        _providers.clear()
        _http = None
