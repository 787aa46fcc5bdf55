"""Detection latency and poll cost of the poll schedules (issue 7, scenario 3).

For each schedule, workers run a stream of jobs of a mix of models of both providers
against the simulator's realistic latency profile (lognormal per model). Per job:

- detection = the job record's `finished_at` (video stored) - the moment the simulator
  finished the task (`GET /_sim/finished`): what a user waits for beyond the render;
- polls = status calls the simulator received for the task (`GET /_sim/polls`): exact,
  retries and duplicates included. The record's `poll_seq` is reported next to it.

Warm-up: the learned window needs POLL_HISTORY_MIN render times of a kind of job. Only
jobs submitted after that many of their kind were seen done (plus the history cache
time) are measured, for every schedule alike. Arrivals are Poisson, so the history
builds up the way it does in production.

The same schedules, and more alternatives, are also computed as a model (bench/poll_model.py):
rows with "method": "model" next to the "measured" ones.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import datetime
from typing import Any

import httpx

from bench.harness import BenchStack
from bench.poll_model import MIX, Kind, model_row, percentile
from producer import VideoRequest
from videoqueue.job import JobRecord, JobStatus
from videoqueue.settings import Settings

SIGMA = 0.12
WIDE_SIGMA = 0.25

COLD: dict[str, Any] = {"poll_schedule": "backoff"}
FIXED_2S: dict[str, Any] = {
    "poll_schedule": "backoff",
    "poll_initial_s": 2,
    "poll_min_s": 2,
    "poll_max_s": 2,
    "poll_backoff": 1,
}


def _learned(interval: float) -> dict[str, Any]:
    return {"poll_schedule": "learned", "poll_interval_s": interval}


def _measured_cases(quick: bool) -> list[tuple[str, dict[str, object], float]]:
    if quick:
        return [("cold schedule (POLL_SCHEDULE=backoff)", COLD, SIGMA), ("learned 1 s", _learned(1), SIGMA)]
    return [
        ("cold schedule (POLL_SCHEDULE=backoff)", COLD, SIGMA),
        ("fixed 2 s", FIXED_2S, SIGMA),
        ("learned 2 s", _learned(2), SIGMA),
        ("learned 3 s (default)", _learned(3), SIGMA),
        ("learned 5 s", _learned(5), SIGMA),
        ("learned 3 s (default)", _learned(3), WIDE_SIGMA),
    ]


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """Measure every schedule on the stack, then add the model's rows."""
    # Quick: render times a tenth of the real ones, a short stream; a smoke test only.
    plan = {
        "scale": 0.1 if quick else 1.0,
        "span_s": 12.0 if quick else 120.0,
        "rate": 2.0 if quick else 1.0,
        "history_min": 5 if quick else 10,
        "cache_s": 1.0 if quick else 5.0,
    }
    rows: list[dict[str, Any]] = []
    for name, settings, sigma in _measured_cases(quick):
        rows.append(_measure(stack, name, settings, sigma, plan))
    rows.extend(_model_rows(quick))
    notes = [
        "detection = job finished_at (video stored) - simulator finish time; polls = status calls the "
        "simulator received per task (exact; includes the one fetch of a Veo operation the store step makes "
        "for its inline video, about +0.33 on this mix), poll_seq_per_job = poll steps per job from the records",
        f"mix: {', '.join(f'{k.model} {k.duration}s {k.resolution}' for k in MIX)}; "
        f"lognormal render times, sigma {SIGMA} (and {WIDE_SIGMA} where marked); medians are assumptions "
        "(simulator/latency.py)",
        f"measured: Poisson arrivals at {plan['rate']:g}/s over {plan['span_s']:g} s after a warm-up burst of "
        f"{plan['history_min']} jobs per kind; only jobs submitted once their kind's history was usable count",
        "model: Monte Carlo of the same pure schedule functions over the same distributions (no overheads: "
        "a real poll and the store step add to the measured detection)",
    ]
    if quick:
        notes.append(
            "quick: render times scaled by 0.1, POLL_INITIAL_S=1 (the catalog's render times are not scaled) "
            "and 1 s polls; a smoke test, not the measurement"
        )
    return {"rows": rows, "notes": notes}


def _arrivals(plan: dict[str, float], rng: random.Random) -> list[tuple[float, Kind]]:
    """Submit times (seconds from start) and kinds: a warm-up burst, then Poisson arrivals."""
    burst = int(plan["history_min"])
    schedule = [(0.05 * n, kind) for n in range(burst) for kind in MIX]
    t = 0.0
    while True:
        t += rng.expovariate(plan["rate"])
        if t > plan["span_s"]:
            return sorted(schedule, key=lambda item: item[0])
        schedule.append((t, rng.choice(MIX)))


def _measure(
    stack: BenchStack, name: str, settings: dict[str, object], sigma: float, plan: dict[str, float]
) -> dict[str, Any]:
    stack.flush()
    stack.sim_reset()
    stack.sim_config(latency_profile="realistic", latency_sigma=sigma, latency_scale=plan["scale"], seed=11)
    quick_first_poll = {"poll_initial_s": 1} if plan["scale"] < 1 else {}
    env = stack.env(
        **{**quick_first_poll, **settings},
        poll_history_min=int(plan["history_min"]),
        poll_history_cache_s=plan["cache_s"],
    )
    stack.start_workers(1, concurrency=3, env=env)
    try:
        vq = stack.producer(env)
        ids: list[str] = []
        started = time.monotonic()
        for n, (at, kind) in enumerate(_arrivals(plan, random.Random(5))):
            time.sleep(max(0.0, started + at - time.monotonic()))
            request = VideoRequest(
                prompt=f"detection bench {n}",
                provider=kind.provider,
                model=kind.model,
                duration=kind.duration,
                resolution=kind.resolution,
                audio=False,
            )
            ids.append(vq.submit(request).id)
        tail = max(kind.median_s for kind in MIX) * plan["scale"] * 3 + 60
        stack.wait_final(len(ids), timeout=tail)
        records = [record for record in (vq.get(job_id) for job_id in ids)]
    finally:
        stack.stop_workers()
    finished: dict[str, float] = httpx.get(f"{stack.sim_url}/_sim/finished", timeout=30).json()
    calls: dict[str, int] = httpx.get(f"{stack.sim_url}/_sim/polls", timeout=30).json()
    measured = _after_warm_up(records, int(plan["history_min"]), plan["cache_s"])
    delays = [_ts(r.finished_at) - finished[str(r.provider_task_id)] for r in measured]
    polls = [calls.get(str(r.provider_task_id), 0) for r in measured]
    failed = sum(1 for r in records if r.status is not JobStatus.SUCCEEDED)
    if not delays:
        return {"method": "measured", "schedule": name, "sigma": sigma, "jobs": 0, "failed": failed}
    return {
        "method": "measured",
        "schedule": name,
        "sigma": sigma,
        "jobs": len(delays),
        "detect_p50_s": round(percentile(delays, 0.50), 2),
        "detect_p95_s": round(percentile(delays, 0.95), 2),
        "detect_max_s": round(max(delays), 2),
        "polls_per_job": round(statistics.fmean(polls), 2),
        "poll_seq_per_job": round(statistics.fmean(r.poll_seq for r in measured), 2),
        "failed": failed,
    }


def _ts(moment: datetime | None) -> float:
    assert moment is not None
    return moment.timestamp()


def _after_warm_up(records: list[JobRecord], history_min: int, cache_s: float) -> list[JobRecord]:
    """Succeeded jobs submitted after `history_min` jobs of their kind were seen done (and
    a cached short history would have expired)."""
    done = [r for r in records if r.status is JobStatus.SUCCEEDED and r.provider_done_at and r.submitted_at]
    ready: dict[tuple[str, int], float] = {}
    for key in {(r.model, r.request.duration) for r in done}:
        seen = sorted(_ts(r.provider_done_at) for r in done if (r.model, r.request.duration) == key)
        ready[key] = seen[history_min - 1] + cache_s if len(seen) >= history_min else float("inf")
    return [r for r in done if _ts(r.submitted_at) > ready[(r.model, r.request.duration)]]


def _model_rows(quick: bool) -> list[dict[str, Any]]:
    jobs = 300 if quick else 3000
    base: dict[str, Any] = {"_env_file": None}
    rows = []
    for sigma in (SIGMA,) if quick else (SIGMA, WIDE_SIGMA):
        rows.append(
            model_row("cold schedule (POLL_SCHEDULE=backoff)", Settings(**base, **COLD), sigma=sigma, jobs=jobs)
        )
        rows.append(model_row("fixed 2 s", Settings(**base, **FIXED_2S), sigma=sigma, jobs=jobs))
        windows = ((0.10, 0.97),) if quick else ((0.10, 0.97), (0.03, 0.97), (0.05, 0.95), (0.01, 0.99))
        for low, high in windows:
            for interval in (3,) if quick else (1, 2, 3, 4, 5):
                settings = Settings(**base, **_learned(interval), poll_window_low_q=low, poll_window_high_q=high)
                label = f"learned {interval} s, q{low:g}-q{high:g}"
                rows.append(model_row(label, settings, sigma=sigma, jobs=jobs, learned=True))
    return rows
