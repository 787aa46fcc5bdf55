"""Parked steps: what keeps the countdown messages workers hold bounded, whatever the
number of jobs in flight.

On a Redis broker a worker holds every countdown message it received, unacknowledged, in
its memory until due (about 9 KB each), and at Celery's `worker_eta_task_limit` it stops
taking any message at all. So a step is sent as a countdown message only when it is due
within `COUNTDOWN_HORIZON_S` and fewer than `HELD_MESSAGES_MAX` are held fleet-wide;
otherwise it is parked: its due time goes to the due index (`P jobs:due`) and the parked
index (`P jobs:parked`), no message is sent. One timer (`P jobs:parked:timer`, one
`videoqueue.unpark` message, as a waiting room's admit timer) runs at the earliest parked
due time, less `PARK_LEAD_S`, sends the parked steps due by then (those due within the
lead with their remaining countdown, as far as the bound allows) at most `UNPARK_BATCH`
a run, and re-arms for the next. The recovery sweep sends due parked steps too and arms a
timer that was lost (`arm`).

The held count is not a counter: it is read from the indexes (active jobs due in the
future, less those parked for the future), so a killed worker leaves nothing wrong. It
over-counts a little (a claim's or a store attempt's lease end is a future due time with
no message held), which only parks earlier; concurrent senders may each pass the check at
the bound, which the margin of `worker_eta_task_limit` (celeryconfig.py) absorbs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from videoqueue import keys
from videoqueue.queues import broker_timing
from videoqueue.settings import Settings

PARK_LEAD_S = 5.0
"""The timer runs this long before the earliest parked due time and sends the steps due
by then with their remaining countdown (never more than COUNTDOWN_HORIZON_S): a parked
step is detected when due, not one timer run later."""

UNPARK_BATCH = 500
"""The most parked steps one timer run sends; more due at once: the next run follows at
once."""


def eta_task_limit(held_max: int) -> int:
    """Celery's `worker_eta_task_limit` for a fleet bound of `held_max` held countdown
    messages: above it by a quarter (at least 200), so no worker reaches Celery's cap
    (where it takes no new work) even when it alone holds them all plus what the bound
    does not count: the admit and unpark timers, store retries (Celery's own retry),
    and the few steps concurrent senders place past the bound at once."""
    return held_max + max(200, held_max // 4)


# Held = active jobs due after now, less those parked for after now (both scored by due
# time); a job's own future entry is not another message.
_HELD = """
local function held(due_key, parked_key, now)
  return redis.call('ZCOUNT', due_key, '(' .. now, '+inf') - redis.call('ZCOUNT', parked_key, '(' .. now, '+inf')
end
"""

# KEYS: 1 due, 2 parked, 3 timer. ARGV: 1 job id, 2 due (epoch s), 3 now, 4 horizon (s),
# 5 held max, 6 lead (s), 7 longest timer countdown (s).
# Returns {'1'} to send the step now with its countdown, {'0', timer countdown} when parked
# (timer countdown '-1': a timer already runs by then; else the caller sends the unpark
# message after that many seconds).
_PLACE = (
    _HELD
    + """
local job, due, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local horizon, held_max, lead, longest = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
if due - now <= horizon then
  local n = 0
  if due > now then
    n = held(KEYS[1], KEYS[2], ARGV[3])
    local own = tonumber(redis.call('ZSCORE', KEYS[1], job) or '0')
    local own_parked = tonumber(redis.call('ZSCORE', KEYS[2], job) or '0')
    if own > now and not (own_parked > now) then n = n - 1 end
  end
  if due <= now or n < held_max then
    redis.call('ZADD', KEYS[1], 'XX', due, job)
    redis.call('ZREM', KEYS[2], job)
    return {'1'}
  end
end
redis.call('ZADD', KEYS[1], 'XX', due, job)
redis.call('ZADD', KEYS[2], due, job)
local at = math.min(math.max(now, due - lead), now + longest)
local current = tonumber(redis.call('GET', KEYS[3]) or '0')
if current > now and current <= at then return {'0', '-1'} end
redis.call('SET', KEYS[3], tostring(at), 'PX', math.ceil((at - now) * 1000) + 5000)
return {'0', tostring(at - now)}
"""
)

# KEYS: 1 due, 2 parked, 3 timer. ARGV: 1 now, 2 lead (s), 3 held max, 4 batch,
# 5 longest timer countdown (s). Takes out of the parked index the steps due by now, then
# those due within the lead as far as the held bound allows; re-arms the timer for the
# rest. Returns {timer countdown or '-1' (nothing parked), id, countdown, id, countdown...}.
_TAKE = (
    _HELD
    + """
local now, lead = tonumber(ARGV[1]), tonumber(ARGV[2])
local held_max, batch, longest = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('DEL', KEYS[3])
local out = {'-1'}
local taken = 0
for _, job in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, batch)) do
  redis.call('ZREM', KEYS[2], job)
  out[#out + 1] = job
  out[#out + 1] = '0'
  taken = taken + 1
end
local room = held_max - held(KEYS[1], KEYS[2], ARGV[1])
if taken < batch and room > 0 then
  local near = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], now + lead,
    'WITHSCORES', 'LIMIT', 0, math.min(batch - taken, room))
  for i = 1, #near, 2 do
    redis.call('ZREM', KEYS[2], near[i])
    out[#out + 1] = near[i]
    out[#out + 1] = tostring(tonumber(near[i + 1]) - now)
    room = room - 1
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first == 0 then return out end
local next_due = tonumber(first[2])
local at = next_due
if room > 0 then at = next_due - lead end
at = math.min(math.max(now, at), now + longest)
redis.call('SET', KEYS[3], tostring(at), 'PX', math.ceil((at - now) * 1000) + 5000)
out[1] = tostring(at - now)
return out
"""
)

# KEYS: 1 parked, 2 timer. ARGV: 1 now, 2 lead (s), 3 longest timer countdown (s). Arms the
# timer for the earliest parked step unless one runs by then; returns the countdown of
# the unpark message to send, or '-1'.
_ARM = """
local now, lead, longest = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return '-1' end
local at = math.min(math.max(now, tonumber(first[2]) - lead), now + longest)
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current > now and current <= at then return '-1' end
redis.call('SET', KEYS[2], tostring(at), 'PX', math.ceil((at - now) * 1000) + 5000)
return tostring(at - now)
"""


@dataclass(frozen=True)
class Placement:
    """Where a step went: `send` True, the caller sends it as a countdown message now;
    False, it is parked, and when `timer_countdown` is not None the caller sends the one
    unpark message after that many seconds (the timer was armed for it)."""

    send: bool
    timer_countdown: float | None = None


@dataclass(frozen=True)
class Unparked:
    """What one timer run took out of the parked index: `steps`, (job id, countdown in s:
    0 for a step due now) each to be sent once by the caller; `timer_countdown`, after how
    many seconds the next unpark message is to be sent (None: nothing left parked)."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    timer_countdown: float | None = None


class Parking:
    """Decides for each step between a countdown message and the parked index, and runs
    the park timer (module docstring). All seconds; times are epoch seconds."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        horizon_s: float,
        held_max: int,
        longest_countdown_s: float,
        lead_s: float = PARK_LEAD_S,
        batch: int = UNPARK_BATCH,
    ) -> None:
        """`horizon_s` is bounded by `longest_countdown_s` (the broker's own bound,
        `BrokerTiming.max_countdown_s`), and the lead by the horizon."""
        self.redis = client
        self.longest_countdown_s = longest_countdown_s
        self.horizon_s = min(horizon_s, longest_countdown_s)
        self.held_max = held_max
        self.lead_s = min(lead_s, self.horizon_s)
        self.batch = batch
        self._place = client.register_script(_PLACE)
        self._take = client.register_script(_TAKE)
        self._arm = client.register_script(_ARM)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> Parking:
        """COUNTDOWN_HORIZON_S and HELD_MESSAGES_MAX, bounded by the broker's timing."""
        return cls(
            client,
            horizon_s=settings.countdown_horizon_s,
            held_max=settings.held_messages_max,
            longest_countdown_s=broker_timing(settings).max_countdown_s,
        )

    def place(self, job_id: str, due: float, now: float | None = None) -> Placement:
        """Record that the job's next step is due at `due`: sent (the due index says when,
        the job is no longer parked) or parked (both indexes; the timer armed if needed).
        The caller sends the message after this returns, so a crash in between looks like
        a lost message, which the sweep recovers."""
        now = time.time() if now is None else now
        answer = self._place(
            keys=[keys.DUE_INDEX, keys.PARKED_INDEX, keys.PARK_TIMER],
            args=[job_id, due, now, self.horizon_s, self.held_max, self.lead_s, self.longest_countdown_s],
        )
        if _text(answer[0]) == "1":
            return Placement(send=True)
        return Placement(send=False, timer_countdown=_countdown(answer[1]))

    def take_due(self, now: float | None = None) -> Unparked:
        """One timer run: take out of the parked index the steps to send now (each id to
        one caller only) and re-arm the timer for the rest."""
        now = time.time() if now is None else now
        answer = self._take(
            keys=[keys.DUE_INDEX, keys.PARKED_INDEX, keys.PARK_TIMER],
            args=[now, self.lead_s, self.held_max, self.batch, self.longest_countdown_s],
        )
        pairs = answer[1:]
        steps = [(_text(pairs[i]), max(0.0, float(pairs[i + 1]))) for i in range(0, len(pairs), 2)]
        return Unparked(steps=steps, timer_countdown=_countdown(answer[0]))

    def arm(self, now: float | None = None) -> float | None:
        """Arm the timer for the earliest parked step unless one already runs by then (the
        sweep's repair of a lost unpark message). Returns the countdown of the unpark
        message the caller is to send, or None."""
        now = time.time() if now is None else now
        answer = self._arm(keys=[keys.PARKED_INDEX, keys.PARK_TIMER], args=[now, self.lead_s, self.longest_countdown_s])
        return _countdown(answer)

    def held(self, now: float | None = None) -> int:
        """Countdown messages held fleet-wide now, as the indexes tell (an upper bound)."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(keys.DUE_INDEX, f"({now}", "+inf")
        pipe.zcount(keys.PARKED_INDEX, f"({now}", "+inf")
        due, parked = pipe.execute()
        return int(due) - int(parked)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _countdown(value: Any) -> float | None:
    seconds = float(_text(value))
    return None if seconds < 0 else seconds
