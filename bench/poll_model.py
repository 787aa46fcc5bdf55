"""The poll schedules as a model: since they are pure functions (worker/schedule.py), their
expected polls per job and detection delay follow from the render-time distribution alone.
Monte Carlo over the simulator's realistic profile, no processes, no clock.

Detection here is (poll that sees the job done) - (moment it finished); the measured runs
add what a real poll and the store step cost on top.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any

from simulator.latency import median_render_s
from videoqueue.settings import Settings
from worker.schedule import poll_delay, render_window, window_poll_delay


@dataclass(frozen=True)
class Kind:
    """One kind of job in the mix: a model, its clip and the catalog's expected render time."""

    provider: str
    model: str
    duration: int
    resolution: str
    expected_render_s: float

    @property
    def median_s(self) -> float:
        """Median render time under the simulator's realistic profile."""
        return median_render_s(self.model, self.duration, self.resolution)


# Both providers, fast and slow models; expected_render_s as in videoqueue/models.toml.
MIX: tuple[Kind, ...] = (
    Kind("byteplus", "seedance-1-5-pro-251215", 5, "720p", 60),
    Kind("byteplus", "seedance-1-0-pro-fast-251015", 5, "720p", 30),
    Kind("veo", "veo-3.1-fast-generate-001", 4, "720p", 45),
)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, interpolating linearly."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def simulate_job(
    render_s: float, kind: Kind, history: list[float] | None, settings: Settings, rng: random.Random
) -> tuple[int, float]:
    """Polls until a job rendering `render_s` seconds is seen done, and how late it is seen."""
    window = render_window(history, settings) if history is not None else None
    elapsed, polls = 0.0, 0
    while True:
        number = polls + 1
        if window is not None:
            delay = window_poll_delay(elapsed, window, settings, rng)
        else:
            delay = poll_delay(elapsed, settings, rng, first=number == 1)
        # Celery sends countdowns under a second as one second (worker/tasks.py, `_when`).
        elapsed += max(1.0, delay)
        polls = number
        if elapsed >= render_s:
            return polls, elapsed - render_s


def model_row(
    name: str, settings: Settings, *, sigma: float, jobs: int, seed: int = 7, learned: bool = False
) -> dict[str, Any]:
    """Expected detection p50/p95 and polls per job of one schedule over the mix."""
    rng = random.Random(seed)
    polls: list[int] = []
    delays: list[float] = []
    per_kind = max(1, jobs // len(MIX))
    for kind in MIX:

        def draw(kind: Kind = kind) -> float:
            return kind.median_s * math.exp(rng.gauss(0.0, sigma))

        history = [draw() for _ in range(settings.poll_history_size)] if learned else None
        for n in range(per_kind):
            if history is not None and n % 50 == 0:
                # The history rolls on as jobs finish: draw a fresh one now and then.
                history = [draw() for _ in range(settings.poll_history_size)]
            count, late = simulate_job(draw(), kind, history, settings, rng)
            polls.append(count)
            delays.append(late)
    return {
        "method": "model",
        "schedule": name,
        "sigma": sigma,
        "jobs": len(delays),
        "detect_p50_s": round(percentile(delays, 0.50), 2),
        "detect_p95_s": round(percentile(delays, 0.95), 2),
        "polls_per_job": round(statistics.fmean(polls), 2),
    }
