"""The poll schedule and retry backoff."""

from __future__ import annotations

import random

from producer.settings import Settings
from worker.schedule import poll_delay, retry_delay


def _settings(**overrides: float) -> Settings:
    return Settings(poll_min_s=2, poll_max_s=60, poll_backoff=2, poll_jitter=0.0, **overrides)  # type: ignore[arg-type]


def test_first_poll_is_near_the_expected_render_time() -> None:
    rng = random.Random(1)
    assert poll_delay(1, 45, _settings(), rng) == 45
    assert poll_delay(1, 600, _settings(), rng) == 60  # capped
    assert poll_delay(1, 45, _settings(poll_initial_s=3), rng) == 3


def test_later_polls_back_off_exponentially_to_the_cap() -> None:
    rng = random.Random(1)
    delays = [poll_delay(n, 45, _settings(), rng) for n in range(2, 10)]
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]


def test_jitter_stays_within_bounds() -> None:
    rng = random.Random(7)
    settings = Settings(poll_min_s=10, poll_max_s=10, poll_jitter=0.2)
    delays = {poll_delay(5, 0, settings, rng) for _ in range(200)}
    assert min(delays) >= 8 and max(delays) <= 12
    assert len(delays) > 100  # really random, not one value


def test_poll_never_lands_after_the_deadline() -> None:
    rng = random.Random(1)
    assert poll_delay(9, 0, _settings(), rng, seconds_to_deadline=3) == 3.5
    assert poll_delay(9, 0, _settings(), rng, seconds_to_deadline=-10) == 0.5


def test_retry_delay_grows_is_capped_and_honours_retry_after() -> None:
    rng = random.Random(3)
    settings = Settings(retry_base_s=2, retry_max_s=30)
    assert 1 <= retry_delay(1, settings, rng) <= 2
    assert 8 <= retry_delay(4, settings, rng) <= 16
    assert 15 <= retry_delay(20, settings, rng) <= 30
    assert retry_delay(1, settings, rng, retry_after=12) == 12
    assert retry_delay(1, settings, rng, retry_after=999) == 30
