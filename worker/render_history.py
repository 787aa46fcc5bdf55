"""Recent render times per kind of job, shared by the fleet through Redis, for the learned
poll window (worker/schedule.py).

A kind is (provider, model, resolution, duration, service tier): what decides how long a
render takes. Each kind keeps its last POLL_HISTORY_SIZE render times in a capped list
(LPUSH + LTRIM), written once per succeeded job. Reads go through a per-process cache
of POLL_HISTORY_CACHE_S seconds, so a batch of polls costs one Redis read per kind and
process, not one per job.

A render time is precise when the provider said when the task finished, or when the
poll before the one that saw it done was at most two poll intervals earlier. Others (a
job of a new kind, seen done at its first poll long after it finished) are marked
approximate: they start a history, and are left out once `min_samples` precise ones exist.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from videoqueue.job import JobRecord
from videoqueue.keys import render_history_key

# Prefix of an approximate render time in the list.
APPROXIMATE = "~"


def history_key(job: JobRecord) -> str:
    """The Redis list of render times of jobs like `job`."""
    request = job.request
    return render_history_key(
        job.provider, job.model, request.get("resolution"), request.get("duration"), request.get("service_tier")
    )


class RenderHistory:
    """Render times in Redis, read through a short-lived per-process cache."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        size: int,
        cache_s: float,
        min_samples: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = client
        self.size = size
        self.cache_s = cache_s
        self.min_samples = min_samples
        self._clock = clock
        self._cache: dict[str, tuple[float, list[float]]] = {}

    def add(self, job: JobRecord, render_s: float, *, precise: bool = True) -> None:
        """Remember one render time of a job like `job` (raises RedisError)."""
        pipe = self.redis.pipeline(transaction=True)
        key = history_key(job)
        pipe.lpush(key, f"{'' if precise else APPROXIMATE}{render_s:.3f}")
        pipe.ltrim(key, 0, self.size - 1)
        pipe.execute()

    def render_times(self, job: JobRecord) -> list[float]:
        """Recent render times of jobs like `job`, newest first: the precise ones if there
        are enough of them, else all (raises RedisError)."""
        key = history_key(job)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        raw: list[str | bytes] = self.redis.lrange(key, 0, self.size - 1)  # type: ignore[assignment]
        texts = [value.decode() if isinstance(value, bytes) else value for value in raw]
        precise = [float(text) for text in texts if not text.startswith(APPROXIMATE)]
        if len(precise) < self.min_samples:
            precise = [float(text.removeprefix(APPROXIMATE)) for text in texts]
        self._cache[key] = (now, precise)
        return precise
