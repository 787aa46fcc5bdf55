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
from videoqueue.archive import ArchivedJob
from videoqueue.commands import fail as _fail
from videoqueue.errors import StorageError
from videoqueue.inputs import InputStorageUnavailableError
from videoqueue.job import JobRecord
from videoqueue.jobids import AMBIGUOUS_SHOWN, MIN_PREFIX_CHARS, AmbiguousJobIdError, UnknownJobError

archive_app = typer.Typer(help="Jobs whose records expired from Redis, read back from their manifests in storage.")


def _retention(vq: VideoQueue) -> str:
    seconds = vq.settings.job_retention_s
    days = seconds / 86400
    shown = f"{days:g} days" if seconds >= 86400 else f"{seconds} s"
    return f"JOB_RETENTION_S={seconds} ({shown})"


WHOLE_ID_CHARS = 36
"""A job id as videoqueue makes it (a UUID); anything shorter may be a prefix."""


def is_prefix(ref: str) -> bool:
    """Whether `ref` may be an id prefix (as `jobs` shows ids, 8 characters)."""
    return MIN_PREFIX_CHARS <= len(ref) < WHOLE_ID_CHARS


def lookup(vq: VideoQueue, ref: str) -> tuple[ArchivedJob | None, str | None]:
    """(the archived job `ref` names, or None; why none was found when that is worth
    saying). `ref` is a whole id or a unique prefix of one; a prefix lists the storage
    folder (`VideoQueue.archived_ids`). A storage this install cannot read archives nothing."""
    try:
        found = vq.archived(ref)
    except InputStorageUnavailableError:
        return None, None  # a storage this shell cannot read: the id stays unknown, as before
    except StorageError as exc:
        return None, f"{ref}: storage cannot be read here ({exc})"
    if found is not None or not is_prefix(ref):
        return found, None
    try:
        ids = vq.archived_ids(ref)
    except StorageError as exc:
        return None, f"{ref}: storage cannot be searched for an id prefix here ({exc}): give the whole id"
    if len(ids) > 1:
        shown = ", ".join(ids[:AMBIGUOUS_SHOWN]) + (" and more" if len(ids) > AMBIGUOUS_SHOWN else "")
        return None, f"{ref}: prefix of several archived jobs ({shown}): give more characters"
    return (vq.archived(ids[0]) if ids else None), None


def expired_lines(vq: VideoQueue, job_ids: list[str]) -> tuple[list[str], list[str], list[str]]:
    """For ids (or prefixes) no current record has: (lines for those archived, the refs
    still unknown, notes on why some were not found). An archived job's line says its
    record expired after the retention and names its manifest."""
    lines: list[str] = []
    unknown: list[str] = []
    notes: list[str] = []
    for ref in job_ids:
        found, note = lookup(vq, ref)
        if note:
            notes.append(note)
        if found is None:
            unknown.append(ref)
            continue
        ended = found.record.get("status", "?")
        lines.append(
            f"{found.job_id}: {ended}; its record expired after the retention ({_retention(vq)}); "
            f"archived in {found.uri} (videoqueue archive get {found.job_id})"
        )
    return lines, unknown, notes


def get(
    job_id: Annotated[str, typer.Argument(help="Job id, or a unique prefix of at least 4 characters.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the archived record as JSON.")] = False,
) -> None:
    """Print the record of a job as its manifest in storage keeps it (the job's end, its
    cost, its video). Exit code 1 when storage has no manifest of it."""
    vq = VideoQueue()
    ref = job_id.strip().lower()
    found, note = lookup(vq, ref)
    if found is None:
        current = vq.store.get(ref) or _by_prefix(vq, ref)
        if current is not None:
            hint = f" (its record is still in Redis: videoqueue status {current.id})"
        else:
            hint = f" ({note})" if note else ""
        raise _fail(f"no manifest of job {job_id} in {vq.settings.storage_url}{hint}", code=1)
    if as_json:
        sys.stdout.write(json.dumps({"manifest_uri": found.uri, **found.record}, indent=2, default=str) + "\n")
        return
    record: dict[str, Any] = found.record
    cost = found.manifest.get("cost") or {}
    video = found.manifest.get("video") or {}
    rows = [
        ("job", found.job_id),
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
    if not is_prefix(ref):
        return None
    try:
        return vq.get(vq.resolve_id(ref))
    except (UnknownJobError, AmbiguousJobIdError):
        return None


def register(app: typer.Typer) -> None:
    """Add `archive get` to `app`."""
    archive_app.command(name="get")(get)
    app.add_typer(archive_app, name="archive")
