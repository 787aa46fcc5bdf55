"""The waiting room of each provider and model: where a job waits for quota, in order.

A job that cannot get quota (a slot of the model's tasks in flight, a token of its creates
per minute, the end of a fleet-wide back-off after a 429) is not re-sent: it waits here,
and no message exists for it. Admission is driven by events: whenever quota may have
freed up (a job left the provider, a slot lease expired, a back-off or the one-minute
window ended, a limit was raised) `admit` takes the next waiting jobs, each with its slot
and create token, in one Lua script, and the caller sends their submit messages. Openings
that come with time alone are reported as `wake_at`: one timer per model, not one message
per waiting job (`arm_timer`).

Order: priority first (9 before 0); within a priority, weighted fair queuing between
tenants (each backlogged tenant has a virtual start time; the smallest goes next and
advances by 1/weight, so over any stretch of creates tenant shares follow their weights);
within a tenant, first in, first out by enqueue time.

Every Redis key is named in videoqueue.keys (`room_prefix`, `room_queue_key`, `ROOMS`,
`LIMITS_CONFIG`, the limits' slot, create and back-off keys, and the job store's due and
parked indexes). The scripts build the keys of a room's priorities and tenants from its
prefix: they need a single Redis server (not Redis Cluster), as the job store does.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import redis

from videoqueue import keys, stats
from videoqueue.job import JobRecord
from videoqueue.keys import backoff_key, creates_key, room_prefix, room_queue_key, slot_key
from videoqueue.limits import ProviderLimits

PRIORITIES = range(9, -1, -1)
"""Priorities from first served to last."""

ADMIT_BATCH = 100
"""At most this many jobs are admitted by one script run (bounds its time in Redis); a
caller that admitted a full batch calls again."""


class WaitingReason(StrEnum):
    """Why a job waits in its model's room (`JobRecord.waiting_reason`)."""

    IN_FLIGHT_LIMIT = "in_flight_limit"
    RATE_LIMIT = "rate_limit"
    PROVIDER_BACKOFF = "provider_backoff"


# The limits of `model` from the JSON objects each hash of `layers` holds for it, later
# layers over earlier ones, over the defaults `cap` and `rpm`.
_LUA_LIMITS = """
local function limits(model, cap, rpm, layers)
  for _, key in ipairs(layers) do
    local cfg = redis.call('HGET', key, model)
    if cfg then
      local ok, c = pcall(cjson.decode, cfg)
      if ok and type(c) == 'table' then
        cap = tonumber(c['max_in_flight']) or cap
        rpm = tonumber(c['creates_per_minute']) or rpm
      end
    end
  end
  return cap, rpm
end
"""

_LUA_ENTER = """
local function enter(prefix, job, score, prio, tenant)
  local q = prefix .. ':q:' .. prio .. ':' .. tenant
  if redis.call('ZADD', q, 'NX', score, job) == 0 then return 0 end
  local t = prefix .. ':t:' .. prio
  if not redis.call('ZSCORE', t, tenant) then
    -- A tenant (re)joining starts at the room's virtual clock, or where it left off if
    -- that is later: idle time earns no credit.
    local vt = prefix .. ':vt'
    local clock = tonumber(redis.call('HGET', vt, prio) or '0')
    local last = tonumber(redis.call('HGET', vt, prio .. ':' .. tenant) or '0')
    redis.call('ZADD', t, math.max(clock, last), tenant)
  end
  return 1
end
"""

# KEYS: 1 rooms, 2 slots, 3 creates, 4 back-off, 5 limits config, 6 due index, 7 parked index,
# 8 limits applied, 9 weights applied.
_LUA_ADMIT = (
    _LUA_LIMITS
    + """
local function next_job(prefix)
  for p = 9, 0, -1 do
    local t = prefix .. ':t:' .. p
    while true do
      local first = redis.call('ZRANGE', t, 0, 0, 'WITHSCORES')
      if #first == 0 then break end
      local head = redis.call('ZRANGE', prefix .. ':q:' .. p .. ':' .. first[1], 0, 0)
      if #head > 0 then return head[1], p, first[1], tonumber(first[2]) end
      -- Its last jobs left otherwise (cancelled, expired): the tenant leaves the line.
      redis.call('ZREM', t, first[1])
      redis.call('HSET', prefix .. ':vt', p .. ':' .. first[1], first[2])
    end
  end
  return nil
end


local function admit(prefix, room, model, now, lease, cap, rpm, weights, max_n, token)
  cap, rpm = limits(model, cap, rpm, {KEYS[5]})
  redis.call('HSET', KEYS[8], model, cjson.encode({max_in_flight = cap, creates_per_minute = rpm, at = now}))
  redis.call('SET', KEYS[9], ARGV[8])
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 60)
  local admitted = {}
  local reason, wake = '', 0
  while #admitted < max_n do
    local job, p, tenant, vstart = next_job(prefix)
    if not job then
      redis.call('SREM', KEYS[1], room)
      break
    end
    local until_ = tonumber(redis.call('GET', KEYS[4]) or '0')
    if until_ > now then reason = 'provider_backoff'; wake = until_; break end
    if redis.call('ZCARD', KEYS[2]) >= cap then reason = 'in_flight_limit'; break end
    if redis.call('ZCARD', KEYS[3]) >= rpm then
      local oldest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
      reason = 'rate_limit'; wake = tonumber(oldest[2]) + 60
      break
    end
    local q = prefix .. ':q:' .. p .. ':' .. tenant
    local t = prefix .. ':t:' .. p
    redis.call('ZREM', q, job)
    local vnext = vstart + 1 / (tonumber(weights[tenant]) or 1)
    if redis.call('ZCARD', q) == 0 then
      redis.call('ZREM', t, tenant)
      redis.call('HSET', prefix .. ':vt', p .. ':' .. tenant, vnext)
    else
      redis.call('ZADD', t, vnext, tenant)
    end
    redis.call('HSET', prefix .. ':vt', p, vstart)
    redis.call('ZADD', KEYS[2], now + lease, job)
    -- The job's create token, until its create is sent (ProviderLimits.stamp_create).
    redis.call('ZADD', KEYS[3], now, job)
    redis.call('EXPIRE', KEYS[3], 120)
    -- Its submit message is due now: a worker that dies before sending it leaves the job
    -- to the recovery sweep, which finds it overdue.
    redis.call('ZADD', KEYS[6], 'XX', now, job)
    redis.call('ZREM', KEYS[7], job)
    admitted[#admitted + 1] = job
  end
  return admitted, reason, wake
end
"""
)

# ARGV: 1 prefix, 2 room, 3 model, 4 now, 5 lease, 6 cap, 7 rpm, 8 weights, 9 max_n, 10 token.
_ADMIT = (
    _LUA_ADMIT
    + """
local admitted, reason, wake = admit(ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), tonumber(ARGV[7]), cjson.decode(ARGV[8]), tonumber(ARGV[9]), ARGV[10])
return {admitted, reason, tostring(wake)}
"""
)

# ARGV as _ADMIT, then 11 job, 12 score, 13 priority, 14 tenant, 15 deadline (epoch s).
# Returns {1 when the job holds a slot (create now) else 0, admitted ids, reason, wake_at}.
_TAKE = (
    _LUA_ENTER
    + _LUA_ADMIT
    + """
local now, lease, job = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[11]
local held = redis.call('ZSCORE', KEYS[2], job)
if held and tonumber(held) > now then
  redis.call('ZADD', KEYS[2], 'XX', now + lease, job)
  return {1, {}, '', '0'}
end
enter(ARGV[1], job, ARGV[12], ARGV[13], ARGV[14])
redis.call('SADD', KEYS[1], ARGV[2])
local admitted, reason, wake = admit(ARGV[1], ARGV[2], ARGV[3], now, lease, tonumber(ARGV[6]),
  tonumber(ARGV[7]), cjson.decode(ARGV[8]), tonumber(ARGV[9]), ARGV[10])
for _, j in ipairs(admitted) do
  if j == job then return {1, admitted, reason, tostring(wake)} end
end
-- It waits: no message exists for it. Its deadline is its only due time; the sweep sends
-- its submit then, and the submit step ends it (expired) unless it was admitted before.
redis.call('ZADD', KEYS[6], 'XX', ARGV[15], job)
redis.call('ZADD', KEYS[7], ARGV[15], job)
return {0, admitted, reason, tostring(wake)}
"""
)

# KEYS: 1 rooms. ARGV: 1 prefix, 2 room, 3 job, 4 score, 5 priority, 6 tenant.
_ENTER = (
    _LUA_ENTER
    + """
redis.call('SADD', KEYS[1], ARGV[2])
return enter(ARGV[1], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""
)

# KEYS: 1 slots, 2 creates, 3 back-off, 4 limits config, 5 limits applied, 6 weights applied.
# ARGV: 1 prefix, 2 model, 3 now, 4 cap, 5 rpm, 6 weights, 7 job, 8 priority, 9 tenant.
# Returns {position (0: not waiting), in flight, cap, creates in the last minute, rpm,
# back-off until} (numbers as strings). The position is the job's place in the order
# admission would follow if no other job arrived: every job of a higher priority, then
# those of its priority whose virtual start comes first.
_POSITION = (
    _LUA_LIMITS
    + """
local prefix, job, prio, tenant = ARGV[1], ARGV[7], tonumber(ARGV[8]), ARGV[9]
local now = tonumber(ARGV[3])
-- As the workers apply them: as their last admission did, overlaid by what `limits set`
-- stored since (else this process's settings).
local cap, rpm = limits(ARGV[2], tonumber(ARGV[4]), tonumber(ARGV[5]), {KEYS[5], KEYS[4]})
local in_flight = redis.call('ZCOUNT', KEYS[1], now, '+inf')
local creates = redis.call('ZCOUNT', KEYS[2], now - 60, '+inf')
local backoff = tonumber(redis.call('GET', KEYS[3]) or '0')
local rank = redis.call('ZRANK', prefix .. ':q:' .. prio .. ':' .. tenant, job)
if not rank then
  return {'0', tostring(in_flight), tostring(cap), tostring(creates), tostring(rpm), tostring(backoff)}
end
-- The tenants' weights as the workers' last admission applied them, else ours.
local weights = cjson.decode(redis.call('GET', KEYS[6]) or ARGV[6])
local ahead = rank
for p = 9, prio + 1, -1 do
  for _, u in ipairs(redis.call('ZRANGE', prefix .. ':t:' .. p, 0, -1)) do
    ahead = ahead + redis.call('ZCARD', prefix .. ':q:' .. p .. ':' .. u)
  end
end
local t = prefix .. ':t:' .. prio
local mine = tonumber(redis.call('ZSCORE', t, tenant) or '0')
local start = mine + rank / (tonumber(weights[tenant]) or 1)
local others = redis.call('ZRANGE', t, 0, -1, 'WITHSCORES')
for i = 1, #others, 2 do
  local u = others[i]
  if u ~= tenant then
    local n = redis.call('ZCARD', prefix .. ':q:' .. prio .. ':' .. u)
    -- Jobs k = 0.. of tenant u start at vu + k / wu: those starting before ours go first,
    -- and on a tie the tenant whose name sorts first (the sorted set's own order).
    local x = (start - tonumber(others[i + 1])) * (tonumber(weights[u]) or 1)
    local k = math.floor(x + 0.5)
    local before
    if math.abs(x - k) < 1e-9 then
      before = k
      if u < tenant then before = k + 1 end
    else
      before = math.ceil(x)
    end
    ahead = ahead + math.max(0, math.min(n, before))
  end
end
return {tostring(ahead + 1), tostring(in_flight), tostring(cap), tostring(creates), tostring(rpm), tostring(backoff)}
"""
)

# KEYS: 1 timer. ARGV: 1 when (epoch s), 2 now. Sets the model's timer unless one is set
# for earlier and still to come; returns 1 when the caller is to send the admit message.
_ARM = """
local at, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > now and current <= at then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', math.ceil((at - now) * 1000) + 5000)
return 1
"""


@dataclass(frozen=True)
class Admission:
    """What one admission did: `admitted`, the ids of the jobs it took out of the room
    (each now holds a slot and a create token; its submit message is to be sent); `reason`,
    why the next waiting job still waits (None when nobody waits); `wake_at`, when (epoch
    s) time alone opens quota again (rate window, back-off end), else None."""

    admitted: list[str] = field(default_factory=list)
    reason: WaitingReason | None = None
    wake_at: float | None = None


@dataclass(frozen=True)
class Take:
    """A submit's ask for quota: `go` when its job holds a slot and may create now;
    `admission` what the ask admitted besides (its own id included when `go`)."""

    go: bool
    admission: Admission


@dataclass(frozen=True)
class Standing:
    """Where a waiting job stands: `queue_position` (1-based, in its model's room),
    `waiting_reason` and `estimated_start_at` (UTC; None when no render time of the model is
    known yet). All None for a job that does not wait."""

    queue_position: int | None = None
    waiting_reason: WaitingReason | None = None
    estimated_start_at: datetime | None = None


@dataclass
class RoomSnapshot:
    """One model's room and quota now, for `videoqueue queue` and the metrics exporter.

    `waiting` maps (priority, tenant) to the number of waiting jobs; `oldest_wait_s` is how
    long the longest-waiting job has waited (seconds, None when nobody waits);
    `in_flight`/`max_in_flight` the live slots and the cap; `creates_last_minute`/
    `creates_per_minute` the rate window and its cap; `backoff_until` the end of a
    fleet-wide back-off (None when none)."""

    provider: str
    model: str
    waiting: dict[tuple[int, str], int]
    oldest_wait_s: float | None
    in_flight: int
    max_in_flight: int
    creates_last_minute: int
    creates_per_minute: int
    backoff_until: datetime | None

    @property
    def total_waiting(self) -> int:
        """Jobs waiting in the room."""
        return sum(self.waiting.values())


def enqueue_score(created_at: datetime) -> int:
    """A job's place in its tenant's line: its enqueue time in epoch microseconds."""
    return int(created_at.timestamp() * 1_000_000)


def _weights_json(weights: Mapping[str, float]) -> str:
    # An empty Lua table encodes to `{}`; cjson decodes `{}` as a table too.
    return json.dumps({name: float(weight) for name, weight in weights.items()})


class WaitingRoom:
    """The waiting rooms of every model, in Redis, and their admission.

    `limits` gives each model's quota (settings, overridden by `videoqueue limits set`
    through `LIMITS_CONFIG`) and the slot lease; `weights` the tenants' weights
    (TENANT_WEIGHTS; 1 for a tenant not listed)."""

    def __init__(self, client: redis.Redis, limits: ProviderLimits, weights: Mapping[str, float] | None = None):
        self.redis = client
        self.limits = limits
        self.weights = dict(weights or {})
        self._take: Any = client.register_script(_TAKE)
        self._admit: Any = client.register_script(_ADMIT)
        self._position: Any = client.register_script(_POSITION)
        self._arm: Any = client.register_script(_ARM)
        self._enter: Any = client.register_script(_ENTER)

    def enter(self, job: JobRecord, score: int | None = None) -> bool:
        """Put `job` in its model's room at `score` (default: its enqueue time,
        `enqueue_score`) without admitting anyone; False when it waits there already (it
        keeps its place). The submit step's `take` enters a job itself."""
        entered = self._enter(
            keys=[keys.ROOMS],
            args=[
                room_prefix(job.provider, job.model),
                f"{job.provider}|{job.model}",
                job.id,
                enqueue_score(job.created_at) if score is None else score,
                job.request.priority,
                job.request.tenant,
            ],
        )
        return int(entered) == 1

    def _admit_keys(self, provider: str, model: str) -> list[str]:
        return [
            keys.ROOMS,
            slot_key(provider, model),
            creates_key(provider, model),
            backoff_key(provider, model),
            keys.LIMITS_CONFIG,
            keys.DUE_INDEX,
            keys.PARKED_INDEX,
            keys.LIMITS_APPLIED,
            keys.WEIGHTS_APPLIED,
        ]

    def _admit_args(self, provider: str, model: str, now: float) -> list[Any]:
        defaults = self.limits.defaults_for(model)
        return [
            room_prefix(provider, model),
            f"{provider}|{model}",
            model,
            now,
            self.limits.lease_s,
            defaults.max_in_flight,
            defaults.creates_per_minute,
            _weights_json(self.weights),
            ADMIT_BATCH,
            uuid.uuid4().hex[:8],
        ]

    def take(self, job: JobRecord, now: float | None = None) -> Take:
        """Ask quota for `job`'s create: go at once when it holds a slot (admitted, or a
        create attempt that keeps its slot); else it joins its room (once) and the room
        admits whom the quota allows, in order. A job left waiting is parked in the job
        store until its deadline (no message is sent for it)."""
        now = time.time() if now is None else now
        go, admitted, reason, wake = self._take(
            keys=self._admit_keys(job.provider, job.model),
            args=[
                *self._admit_args(job.provider, job.model, now),
                job.id,
                enqueue_score(job.created_at),
                job.request.priority,
                job.request.tenant,
                job.deadline_at.timestamp(),
            ],
        )
        return Take(go=int(go) == 1, admission=_admission(admitted, reason, wake))

    def admit(self, provider: str, model: str, now: float | None = None) -> Admission:
        """Admit the next waiting jobs of a model, as many as its quota allows (at most
        ADMIT_BATCH), also dropping the slots whose lease ran out."""
        now = time.time() if now is None else now
        admitted, reason, wake = self._admit(
            keys=self._admit_keys(provider, model), args=self._admit_args(provider, model, now)
        )
        return _admission(admitted, reason, wake)

    def arm_timer(self, provider: str, model: str, at: float, now: float | None = None) -> bool:
        """Record that the model's room is to be admitted again at `at` (epoch s); True when
        the caller must send that one admit message (no timer was due by then)."""
        now = time.time() if now is None else now
        armed = self._arm(keys=[room_prefix(provider, model) + ":timer"], args=[at, now])
        return int(armed) == 1

    def disarm_timer(self, provider: str, model: str) -> None:
        """Forget the model's timer: its admit message is running (and re-arms the timer
        if the opening has not come yet, as on a clock a little behind the sender's)."""
        self.redis.delete(room_prefix(provider, model) + ":timer")

    def has_waiting(self, provider: str, model: str) -> bool:
        """True when the model's room may hold waiting jobs (it leaves `ROOMS` when an
        admission finds it empty)."""
        return bool(self.redis.sismember(keys.ROOMS, f"{provider}|{model}"))

    def rooms(self) -> list[tuple[str, str]]:
        """(provider, model) of every room that may hold waiting jobs."""
        members: set[str] = self.redis.smembers(keys.ROOMS)  # type: ignore[assignment]
        return sorted(tuple(m.split("|", 1)) for m in members if "|" in m)  # type: ignore[misc]

    def models_in_use(self) -> list[tuple[str, str]]:
        """(provider, model) of every room that may hold waiting jobs (`rooms`) and of every
        model with slots taken (a slot whose lease ran out counts until an admission drops
        it), sorted: the models `videoqueue queue` and the metrics exporter report on."""
        found = set(self.rooms())
        prefix = f"{keys.LIMITS_PREFIX}slots:"
        for key in self.redis.scan_iter(f"{prefix}*", count=500):
            provider, sep, model = str(key).removeprefix(prefix).partition(":")
            if sep:
                found.add((provider, model))
        return sorted(found)

    def standing(self, job: JobRecord, now: float | None = None) -> Standing:
        """Where `job` stands in its model's room (all None when it does not wait), with
        its start estimated from the model's mean render time (videoqueue.stats) and quota."""
        now = time.time() if now is None else now
        defaults = self.limits.defaults_for(job.model)
        raw = self._position(
            keys=[
                slot_key(job.provider, job.model),
                creates_key(job.provider, job.model),
                backoff_key(job.provider, job.model),
                keys.LIMITS_CONFIG,
                keys.LIMITS_APPLIED,
                keys.WEIGHTS_APPLIED,
            ],
            args=[
                room_prefix(job.provider, job.model),
                job.model,
                now,
                defaults.max_in_flight,
                defaults.creates_per_minute,
                _weights_json(self.weights),
                job.id,
                job.request.priority,
                job.request.tenant,
            ],
        )
        position, in_flight, cap, creates, rpm, backoff = (float(v) for v in raw)
        if position <= 0:
            return Standing()
        free = max(0.0, cap - in_flight)
        reason: WaitingReason | None = None
        start = now
        if backoff > now:
            reason, start = WaitingReason.PROVIDER_BACKOFF, backoff
        elif position > free:
            reason = WaitingReason.IN_FLIGHT_LIMIT
        elif creates >= rpm:
            reason = WaitingReason.RATE_LIMIT
        estimate: float | None = start
        if position > free:
            mean = self.mean_render_s(job.provider, job.model)
            # A fluid estimate: the slots free up at `cap` per mean render time.
            estimate = None if mean is None else start + (position - free) / cap * mean
        headroom = max(0.0, rpm - creates)
        if estimate is not None and position > headroom:
            estimate = max(estimate, self._create_token_at(job.provider, job.model, int(position - headroom), rpm, now))
        return Standing(
            queue_position=int(position),
            waiting_reason=reason,
            estimated_start_at=None if estimate is None else datetime.fromtimestamp(estimate, UTC),
        )

    def _create_token_at(self, provider: str, model: str, k: int, rpm: float, now: float) -> float:
        """When (epoch s) the k-th create token of the model frees up: a minute after the
        k-th oldest create of the window; past the window's creates, a minute per `rpm`."""
        oldest: list[tuple[str, float]] = self.redis.zrangebyscore(  # type: ignore[assignment]
            creates_key(provider, model), now - 60, "+inf", start=k - 1, num=1, withscores=True
        )
        if oldest:
            return oldest[0][1] + 60.0
        return now + 60.0 * math.ceil(k / rpm)

    def mean_render_s(self, provider: str, model: str) -> float | None:
        """The mean render time (seconds) of the model's finished jobs, or None when none
        finished yet (videoqueue.stats' histogram)."""
        count, total = stats.observations(self.redis, keys.STATS_RENDER_SECONDS, stats.RENDER_BUCKETS, provider, model)
        if count <= 0:
            return None
        return total / count

    def snapshot(self, provider: str, model: str, now: float | None = None) -> RoomSnapshot:
        """The model's room and quota now (not one atomic read: a live view)."""
        now = time.time() if now is None else now
        prefix = room_prefix(provider, model)
        pipe = self.redis.pipeline(transaction=False)
        for priority in PRIORITIES:
            pipe.zrange(f"{prefix}:t:{priority}", 0, -1)
        tenants: list[list[str]] = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        lines = [(p, t) for p, names in zip(PRIORITIES, tenants, strict=True) for t in names]
        for priority, tenant in lines:
            queue = room_queue_key(provider, model, priority, tenant)
            pipe.zcard(queue)
            pipe.zrange(queue, 0, 0, withscores=True)
        pipe.zcount(slot_key(provider, model), now, "+inf")
        pipe.zcount(creates_key(provider, model), now - 60, "+inf")
        pipe.get(backoff_key(provider, model))
        results = pipe.execute()
        waiting: dict[tuple[int, str], int] = {}
        oldest: float | None = None
        for i, line in enumerate(lines):
            count, head = int(results[2 * i]), results[2 * i + 1]
            if count:
                waiting[line] = count
            if head:
                oldest = min(oldest or math.inf, head[0][1] / 1_000_000)
        in_flight, creates, backoff = results[-3:]
        limits = self.limits.limits_for(model)
        backoff_at = float(backoff) if backoff else 0.0
        return RoomSnapshot(
            provider=provider,
            model=model,
            waiting=waiting,
            oldest_wait_s=None if oldest is None else max(0.0, now - oldest),
            in_flight=int(in_flight),
            max_in_flight=limits.max_in_flight,
            creates_last_minute=int(creates),
            creates_per_minute=limits.creates_per_minute,
            backoff_until=datetime.fromtimestamp(backoff_at, UTC) if backoff_at > now else None,
        )


def leave(pipe: Any, job: JobRecord) -> None:
    """Queue, on a pipeline, `job`'s removal from its room (a job that ends while it
    waits: cancelled, expired, failed). Its tenant leaves the line lazily, at the next
    admission."""
    pipe.zrem(room_queue_key(job.provider, job.model, job.request.priority, job.request.tenant), job.id)


def _admission(admitted: list[Any], reason: Any, wake: Any) -> Admission:
    wake_at = float(wake)
    return Admission(
        admitted=[str(a) for a in admitted],
        reason=WaitingReason(str(reason)) if reason else None,
        wake_at=wake_at if wake_at > 0 else None,
    )
