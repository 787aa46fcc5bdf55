"""`videoqueue archive get`: a job whose record expired from Redis (JOB_RETENTION_S after it
ended), read back from its manifest in storage (videoqueue.archive); and what `videoqueue
status` says of such a job (`expired_lines`).

`register(app)` adds the `archive` group to a Typer app.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from producer.api import VideoQueue
from videoqueue.commands import fail as _fail
from videoqueue.errors import StorageError
from videoqueue.inputs import InputStorageUnavailableError
from videoqueue.job import JobRecord
from videoqueue.jobids import AmbiguousJobIdError, UnknownJobError

archive_app = typer.Typer(help="Jobs whose records expired from Redis, read back from their manifests in storage.")


def _retention(vq: VideoQueue) -> str:
    seconds = vq.settings.job_retention_s
    days = seconds / 86400
    shown = f"{days:g} days" if seconds >= 86400 else f"{seconds} s"
    return f"JOB_RETENTION_S={seconds} ({shown})"


WHOLE_ID_CHARS = 36
"""A job id as videoqueue makes it (a UUID); anything shorter may be a prefix."""

PREFIX_NOTE = (
    "an expired job is found by its whole id only: its record is gone from Redis, and its manifest "
    "in storage is named <whole id>.json"
)


def prefixes(refs: list[str]) -> list[str]:
    """Those of `refs` that may be id prefixes, which cannot name an expired job."""
    return [ref for ref in refs if len(ref.strip()) < WHOLE_ID_CHARS]


def expired_lines(vq: VideoQueue, job_ids: list[str]) -> tuple[list[str], list[str]]:
    """For ids no current record has: (lines for those archived, the ids still unknown). An
    archived job's line says its record expired after the retention and names its manifest.
    A storage this install cannot read (s3:// without the worker extra) archives nothing."""
    lines: list[str] = []
    unknown: list[str] = []
    for job_id in job_ids:
        try:
            found = vq.archived(job_id)
        except (InputStorageUnavailableError, StorageError):
            found = None  # a storage this shell cannot read: the id stays unknown, as before
        if found is None:
            unknown.append(job_id)
            continue
        ended = found.record.get("status", "?")
        lines.append(
            f"{job_id}: {ended}; its record expired after the retention ({_retention(vq)}); "
            f"archived in {found.uri} (videoqueue archive get {job_id})"
        )
    return lines, unknown


def get(
    job_id: Annotated[str, typer.Argument(help="A whole job id (an expired job has no prefix to match).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the archived record as JSON.")] = False,
) -> None:
    """Print the record of a job as its manifest in storage keeps it (the job's end, its
    cost, its video). Exit code 1 when storage has no manifest of it."""
    vq = VideoQueue()
    found = vq.archived(job_id.strip().lower())
    if found is None:
        current = vq.store.get(job_id) or _by_prefix(vq, job_id)
        if current is not None:
            hint = f" (its record is still in Redis: videoqueue status {current.id})"
        else:
            hint = f" ({PREFIX_NOTE})" if prefixes([job_id]) else ""
        raise _fail(f"no manifest of job {job_id} in {vq.settings.storage_url}{hint}", code=1)
    if as_json:
        sys.stdout.write(json.dumps({"manifest_uri": found.uri, **found.record}, indent=2, default=str) + "\n")
        return
    record: dict[str, Any] = found.record
    cost = found.manifest.get("cost") or {}
    video = found.manifest.get("video") or {}
    rows = [
        ("job", job_id),
        ("status", record.get("status")),
        ("provider", f"{record.get('provider')} / {record.get('model')}"),
        ("created", record.get("created_at")),
        ("finished", record.get("finished_at")),
        ("actual", cost.get("actual_usd")),
        ("estimate", cost.get("estimate_usd")),
        ("video", video.get("uri")),
        ("error", (record.get("error") or {}).get("code") if isinstance(record.get("error"), dict) else None),
        ("manifest", found.uri),
    ]
    for name, value in rows:
        if value is not None:
            sys.stdout.write(f"{name:9} {value}\n")


def _by_prefix(vq: VideoQueue, ref: str) -> JobRecord | None:
    if not prefixes([ref]):
        return None
    try:
        return vq.get(vq.resolve_id(ref))
    except (UnknownJobError, AmbiguousJobIdError):
        return None


def register(app: typer.Typer) -> None:
    """Add `archive get` to `app`."""
    archive_app.command(name="get")(get)
    app.add_typer(archive_app, name="archive")
