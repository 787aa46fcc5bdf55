"""Scenario 5, scale-out: the overhead run (provider latency 0, jobs queued in full, then
drained) with 1, 2 and 4 worker nodes on this host, each a prefork pool of one process,
to show where the host or Redis becomes the limit. Host CPU and Redis CPU are reported
next to the rate: when the host's cores are busy, more workers on it cannot help, more
hosts can."""

from __future__ import annotations

from typing import Any

import psutil

from bench.drain import Fleet, drain_jobs
from bench.harness import BenchStack


def run(stack: BenchStack, quick: bool) -> dict[str, Any]:
    """One drain per fleet size."""
    jobs = 60 if quick else 3000
    rows = []
    for nodes in (1, 2, 4):
        psutil.cpu_percent()  # start the host CPU window
        result = drain_jobs(stack, jobs, Fleet(nodes=nodes, concurrency=1))
        host = psutil.cpu_percent()
        redis_cpu_share = result["redis_cpu_ms_per_job"] * result["jobs_per_s"] / 1000
        rows.append(
            {
                "fleet": result["fleet"],
                "jobs": jobs,
                "jobs_per_s": result["jobs_per_s"],
                "worker_cpu_ms_per_job": result["worker_cpu_ms_per_job"],
                "host_cpu_pct": host,
                "redis_cores_busy": round(redis_cpu_share, 2),
                "store_cmds_per_s": round(result["store_cmds_per_job"] * result["jobs_per_s"]),
                "broker_cmds_per_s": round(result["broker_cmds_per_job"] * result["jobs_per_s"]),
            }
        )
    base = rows[0]["jobs_per_s"]
    for row in rows:
        row["speedup"] = round(row["jobs_per_s"] / base, 2)
    return {
        "rows": rows,
        "notes": [
            "host_cpu_pct: whole machine (2 cores = 100%) over the drain, the bench's own processes included",
            "redis_cores_busy: CPU of both Redis servers per second of drain",
        ],
    }
