"""Fleet-wide provider limits, shared by every worker through Redis:

- a cap on provider tasks in flight per model (a slot per job, with a lease that polls
  renew, so the slots of a worker that died free themselves by expiry);
- a cap on create requests per minute per model (a sliding one-minute window);
- a fleet-wide back-off for a model after the provider answered 429.

A job that cannot go now is told how long to wait; it re-schedules itself, it never
sleeps and never fails for it. Each check is one Lua script, so concurrent workers
cannot overshoot.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from videoqueue.keys import backoff_key, creates_key, slot_key

# KEYS: slots, creates, backoff. ARGV: now, job, cap, lease_s, rpm, token.
# Returns {0, wait_s} when the job must wait, {1, 0} when it may create now.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local until_ = tonumber(redis.call('GET', KEYS[3]) or '0')
if until_ > now then return {0, tostring(until_ - now)} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
if not held and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = 1
  if first[2] then wait = math.max(1, math.min(30, tonumber(first[2]) - now)) end
  return {0, tostring(wait)}
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return {0, tostring(math.max(0.5, tonumber(oldest[2]) + 60 - now))}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('EXPIRE', KEYS[2], 120)
return {1, '0'}
"""

# KEYS: backoff. ARGV: until. Keeps the later of the current and the new deadline.
_BACK_OFF = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local until_ = tonumber(ARGV[1])
if until_ > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', math.ceil((until_ - tonumber(ARGV[2])) * 1000) + 1000)
end
return 1
"""


@dataclass(frozen=True)
class ModelLimits:
    """The limits of one model."""

    max_in_flight: int
    creates_per_minute: int


class ProviderLimits:
    """Slots, rate and back-off for every model, in Redis."""

    def __init__(self, client: redis.Redis, defaults: ModelLimits, overrides: dict[str, ModelLimits], lease_s: float):
        self.redis = client
        self.defaults = defaults
        self.overrides = overrides
        self.lease_s = lease_s
        self._acquire: Any = client.register_script(_ACQUIRE)
        self._back_off: Any = client.register_script(_BACK_OFF)

    def limits_for(self, model: str) -> ModelLimits:
        """The limits in force for `model`."""
        return self.overrides.get(model, self.defaults)

    def acquire(self, provider: str, model: str, job_id: str) -> float:
        """Take a slot and a create token for a job: 0 when it may create now, else the
        seconds to wait before asking again."""
        limits = self.limits_for(model)
        ok, wait = self._acquire(
            keys=[slot_key(provider, model), creates_key(provider, model), backoff_key(provider, model)],
            args=[
                time.time(),
                job_id,
                limits.max_in_flight,
                self.lease_s,
                limits.creates_per_minute,
                f"{job_id}:{uuid.uuid4().hex[:8]}",
            ],
        )
        return 0.0 if int(ok) == 1 else float(wait)

    def renew(self, provider: str, model: str, job_id: str) -> None:
        """Extend a job's slot lease (each poll does): only the slots of dead jobs expire."""
        self.redis.zadd(slot_key(provider, model), {job_id: time.time() + self.lease_s}, xx=True)

    def release(self, provider: str, model: str, job_id: str) -> None:
        """Give a slot back (a create that did not happen)."""
        self.redis.zrem(slot_key(provider, model), job_id)

    def back_off(self, provider: str, model: str, seconds: float) -> None:
        """Make every worker wait `seconds` before creating on this model again."""
        now = time.time()
        self._back_off(keys=[backoff_key(provider, model)], args=[now + seconds, now])

    def in_flight(self, provider: str, model: str) -> int:
        """Jobs holding a live slot now."""
        count: int = self.redis.zcount(slot_key(provider, model), time.time(), "+inf")  # type: ignore[assignment]
        return count
