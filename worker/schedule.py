"""When to look again: the poll schedule and the retry backoff. Pure functions of their
inputs (plus a random source for jitter), so they are tested without a clock."""

from __future__ import annotations

import random

from producer.settings import Settings


def _jittered(delay: float, jitter: float, rng: random.Random) -> float:
    return delay * rng.uniform(1.0 - jitter, 1.0 + jitter)


def poll_delay(
    poll_number: int,
    expected_render_s: float,
    settings: Settings,
    rng: random.Random,
    seconds_to_deadline: float | None = None,
) -> float:
    """Seconds until poll number `poll_number` (1 = the first after submit).

    The first poll comes near the model's expected render time (or POLL_INITIAL_S); later
    ones start at POLL_MIN_S and grow by POLL_BACKOFF up to POLL_MAX_S, with +-POLL_JITTER
    so a batch submitted together does not poll in lockstep. Never later than the job's
    deadline, so expiry is noticed on time.
    """
    if poll_number <= 1:
        base = settings.poll_initial_s or min(expected_render_s, settings.poll_max_s)
    else:
        base = min(settings.poll_max_s, settings.poll_min_s * settings.poll_backoff ** (poll_number - 2))
    delay = _jittered(base, settings.poll_jitter, rng)
    if seconds_to_deadline is not None:
        delay = min(delay, max(seconds_to_deadline, 0.0) + 0.5)
    return max(0.5, delay)


def retry_delay(
    attempt: int,
    settings: Settings,
    rng: random.Random,
    retry_after: float | None = None,
) -> float:
    """Seconds before retry number `attempt` (1-based): exponential from RETRY_BASE_S,
    capped at RETRY_MAX_S, with full jitter on the upper half; never sooner than a
    provider's Retry-After."""
    ceiling = min(settings.retry_max_s, settings.retry_base_s * 2 ** max(attempt - 1, 0))
    delay = rng.uniform(ceiling / 2, ceiling)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.retry_max_s)
