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

`--callbacks` measures provider callbacks instead (issue 16), into detection-callbacks.json:
ModelArk jobs only (Veo has none), with `videoqueue callbacks` receiving what the simulator
sends and the regular polls stretched to CALLBACK_SAFETY_POLL_S. Per job: detection = the
record's `provider_done_at` (the move to `downloading`) - the simulator's finish; status
calls as above; once with every callback delivered, once with 30 % of them lost.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.harness import BenchStack
from bench.poll_model import MIX, Kind, model_row, percentile
from producer import VideoRequest
from simulator.stack import ManagedProcess, free_port, http_ok, wait_until
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The detection scenario's option (`python -m bench detection --callbacks`)."""
    group = parser.add_argument_group("detection options")
    group.add_argument(
        "--callbacks",
        action="store_true",
        help="detection: measure provider callbacks (into detection-callbacks.json) instead of the poll schedules",
    )


def result_name(options: argparse.Namespace | None) -> str:
    """The results file's name (without .json): the callbacks run has its own."""
    return "detection-callbacks" if options is not None and options.callbacks else "detection"


def run(stack: BenchStack, quick: bool, options: argparse.Namespace | None = None) -> dict[str, Any]:
    """Measure every schedule on the stack, then add the model's rows (or, with
    --callbacks, measure the callbacks)."""
    if options is not None and options.callbacks:
        return run_callbacks(stack, quick)
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


# -- provider callbacks (--callbacks) ----------------------------------------------------------

CALLBACK_LOSS = 0.3
LATE_S = 1.0


def run_callbacks(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """Detection and status calls with callbacks on: every callback delivered, then 30 % lost."""
    # ModelArk's kinds of the mix, at real render times (quick: a tenth, a short stream).
    plan = {
        "scale": 0.1 if quick else 1.0,
        "span_s": 10.0 if quick else 90.0,
        "rate": 2.0 if quick else 1.0,
        # The default safety net; quick: render times a tenth, so a tenth of it too.
        "safety_s": 6.0 if quick else 60.0,
    }
    kinds = [kind for kind in MIX if kind.provider == "byteplus"]
    rows = [
        _measure_callbacks(stack, "callbacks, all delivered", 0.0, kinds, plan),
        _measure_callbacks(stack, f"callbacks, {CALLBACK_LOSS:.0%} lost", CALLBACK_LOSS, kinds, plan),
    ]
    notes = [
        "detection = job provider_done_at (its move to downloading) - simulator finish time; "
        "status calls = what the simulator received per task (exact); the callback's poll is one of them",
        f"mix: {', '.join(f'{k.model} {k.duration}s {k.resolution}' for k in kinds)} (ModelArk only: Veo has no "
        f"callbacks); lognormal render times, sigma {SIGMA}, scale {plan['scale']:g}; Poisson arrivals at "
        f"{plan['rate']:g}/s over {plan['span_s']:g} s",
        f"CALLBACK_SAFETY_POLL_S={plan['safety_s']:g} (+-POLL_JITTER 20 %); the receiver is `videoqueue callbacks`, "
        "one process; 1 worker, prefork 4; the simulator posts each status change at once (callback_delay_s=0)",
        f"lost_*: jobs seen more than {LATE_S:g} s after the finish, i.e. whose final callback was lost and "
        "whose safety poll found the end",
    ]
    if quick:
        notes.append("quick: render times and the safety net scaled by 0.1; a smoke test, not the measurement")
    return {"rows": rows, "notes": notes}


def _receiver(stack: BenchStack, env: dict[str, str], port: int) -> ManagedProcess:
    cli = str(Path(sys.executable).with_name("videoqueue"))
    argv = [cli, "callbacks", "--port", str(port), "--host", "127.0.0.1"]
    proc = ManagedProcess("callbacks", argv, env, stack.logs / "callbacks.log")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz") or not proc.alive(), 30, "callback receiver")
    if not proc.alive():
        raise RuntimeError(f"callback receiver exited:\n{proc.log_text()[-3000:]}")
    return proc


def _measure_callbacks(
    stack: BenchStack, name: str, loss: float, kinds: list[Kind], plan: dict[str, float]
) -> dict[str, Any]:
    stack.flush()
    stack.sim_reset()
    stack.sim_config(
        latency_profile="realistic",
        latency_sigma=SIGMA,
        latency_scale=plan["scale"],
        seed=11,
        callback_delay_s=0,
        callback_loss_rate=loss,
        callback_duplicate_rate=0,
    )
    port = free_port()
    env = stack.env(
        callback_base_url=f"http://127.0.0.1:{port}",
        callback_secret=secrets.token_hex(32),
        callback_safety_poll_s=plan["safety_s"],
    )
    receiver = _receiver(stack, env, port)
    stack.start_workers(1, concurrency=4, env=env)
    try:
        vq = stack.producer(env)
        ids: list[str] = []
        rng = random.Random(5)
        started = time.monotonic()
        at = 0.0
        n = 0
        while at <= plan["span_s"]:
            time.sleep(max(0.0, started + at - time.monotonic()))
            kind = rng.choice(kinds)
            request = VideoRequest(
                prompt=f"callback bench {n}",
                provider=kind.provider,
                model=kind.model,
                duration=kind.duration,
                resolution=kind.resolution,
                audio=False,
            )
            ids.append(vq.submit(request).id)
            n += 1
            at += rng.expovariate(plan["rate"])
        tail = max(kind.median_s for kind in kinds) * plan["scale"] * 3 + 3 * plan["safety_s"] + 30
        stack.wait_final(len(ids), timeout=tail)
        records = [record for record in (vq.get(job_id) for job_id in ids)]
    finally:
        stack.stop_workers()
        receiver.stop(10)
    finished: dict[str, float] = httpx.get(f"{stack.sim_url}/_sim/finished", timeout=30).json()
    calls: dict[str, int] = httpx.get(f"{stack.sim_url}/_sim/polls", timeout=30).json()
    sim = stack.sim_stats()
    done = [r for r in records if r.status is JobStatus.SUCCEEDED and r.provider_done_at]
    delays = sorted(_ts(r.provider_done_at) - finished[str(r.provider_task_id)] for r in done)
    polls = [calls.get(str(r.provider_task_id), 0) for r in records]
    # A callback's poll sees the finish within milliseconds; a job seen more than a second
    # late was found by its safety poll: its final callback was lost.
    lost = [d for d in delays if d > LATE_S]
    row: dict[str, Any] = {
        "case": name,
        "safety_poll_s": plan["safety_s"],
        "jobs": len(records),
        "succeeded": len(done),
        "not_final": sum(1 for r in records if not r.status.is_final),
        "detect_p50_s": round(percentile(delays, 0.50), 3) if delays else None,
        "detect_p95_s": round(percentile(delays, 0.95), 3) if delays else None,
        "detect_max_s": round(max(delays), 2) if delays else None,
        "status_calls_per_job": round(statistics.fmean(polls), 3) if polls else None,
        "stored_p50_s": round(
            percentile(sorted(_ts(r.finished_at) - finished[str(r.provider_task_id)] for r in done), 0.5), 2
        )
        if done
        else None,
        "callbacks_sent": sim.get("callbacks_sent_total", 0),
        "callbacks_lost": sim.get("callbacks_lost_total", 0),
        "lost_final_jobs": len(lost),
        "lost_detect_p50_s": round(percentile(lost, 0.5), 2) if lost else None,
        "lost_detect_max_s": round(max(lost), 2) if lost else None,
    }
    return row
