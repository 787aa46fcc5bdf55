"""videoqueue: run AI video generation (BytePlus Seedance, Google Veo) at scale on Celery and Redis.

This package is the shared core that producers (`producer/`) and workers (`worker/`) both build
on: the job record and its lifecycle, the job store and every Redis key, settings, the model
catalog, limits, budgets, the ledger, counters, recovery and the error tree. It imports neither
side. The producer's public API is re-exported here on first use, so that
`from videoqueue import VideoQueue, VideoRequest` works beside `from producer import ...`.
"""

from __future__ import annotations

from typing import Any

_PRODUCER_API = frozenset(
    {
        "AmbiguousJobIdError",
        "AsyncVideoQueue",
        "EnqueueError",
        "RetryRefusedError",
        "UnknownJobError",
        "VideoQueue",
        "VideoRequest",
        "WaitTimeoutError",
    }
)


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the core never imports the producer (which imports the core).
    if name in _PRODUCER_API:
        import producer

        return getattr(producer, name)
    raise AttributeError(f"module 'videoqueue' has no attribute {name!r}")
