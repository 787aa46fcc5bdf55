"""When to look again: the poll schedule and the retry backoff. Pure functions of their
inputs (plus a random source for jitter), so they are tested without a clock.

Two poll schedules:

- the cold schedule, for a kind of job we have not seen often enough: the first poll
  after a couple of seconds, then intervals that grow with the time already waited, so
  a fast failure is seen in seconds and a slow render costs few polls;
- the learned window, once POLL_HISTORY_MIN render times of the same kind of job are
  known (worker/render_history.py): the first poll at a low quantile of them, then one
  every POLL_INTERVAL_S until a high quantile has passed, then backing off. Renders of
  one kind of clip take much the same time, so almost every job finishes inside the
  window and is seen within POLL_INTERVAL_S of finishing, without polls before it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from videoqueue.settings import Settings


def _jittered(delay: float, jitter: float, rng: random.Random) -> float:
    return delay * rng.uniform(1.0 - jitter, 1.0 + jitter)


def poll_delay(
    elapsed_s: float,
    settings: Settings,
    rng: random.Random,
    seconds_to_deadline: float | None = None,
    *,
    first: bool = False,
) -> float:
    """Seconds until the next poll of a job submitted `elapsed_s` ago, on the cold
    schedule (no render times of its kind known yet, or POLL_SCHEDULE=backoff).

    The first poll comes after POLL_INITIAL_S (default POLL_MIN_S, 2 s), so a task that
    fails at once or a very fast model is seen within seconds. Each later interval is
    POLL_MIN_S plus (POLL_BACKOFF - 1) of the time already waited, up to POLL_MAX_S: a
    job that finishes at any time T is seen at most about POLL_MIN_S + 0.2 T later
    (POLL_BACKOFF 1.2), for about 15 polls to 2 minutes. +-POLL_JITTER spreads a batch.
    Never later than the job's deadline (while it is ahead), so it is looked at then.
    """
    if first:
        base = settings.poll_initial_s or settings.poll_min_s
    else:
        base = settings.poll_min_s + (settings.poll_backoff - 1.0) * max(elapsed_s, 0.0)
    base = min(base, settings.poll_max_s)
    return _bounded(_jittered(base, settings.poll_jitter, rng), seconds_to_deadline)


def _bounded(delay: float, seconds_to_deadline: float | None) -> float:
    # Past the deadline the last status call has been made; the provider task, still
    # running and unstoppable, is followed on the ordinary cadence.
    if seconds_to_deadline is not None and seconds_to_deadline > 0:
        delay = min(delay, seconds_to_deadline + 0.5)
    return max(0.5, delay)


@dataclass(frozen=True)
class RenderWindow:
    """Seconds after submit between which a job of one kind almost always finishes."""

    start_s: float
    end_s: float


def quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted, non-empty values, interpolating linearly."""
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def render_window(render_times: Sequence[float], settings: Settings) -> RenderWindow | None:
    """The window of the observed render times, or None with fewer than POLL_HISTORY_MIN."""
    if len(render_times) < settings.poll_history_min:
        return None
    ordered = sorted(render_times)
    return RenderWindow(
        quantile(ordered, settings.poll_window_low_q),
        quantile(ordered, settings.poll_window_high_q),
    )


def window_poll_delay(
    elapsed_s: float,
    window: RenderWindow,
    settings: Settings,
    rng: random.Random,
    seconds_to_deadline: float | None = None,
    *,
    interval_s: float | None = None,
) -> float:
    """Seconds until the next poll of a job submitted `elapsed_s` ago, under the learned
    window: wait for the window to open, poll every `interval_s` (default POLL_INTERVAL_S)
    inside it, and past its end let the time overdue grow by POLL_BACKOFF per poll (capped
    at POLL_MAX_S).

    Jitter is +-POLL_JITTER of one interval, not of the whole wait: a batch still spreads
    out, and the first poll still lands at the window's start, not seconds around it.
    """
    interval = settings.poll_interval_s if interval_s is None else interval_s
    spread = settings.poll_jitter * interval
    if elapsed_s < window.start_s:
        delay = window.start_s - elapsed_s + rng.uniform(-spread, spread)
    elif elapsed_s < window.end_s:
        delay = interval + rng.uniform(-spread, spread)
    else:
        overdue = elapsed_s - window.end_s
        base = max(interval, (settings.poll_backoff - 1.0) * overdue)
        delay = _jittered(min(base, settings.poll_max_s), settings.poll_jitter, rng)
    return _bounded(delay, seconds_to_deadline)


def safety_poll_delay(settings: Settings, rng: random.Random, seconds_to_deadline: float | None = None) -> float:
    """Seconds until the next poll of a job whose provider calls back (CALLBACK_BASE_URL):
    CALLBACK_SAFETY_POLL_S +-POLL_JITTER, for a callback that was lost. Never later than
    the job's deadline (while it is ahead), like every poll."""
    return _bounded(_jittered(settings.callback_safety_poll_s, settings.poll_jitter, rng), seconds_to_deadline)


def retry_delay(
    attempt: int,
    settings: Settings,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds before retry number `attempt` (1-based): exponential from RETRY_BASE_S,
    capped at RETRY_MAX_S, with full jitter on the upper half; never sooner than a
    provider's Retry-After."""
    # Not Celery's get_exponential_backoff_interval: it takes whole seconds (RETRY_BASE_S
    # may be 0.5) and its jitter draws from the global random module over [0, ceiling],
    # where ours is seeded and never retries sooner than half the ceiling.
    ceiling = min(settings.retry_max_s, settings.retry_base_s * 2 ** max(attempt - 1, 0))
    delay = rng.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.retry_max_s)
