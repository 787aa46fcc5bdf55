"""The poll schedule and retry backoff."""

from __future__ import annotations

import random

import pytest

from videoqueue.settings import Settings
from worker.schedule import RenderWindow, poll_delay, quantile, render_window, retry_delay, window_poll_delay


def _settings(**overrides: float) -> Settings:
    return Settings(poll_min_s=2, poll_max_s=60, poll_backoff=1.2, poll_jitter=0.0, **overrides)  # type: ignore[arg-type]


def test_first_poll_comes_after_poll_min_s_or_poll_initial_s() -> None:
    rng = random.Random(1)
    assert poll_delay(0, _settings(), rng, first=True) == 2
    assert poll_delay(0, _settings(poll_initial_s=3), rng, first=True) == 3


def test_later_intervals_grow_with_the_time_waited_up_to_the_cap() -> None:
    rng = random.Random(1)
    assert poll_delay(10, _settings(), rng) == pytest.approx(4)  # 2 + 0.2 x 10
    assert poll_delay(100, _settings(), rng) == pytest.approx(22)
    assert poll_delay(1000, _settings(), rng) == 60  # capped


def _poll_times(settings: Settings, rng: random.Random, until: float) -> list[float]:
    times = [poll_delay(0, settings, rng, first=True)]
    while times[-1] < until:
        times.append(times[-1] + poll_delay(times[-1], settings, rng))
    return times


def test_cold_schedule_sees_any_ending_within_a_quarter_of_its_time_plus_3_s() -> None:
    """The figure issue 11 asks for: with the defaults, whatever the jitter, a task that
    ends at T (a failure at 1 s, a render of 3 s or of 2 minutes) is polled by 1.25 T + 3 s,
    with 1, 2, 8 and about 15 polls for 1, 3, 30 and 120 s."""
    settings = Settings(_env_file=None)
    for seed in range(50):
        times = _poll_times(settings, random.Random(seed), 400)
        for end in [0.1, 1, 3, 7.5, 30, 59, 120, 250]:
            seen = next(t for t in times if t >= end)
            assert seen - end <= 0.25 * end + 3, (seed, end, seen)
    nominal = _poll_times(Settings(_env_file=None, poll_jitter=0), random.Random(0), 120)
    assert [sum(1 for t in nominal if t < end) + 1 for end in (1, 3, 30, 120)] == [1, 2, 8, 15]


def test_jitter_stays_within_bounds() -> None:
    rng = random.Random(7)
    settings = Settings(poll_min_s=10, poll_max_s=10, poll_jitter=0.2)
    delays = {poll_delay(5, settings, rng) for _ in range(200)}
    assert min(delays) >= 8 and max(delays) <= 12
    assert len(delays) > 100  # really random, not one value


def test_poll_lands_at_the_deadline_and_keeps_its_cadence_past_it() -> None:
    rng = random.Random(1)
    assert poll_delay(100, _settings(), rng, seconds_to_deadline=3) == 3.5
    # Past the deadline the task is followed on the ordinary cadence, not every 0.5 s.
    assert poll_delay(100, _settings(), rng, seconds_to_deadline=-10) == pytest.approx(22)


def test_retry_delay_grows_is_capped_and_honours_retry_after() -> None:
    rng = random.Random(3)
    settings = Settings(retry_base_s=2, retry_max_s=30)
    assert 1 <= retry_delay(1, settings, rng) <= 2
    assert 8 <= retry_delay(4, settings, rng) <= 16
    assert 15 <= retry_delay(20, settings, rng) <= 30
    assert retry_delay(1, settings, rng, retry_after=12) == 12
    assert retry_delay(1, settings, rng, retry_after=999) == 30


def _window_settings(**overrides: float) -> Settings:
    values: dict[str, float] = {
        "poll_interval_s": 3,
        "poll_jitter": 0.0,
        "poll_backoff": 1.5,
        "poll_max_s": 60,
        "poll_history_min": 10,
        "poll_window_low_q": 0.1,
        "poll_window_high_q": 0.9,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_quantile_interpolates_between_samples() -> None:
    assert quantile([10.0], 0.5) == 10.0
    assert quantile([10.0, 20.0], 0.25) == 12.5
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 1.0) == 5.0


def test_no_window_until_enough_render_times_are_known() -> None:
    settings = _window_settings()
    assert render_window([40.0] * 9, settings) is None
    window = render_window([float(s) for s in range(40, 51)], settings)  # 40..50
    assert window == RenderWindow(41.0, 49.0)


def test_learned_window_waits_polls_densely_then_backs_off() -> None:
    settings, rng = _window_settings(), random.Random(1)
    window = RenderWindow(40.0, 50.0)
    assert window_poll_delay(0.0, window, settings, rng) == 40.0  # first poll: the window opens
    assert window_poll_delay(40.0, window, settings, rng) == 3.0  # inside: every POLL_INTERVAL_S
    assert window_poll_delay(49.0, window, settings, rng) == 3.0
    assert window_poll_delay(52.0, window, settings, rng) == 3.0  # just past: not less than the interval
    assert window_poll_delay(70.0, window, settings, rng) == 10.0  # overdue 20 s grows by half
    assert window_poll_delay(500.0, window, settings, rng) == 60.0  # capped at POLL_MAX_S


def test_a_backlogged_model_is_polled_at_its_own_interval_inside_the_window_only() -> None:
    settings, rng = _window_settings(), random.Random(1)
    window = RenderWindow(40.0, 50.0)
    busy = settings.poll_interval_backlog_s
    assert busy == 1.0  # the default POLL_INTERVAL_BACKLOG_S
    assert window_poll_delay(0.0, window, settings, rng, interval_s=busy) == 40.0
    assert window_poll_delay(45.0, window, settings, rng, interval_s=busy) == 1.0
    assert window_poll_delay(70.0, window, settings, rng, interval_s=busy) == 10.0  # overdue: as before


def test_learned_window_jitter_is_a_share_of_one_interval() -> None:
    settings, rng = _window_settings(poll_jitter=0.2), random.Random(3)
    window = RenderWindow(40.0, 50.0)
    firsts = [window_poll_delay(0.0, window, settings, rng) for _ in range(200)]
    assert 39.4 <= min(firsts) < max(firsts) <= 40.6
    inside = [window_poll_delay(45.0, window, settings, rng) for _ in range(200)]
    assert 2.4 <= min(inside) < max(inside) <= 3.6


def test_learned_window_honours_the_deadline() -> None:
    settings, rng = _window_settings(), random.Random(1)
    window = RenderWindow(40.0, 50.0)
    assert window_poll_delay(0.0, window, settings, rng, seconds_to_deadline=10) == 10.5
    assert window_poll_delay(45.0, window, settings, rng, seconds_to_deadline=-1) == 3.0  # past it: cadence
