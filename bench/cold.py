"""A cold fleet (issue 11): how fast jobs that end early or late are seen when no render
times of their kind are known yet, on the default poll settings.

Jobs of four kinds, mixed and submitted together: renders of 3 s, 30 s and 120 s and
failures after 1 s (content moderation), by simulator markers, on both providers. The
workers run every poll setting at its default, and JOB_DEADLINE_S is shorter than the
longest render, so those tasks are still rendering at the deadline (they cannot be
cancelled there, are billed, and must be followed to their end, not expired).

Per job: detection = when the worker saw the ending (the move to `downloading` for a
success, the final move for a failure) - when the simulator ended the task
(`GET /_sim/finished`); status calls = what the simulator received (`GET /_sim/polls`).
Targets: p95 detection <= 25% of the render time + 3 s; <= 8 status calls per job on
average; no job that ended at the provider before its deadline ends `expired`.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

import httpx

from bench.harness import BenchStack
from bench.poll_model import percentile
from producer import VideoRequest
from videoqueue.job import JobRecord, JobStatus

# (label, render seconds, prompt markers)
KINDS: tuple[tuple[str, float, str], ...] = (
    ("fails at 1 s", 1.0, "[sim:fail] [sim:latency=1]"),
    ("renders 3 s", 3.0, "[sim:latency=3]"),
    ("renders 30 s", 30.0, "[sim:latency=30]"),
    ("renders 120 s", 120.0, "[sim:latency=120]"),
)
PROVIDERS: tuple[tuple[str, dict[str, Any]], ...] = (("byteplus", {"duration": 5}), ("veo", {"duration": 4}))


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """Submit every kind on both providers at once and measure how each is seen."""
    per_kind = 2 if quick else 10
    kinds = KINDS[:3] if quick else KINDS
    deadline_s = 20.0 if quick else 90.0
    stack.flush()
    stack.sim_reset()
    stack.sim_config(concurrency_per_model=1000)
    env = stack.env(job_deadline_s=deadline_s)
    stack.start_workers(1, concurrency=8, pool="threads", env=env)
    try:
        vq = stack.producer(env)
        plan: list[tuple[str, float, str]] = []
        requests = []
        for label, render_s, markers in kinds:
            for provider, extra in PROVIDERS:
                for n in range(per_kind):
                    plan.append((label, render_s, provider))
                    requests.append(VideoRequest(prompt=f"cold {label} {n} {markers}", provider=provider, **extra))
        ids = [job.id for job in vq.submit_many(requests)]
        stack.wait_final(len(ids), timeout=max(r for _, r, _ in kinds) + 120)
        records = [vq.get(job_id) for job_id in ids]
    finally:
        stack.stop_workers()
    finished: dict[str, float] = httpx.get(f"{stack.sim_url}/_sim/finished", timeout=30).json()
    calls: dict[str, int] = httpx.get(f"{stack.sim_url}/_sim/polls", timeout=30).json()

    rows: list[dict[str, Any]] = []
    all_calls: list[int] = []
    for label, render_s, _ in kinds:
        mine = [(r, p) for r, (lab, _, p) in zip(records, plan, strict=True) if lab == label]
        delays = [_seen(r) - finished[str(r.provider_task_id)] for r, _ in mine]
        status_calls = [calls.get(str(r.provider_task_id), 0) for r, _ in mine]
        all_calls += status_calls
        ended_before_deadline = [r for r, _ in mine if finished[str(r.provider_task_id)] < r.deadline_at.timestamp()]
        target = 0.25 * render_s + 3
        p95 = percentile(delays, 0.95)
        rows.append(
            {
                "kind": label,
                "jobs": len(mine),
                "statuses": ", ".join(sorted({r.status.value for r, _ in mine})),
                "detect_p50_s": round(percentile(delays, 0.50), 2),
                "detect_p95_s": round(p95, 2),
                "target_p95_s": round(target, 2),
                "met": p95 <= target,
                "status_calls_per_job": round(statistics.fmean(status_calls), 2),
                "past_deadline": sum(1 for r, _ in mine if r.past_deadline_at is not None),
                "expired_though_ended_before_deadline": sum(
                    1 for r in ended_before_deadline if r.status is JobStatus.EXPIRED
                ),
            }
        )
    rows.append(
        {
            "kind": "all",
            "jobs": len(records),
            "statuses": ", ".join(sorted({r.status.value for r in records})),
            "status_calls_per_job": round(statistics.fmean(all_calls), 2),
            "met": statistics.fmean(all_calls) <= 8,
            "expired_though_ended_before_deadline": sum(row["expired_though_ended_before_deadline"] for row in rows),
        }
    )
    notes = [
        "cold fleet: empty Redis (no render history), every POLL_* setting at its default; "
        f"JOB_DEADLINE_S={deadline_s:g}; {per_kind} jobs per kind and provider (Seedance 1.5 Pro 5 s, Veo 3.1 4 s), "
        "submitted together; one worker, 8 threads",
        "detection = worker saw the ending (downloading / failed) - simulator ended the task; status calls as "
        "the simulator counted them (a Veo success adds one operation fetch for its inline video)",
        "target: p95 <= 25% of render time + 3 s, <= 8 status calls per job on average",
    ]
    if quick:
        notes.append("quick: 2 jobs per kind, no 120 s renders; a smoke test, not the measurement")
    return {"rows": rows, "notes": notes}


def _seen(record: JobRecord) -> float:
    moment: datetime | None = record.provider_done_at if record.status is JobStatus.SUCCEEDED else record.finished_at
    assert moment is not None, record.id
    return moment.timestamp()
