"""Fleet-wide provider limits, shared by every worker through Redis:

- a cap on provider tasks in flight per model (a slot per job, with a lease that polls
  renew, so the slots of a worker that died free themselves by expiry);
- a cap on create requests per minute per model (a sliding one-minute window);
- a fleet-wide back-off for a model after the provider answered 429.

The caps are the settings' (MAX_IN_FLIGHT_PER_MODEL, CREATES_PER_MINUTE_PER_MODEL,
MODEL_LIMITS) unless `videoqueue limits set` stored others for a model in Redis
(`keys.LIMITS_CONFIG`): those apply to the whole fleet at once, no restart. Slots and
create tokens are handed out by the waiting room's admission (videoqueue.room), one Lua
script, so concurrent workers cannot overshoot; a job never sleeps or fails for quota.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import redis

from videoqueue import keys
from videoqueue.keys import backoff_key, creates_key, slot_key

if TYPE_CHECKING:
    from videoqueue.settings import Settings

# KEYS: backoff. ARGV: until. Keeps the later of the current and the new deadline.
_BACK_OFF = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local until_ = tonumber(ARGV[1])
if until_ > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', math.ceil((until_ - tonumber(ARGV[2])) * 1000) + 1000)
end
return 1
"""


MAX_LIMIT = 1_000_000
"""The largest limit accepted (in flight, or creates per minute): far above any provider
quota, small enough to stay an exact number everywhere it is stored and shown."""

LIMIT_NAMES = ("max_in_flight", "creates_per_minute")
"""The limits a model has, by name (MODEL_LIMITS, `videoqueue limits set`)."""


def limit_problem(name: str, value: object) -> str | None:
    """What is wrong with `value` as the limit `name` (a whole number from 1 to MAX_LIMIT),
    or None."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        return f"{name} must be a whole number from 1 to {MAX_LIMIT:,}, not {value!r}"
    return None


LimitSource = Literal["redis", "workers", "shell-settings"]
"""Where a limit in force comes from (`ProviderLimits.limits_and_sources`)."""


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
        self._back_off: Any = client.register_script(_BACK_OFF)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> ProviderLimits:
        """The limits `settings` give, on `client`."""
        defaults, overrides = settings.provider_limits()
        return cls(client, defaults, overrides, settings.slot_lease_s)

    def defaults_for(self, model: str) -> ModelLimits:
        """The limits the settings give `model` (MODEL_LIMITS, else the per-model defaults)."""
        return self.overrides.get(model, self.defaults)

    def limits_for(self, model: str) -> ModelLimits:
        """The limits in force for `model`, as the workers apply them: each field stored by
        `videoqueue limits set`, else as the fleet's last admission of the model applied it
        (their settings), else these settings'."""
        return self.limits_and_sources(model)[0]

    def limits_and_sources(self, model: str) -> tuple[ModelLimits, dict[str, LimitSource]]:
        """`limits_for(model)` and where each field comes from, by field name
        (`max_in_flight`, `creates_per_minute`): "redis" (`limits set`, fleet-wide),
        "workers" (the workers' settings, as their last admission applied them) or
        "shell-settings" (this process's settings)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.LIMITS_APPLIED, model)
        pipe.hget(keys.LIMITS_CONFIG, model)
        applied_raw, config_raw = pipe.execute()
        base = self.defaults_for(model)
        values: dict[str, int] = {"max_in_flight": base.max_in_flight, "creates_per_minute": base.creates_per_minute}
        sources: dict[str, LimitSource] = dict.fromkeys(values, "shell-settings")
        for raw, source in ((applied_raw, "workers"), (config_raw, "redis")):
            layer = json.loads(raw) if raw else {}
            for name in values:
                if name in layer:
                    values[name] = int(layer[name])
                    sources[name] = source  # type: ignore[assignment]
        return ModelLimits(values["max_in_flight"], values["creates_per_minute"]), sources

    def stored(self) -> dict[str, ModelLimits]:
        """The limits `videoqueue limits set` stored, by model (a field it did not set keeps
        the settings' value)."""
        raw: dict[str, str] = self.redis.hgetall(keys.LIMITS_CONFIG)  # type: ignore[assignment]
        stored: dict[str, ModelLimits] = {}
        for model, text in raw.items():
            values = json.loads(text)
            base = self.defaults_for(model)
            stored[model] = ModelLimits(
                int(values.get("max_in_flight", base.max_in_flight)),
                int(values.get("creates_per_minute", base.creates_per_minute)),
            )
        return stored

    def store_limits(self, model: str, max_in_flight: int | None = None, creates_per_minute: int | None = None) -> None:
        """Store fleet-wide limits for `model` (each at least 1; None keeps what is stored, or
        the settings' value); the next admission of any worker follows them. Raises
        ValueError for a limit below 1."""
        for name, value in (("max_in_flight", max_in_flight), ("creates_per_minute", creates_per_minute)):
            problem = None if value is None else limit_problem(name, value)
            if problem is not None:
                raise ValueError(problem)

        def write(pipe: Any) -> None:
            current = pipe.hget(keys.LIMITS_CONFIG, model)
            values: dict[str, int] = json.loads(current) if current else {}
            if max_in_flight is not None:
                values["max_in_flight"] = max_in_flight
            if creates_per_minute is not None:
                values["creates_per_minute"] = creates_per_minute
            pipe.multi()
            pipe.hset(keys.LIMITS_CONFIG, model, json.dumps(values, sort_keys=True))

        self.redis.transaction(write, keys.LIMITS_CONFIG)

    def clear_limits(self, model: str) -> bool:
        """Forget the stored limits of `model` (the settings' apply again); True if any were
        stored. What the workers last applied is forgotten too: it held the stored limits,
        and the workers' next admission records their settings' again."""
        pipe = self.redis.pipeline()
        pipe.hdel(keys.LIMITS_CONFIG, model)
        pipe.hdel(keys.LIMITS_APPLIED, model)
        removed, _ = pipe.execute()
        return bool(removed)

    def renew(self, provider: str, model: str, job_id: str) -> None:
        """Extend a job's slot lease (each poll does): only the slots of dead jobs expire."""
        self.redis.zadd(slot_key(provider, model), {job_id: time.time() + self.lease_s}, xx=True)

    def back_off(self, provider: str, model: str, seconds: float) -> None:
        """Make every worker wait `seconds` before creating on this model again."""
        now = time.time()
        self._back_off(keys=[backoff_key(provider, model)], args=[now + seconds, now])

    def stamp_create(self, provider: str, model: str, job_id: str) -> None:
        """Count the job's create in the model's one-minute window from now, when it is sent:
        its admission's token (keyed by the job id) is replaced by one stamped now, so a
        create that trails its admission (a busy worker) still leaves a whole minute before
        the token frees, and the provider never sees more than the limit in a rolling
        minute."""
        key = creates_key(provider, model)
        pipe = self.redis.pipeline()
        pipe.zrem(key, job_id)
        pipe.zadd(key, {f"{job_id}:{uuid.uuid4().hex[:8]}": time.time()})
        pipe.expire(key, 120)
        pipe.execute()

    def holds_slot(self, provider: str, model: str, job_id: str) -> bool:
        """True when the job holds a live slot of the model."""
        lease: float | None = self.redis.zscore(slot_key(provider, model), job_id)  # type: ignore[assignment]
        return live_lease(lease)

    def in_flight(self, provider: str, model: str) -> int:
        """Jobs holding a live slot now."""
        count: int = self.redis.zcount(slot_key(provider, model), time.time(), "+inf")  # type: ignore[assignment]
        return count


def live_lease(lease: float | None) -> bool:
    """True when a slot's lease (its score in `keys.slot_key`, epoch seconds; None: no
    slot) has not run out: the job holds a live slot (`ProviderLimits.holds_slot`)."""
    return lease is not None and lease > time.time()
