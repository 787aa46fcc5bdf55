"""Scenario 2, overhead: what videoqueue itself costs per job when the provider answers at
once, against the same machine's Celery no-op rate measured in the same run.

Target (issue 7): jobs/s at least half of (no-op tasks/s / tasks per job).
"""

from __future__ import annotations

from typing import Any

from bench.drain import Fleet, drain_jobs, drain_noops
from bench.harness import BenchStack

FLEET = Fleet(nodes=1, concurrency=2, pool="prefork")


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """Drain 5,000 jobs (quick: 100), then as many no-op tasks as the jobs needed."""
    jobs = 100 if quick else 5000
    ours = drain_jobs(stack, jobs, FLEET)
    noop_tasks = int(jobs * ours["tasks_per_job"])
    noop = drain_noops(stack, noop_tasks, FLEET)
    engine_limit = noop["tasks_per_s"] / ours["tasks_per_job"]
    ratio = ours["jobs_per_s"] / engine_limit
    rows = [
        {
            "case": "videoqueue jobs (submit, poll, store)",
            "fleet": ours["fleet"],
            "count": jobs,
            "per_s": ours["jobs_per_s"],
            "tasks_per_job": ours["tasks_per_job"],
            "worker_cpu_ms": ours["worker_cpu_ms_per_job"],
            "broker_cmds": ours["broker_cmds_per_job"],
            "store_cmds": ours["store_cmds_per_job"],
            "redis_cpu_ms": ours["redis_cpu_ms_per_job"],
        },
        {
            "case": "celery no-op tasks",
            "fleet": noop["fleet"],
            "count": noop_tasks,
            "per_s": noop["tasks_per_s"],
            "worker_cpu_ms": noop["worker_cpu_ms_per_task"],
            "broker_cmds": noop["broker_cmds_per_task"],
        },
        {
            "case": "engine limit for jobs (no-op rate / tasks per job)",
            "per_s": round(engine_limit, 1),
        },
        {"case": "ratio: videoqueue / engine limit (target >= 0.5)", "per_s": round(ratio, 2)},
    ]
    return {
        "rows": rows,
        "jobs": ours,
        "noop": noop,
        "ratio_to_engine_limit": round(ratio, 3),
        "notes": [
            "per-job columns: worker CPU ms, broker and job-store Redis commands, Redis CPU ms",
            f"job store memory per queued job {ours['store_bytes_per_queued_job']} B, per finished job "
            f"{ours['store_bytes_per_finished_job']} B; "
            f"broker memory per queued job {ours['broker_bytes_per_queued_job']} B",
        ],
    }
