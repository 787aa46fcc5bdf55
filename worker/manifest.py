"""The JSON manifest stored next to each video: the job record as it ended, with its
cost, so what a job produced and cost survives the loss of Redis."""

from __future__ import annotations

from typing import Any

from videoqueue import namespace
from videoqueue.job import JobRecord
from videoqueue.ledger import LedgerEntry

MANIFEST_VERSION = 1


def build_manifest(job: JobRecord, video_bytes: int | None) -> dict[str, Any]:
    """The manifest of a finished job (`video_bytes` None when no video was stored). Its
    `ledger` entry is exactly what the ledger in Redis holds for the job; `namespace` is the
    deployment that ran it (several may share one storage), so a ledger rebuild takes only
    its own."""
    record = job.public_dict()
    record.pop("video_url", None)  # a short-lived provider URL, useless once stored
    record.pop("history", None)
    entry = LedgerEntry.for_job(job)
    video = None
    if video_bytes is not None:
        video = {"uri": job.output_uri, "bytes": video_bytes, "content_type": "video/mp4"}
    return {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job.id,
        "namespace": namespace.current(),
        "video": video,
        "cost": {
            "estimate_usd": float(job.cost_estimate_usd),
            "actual_usd": float(job.cost_usd) if job.cost_usd is not None else None,
            "billed_units": job.billed_units,
            "unit": job.billed_unit,
        },
        "ledger": entry.model_dump(mode="json") if entry else None,
        "job": record,
    }
