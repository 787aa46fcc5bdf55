"""Provider adapters, one per video service, built once per worker process."""

from __future__ import annotations

import threading

import httpx

from videoqueue.job import ErrorCode
from videoqueue.settings import Settings
from worker.providers.base import ImageInput, Provider, ProviderError, TaskState, TaskStatus, VideoStream

__all__ = [
    "ImageInput",
    "Provider",
    "ProviderError",
    "TaskState",
    "TaskStatus",
    "VideoStream",
    "get_provider",
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
    """The adapter for `name`, created on first use in this process (after the fork)."""
    with _lock:
        provider = _providers.get(name)
    if provider is not None:
        return provider
    http = download_client(settings)
    if name == "byteplus":
        from worker.providers.byteplus import BytePlusProvider

        provider = BytePlusProvider(settings, http)
    elif name == "veo":
        from worker.providers.veo import VeoProvider

        provider = VeoProvider(settings, http)
    else:
        raise ProviderError(ErrorCode.INVALID_REQUEST, f"no adapter for provider {name!r}")
    with _lock:
        return _providers.setdefault(name, provider)


def reset_providers() -> None:
    """Forget built adapters (after a fork, or in tests)."""
    global _http
    with _lock:
        _providers.clear()
        _http = None
