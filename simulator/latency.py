"""Render times of simulated tasks: the fixed profile (``latency`` + uniform jitter) or a
realistic one, lognormal per model and scaled by the clip's duration and resolution.

The medians below are assumptions, not measurements: round figures of the order users
report for a 5 s 720p clip. The spread (``latency_sigma``, 0.12 by default) is an
assumption too; the detection benchmark (bench/detection.py) also reports how the poll
schedule fares with a wider one.
"""

from __future__ import annotations

import math
import random

from simulator.config import SimConfig

# Median seconds to render a 5 s 720p clip, per model id.
MEDIAN_5S_720P: dict[str, float] = {
    "seedance-1-5-pro-251215": 45.0,
    "seedance-1-0-pro-250528": 40.0,
    "seedance-1-0-pro-fast-251015": 20.0,
    "veo-3.1-generate-001": 70.0,
    "veo-3.1-generate-preview": 70.0,
    "veo-3.1-fast-generate-001": 40.0,
    "veo-3.1-fast-generate-preview": 40.0,
    "veo-3.0-generate-001": 70.0,
    "veo-3.0-fast-generate-001": 40.0,
}
DEFAULT_MEDIAN_S = 45.0
# Work per frame relative to 720p (roughly the pixel count, a bit under it at the top).
RESOLUTION_FACTOR: dict[str, float] = {"480p": 0.6, "720p": 1.0, "1080p": 1.8, "4k": 4.0}
# Part of a render that does not grow with the clip's length (queueing, model load).
FIXED_SHARE = 0.3
REFERENCE_DURATION_S = 5.0


def median_render_s(model: str, duration: float, resolution: str) -> float:
    """The median render time of one clip under the realistic profile."""
    base = MEDIAN_5S_720P.get(model, DEFAULT_MEDIAN_S)
    length = FIXED_SHARE + (1.0 - FIXED_SHARE) * duration / REFERENCE_DURATION_S
    return base * length * RESOLUTION_FACTOR.get(resolution, 1.0)


def draw_render_s(config: SimConfig, model: str, duration: float, resolution: str, rng: random.Random) -> float:
    """Seconds one task runs, drawn from the configured latency profile."""
    if config.latency_profile == "fixed":
        return config.latency + rng.uniform(0, config.latency_jitter)
    median = median_render_s(model, duration, resolution)
    return config.latency_scale * median * math.exp(rng.gauss(0.0, config.latency_sigma))
