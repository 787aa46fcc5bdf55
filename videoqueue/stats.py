"""Fleet-wide job statistics kept in Redis, updated in the same transactions that change
job records, so they are exact for any number of workers and cheap to read: jobs by
status, provider and model; money by provider and model; how long renders and uploads
took, as histogram buckets. `videoqueue metrics` exports them to Prometheus."""

from __future__ import annotations

from typing import Any

from videoqueue import keys
from videoqueue.budget import to_micro
from videoqueue.job import JobRecord

# Upper bounds (seconds) of the duration histograms.
RENDER_BUCKETS = (10, 30, 60, 120, 300, 600, 1200, 3600, 7200)
STORE_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 300)

# Field prefixes of the histograms' hashes: a bucket's own count (written now), and the
# cumulative count up to a bound (written by versions before per-bucket fields, still read).
BUCKET = "bucket="
CUMULATIVE = "le="


def jobs_field(status: str, provider: str, model: str) -> str:
    """Field of keys.STATS_JOBS counting jobs in one status of one model."""
    return f"{status}|{provider}|{model}"


def on_create(pipe: Any, record: JobRecord) -> None:
    """Count a new job."""
    pipe.hincrby(keys.STATS_JOBS, jobs_field(record.status.value, record.provider, record.model), 1)


def on_status_change(pipe: Any, before: JobRecord, after: JobRecord) -> None:
    """Move a job from one status count to another."""
    pipe.hincrby(keys.STATS_JOBS, jobs_field(before.status.value, before.provider, before.model), -1)
    pipe.hincrby(keys.STATS_JOBS, jobs_field(after.status.value, after.provider, after.model), 1)


def on_end(pipe: Any, after: JobRecord) -> None:
    """Record the money and durations of a job that just ended and settled its cost (a
    final-move hook: videoqueue.final_hooks)."""
    charged = after.charged_usd
    if charged is not None:
        add_cost(pipe, after.provider, after.model, to_micro(after.cost_estimate_usd), to_micro(charged))
    if after.submitted_at and after.provider_done_at:
        _observe(
            pipe,
            keys.STATS_RENDER_SECONDS,
            RENDER_BUCKETS,
            after,
            (after.provider_done_at - after.submitted_at).total_seconds(),
        )
    if after.provider_done_at and after.finished_at and after.output_uri:
        _observe(
            pipe,
            keys.STATS_STORE_SECONDS,
            STORE_BUCKETS,
            after,
            (after.finished_at - after.provider_done_at).total_seconds(),
        )


def add_cost(pipe: Any, provider: str, model: str, estimate_micro: int, actual_micro: int, *, jobs: int = 1) -> None:
    """Add one settled job's money to the per-model totals (negative amounts and jobs=-1
    take it out again)."""
    pipe.hincrby(keys.STATS_COST, f"actual|{provider}|{model}", actual_micro)
    pipe.hincrby(keys.STATS_COST, f"estimate|{provider}|{model}", estimate_micro)
    pipe.hincrby(keys.STATS_COST, f"jobs|{provider}|{model}", jobs)


def _observe(pipe: Any, key: str, buckets: tuple[float, ...], job: JobRecord, seconds: float) -> None:
    """Count one duration in its own bucket only, `bucket=<bound>|provider|model` (the
    first bound it does not exceed, else +Inf), and add it to `sum|provider|model`: two
    writes, where cumulative buckets took one per bound passed. The exporter cumulates
    (videoqueue.metrics), adding the cumulative `le=<bound>|...` fields that versions before
    this one wrote."""
    seconds = max(seconds, 0.0)
    bound = next((b for b in buckets if seconds <= b), "+Inf")
    label = f"{job.provider}|{job.model}"
    pipe.hincrby(key, f"{BUCKET}{bound}|{label}", 1)
    pipe.hincrbyfloat(key, f"sum|{label}", seconds)


def observations(client: Any, key: str, buckets: tuple[float, ...], provider: str, model: str) -> tuple[int, float]:
    """How many durations of one model a histogram (`key`: keys.STATS_RENDER_SECONDS or
    STATS_STORE_SECONDS, with its `buckets`) counted, and their sum in seconds: one HMGET of
    its per-bucket fields plus the cumulative +Inf count of earlier versions."""
    label = f"{provider}|{model}"
    names = [f"{BUCKET}{bound}|{label}" for bound in (*buckets, "+Inf")]
    values = client.hmget(key, [f"sum|{label}", f"{CUMULATIVE}+Inf|{label}", *names])
    total, *counts = values
    return sum(int(c) for c in counts if c), float(total or 0.0)
