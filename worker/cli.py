"""The commands of the `videoqueue` CLI that need the worker side: `doctor` runs its checks,
`fetch` and `url` read storage, `costs rebuild` reads the manifests in storage.

They plug into the producer's CLI through the `videoqueue.cli` entry points
(pyproject.toml, videoqueue.commands), so the producer never imports the worker. This module
imports only the core at load time: the worker modules (boto3, the provider SDKs) are imported
when a command runs, and where the `worker` extra is not installed the command fails first,
with one line saying so (videoqueue.commands.require_worker_extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from videoqueue import namespace
from videoqueue.commands import fail, needs_worker_extra, require_worker_extra
from videoqueue.job import JobRecord
from videoqueue.jobids import UnknownJobError, lookup
from videoqueue.jobstore import JobStore
from videoqueue.settings import InvalidSettingsError, Settings, get_settings

DEFAULT_URL_EXPIRES_S = 3600

MAX_PORT = 65535


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check Redis, storage, the provider keys and the workers. Exit code 1 if a check failed."""
    require_worker_extra("doctor")
    try:
        from worker.doctor import run_doctor
    except ImportError as exc:
        raise needs_worker_extra("doctor", [exc.name or str(exc)]) from None
    try:
        settings = get_settings()
    except InvalidSettingsError as exc:
        raise fail(str(exc)) from None
    report = run_doctor(settings)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(report.to_text())
    raise typer.Exit(0 if report.ok else 1)


def _stored_video(settings: Settings, raw_id: str) -> tuple[JobRecord, str]:
    """The record of the job `raw_id` names (a whole id or a unique prefix) when it has a
    stored video, and the video's URI; else a one-line failure saying why not."""
    namespace.use(settings.vq_namespace)
    try:
        record = lookup(JobStore.from_settings(settings), raw_id)
    except UnknownJobError as exc:
        raise fail(str(exc)) from None
    if not record.status.is_final:
        raise fail(f"job {record.id} is {record.status.value}: no video yet (videoqueue wait {record.id})")
    if not record.output_uri:
        why = f" ({record.error.code}: {record.error.message})" if record.error else ""
        raise fail(f"job {record.id} ended {record.status.value} with no stored video{why}")
    return record, record.output_uri


def fetch(
    job_id: Annotated[str, typer.Argument(help="Job id, or a unique prefix of at least 4 characters.")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File (or folder) to write; default ./<job id>.mp4."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
) -> None:
    """Download a job's stored video to this machine.

    From a local folder or S3: streamed, size checked, written whole or not at all.
    Prints the file written; exit code 2 if it could not be fetched."""
    require_worker_extra("fetch")
    settings = get_settings()
    record, uri = _stored_video(settings, job_id)
    try:
        from worker.storage.fetch import FetchError, fetch_video
    except ImportError as exc:
        raise needs_worker_extra("fetch", [exc.name or str(exc)]) from None

    dest = output if output is not None else Path(f"{record.id}.mp4")
    if dest.is_dir():
        dest = dest / f"{record.id}.mp4"
    try:
        fetched = fetch_video(uri, dest, settings, manifest_uri=record.manifest_uri, overwrite=force)
    except FetchError as exc:
        raise fail(f"job {record.id}: {exc}") from None
    sys.stderr.write(f"fetched {fetched.size} bytes from {fetched.uri}\n")
    sys.stdout.write(f"{fetched.path}\n")


def url(
    job_id: Annotated[str, typer.Argument(help="Job id, or a unique prefix of at least 4 characters.")],
    expires: Annotated[
        int, typer.Option(help="Seconds the link stays valid (at most 604800, seven days).")
    ] = DEFAULT_URL_EXPIRES_S,
) -> None:
    """Print a presigned HTTPS link to a job's video in S3.

    The link (GET) is valid for --expires seconds. A video in a local folder has no link:
    exit code 2, naming its file:// URI."""
    require_worker_extra("url")
    settings = get_settings()
    record, uri = _stored_video(settings, job_id)
    try:
        from worker.storage.fetch import FetchError, presigned_url
    except ImportError as exc:
        raise needs_worker_extra("url", [exc.name or str(exc)]) from None

    try:
        link = presigned_url(uri, settings, expires)
    except FetchError as exc:
        raise fail(f"job {record.id}: {exc}") from None
    sys.stdout.write(link + "\n")


def costs_rebuild(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the difference; write nothing.")] = False,
    prune: Annotated[
        bool, typer.Option("--prune", help="Also remove entries whose manifests are not in this storage.")
    ] = False,
) -> None:
    """Merge the cost entries of the manifests in storage (STORAGE_URL) into the ledger.

    For when Redis lost some of it: adds missing entries, replaces those that differ, and
    keeps those whose manifests it cannot see unless --prune. Run it with the workers'
    VQ_NAMESPACE and JOB_RETENTION_S: a job whose record expired counts as already in the
    day totals by the retention. Needs the worker extra."""
    require_worker_extra("costs rebuild")
    try:
        from worker.ledger_rebuild import rebuild_ledger
    except ImportError as exc:
        raise needs_worker_extra("costs rebuild", [exc.name or str(exc)]) from None
    result = rebuild_ledger(get_settings(), prune=prune, dry_run=dry_run)
    diff = result.diff
    sys.stdout.write(
        f"read {result.storage}: {result.manifests} manifests ({result.without_entry} of jobs that cost nothing)\n"
    )
    kept = "pruned" if prune else "kept"
    sys.stdout.write(
        f"added {len(diff.added)}, changed {len(diff.changed)}, unchanged {diff.unchanged}, "
        f"missing from storage {len(diff.missing)} ({kept})\n"
    )
    if diff.pending:
        sys.stdout.write(f"pending {len(diff.pending)}: jobs not ended yet, their final move counts them\n")
    for entry in diff.added:
        sys.stdout.write(f"  added     {entry.job_id} ${entry.actual_usd:.4f} {entry.status}\n")
    for old, new in diff.changed:
        sys.stdout.write(
            f"  changed   {new.job_id} ${old.actual_usd:.4f} {old.status} -> ${new.actual_usd:.4f} {new.status}\n"
        )
    for entry in diff.missing:
        sys.stdout.write(f"  missing   {entry.job_id} ${entry.actual_usd:.4f} {entry.status} ({kept})\n")
    totals = f"{diff.before_jobs} jobs / ${diff.before_usd:.2f} -> {diff.after_jobs} jobs / ${diff.after_usd:.2f}"
    if dry_run:
        sys.stdout.write(f"dry run, nothing written: the ledger would go from {totals}\n")
        return
    sys.stdout.write(f"ledger merged from storage: {totals}\n")
    if diff.added or diff.changed or (diff.pruned and diff.missing):
        sys.stdout.write("budgets count from the ledger: `videoqueue budget rebuild` recounts them\n")


def callbacks(
    port: Annotated[int, typer.Option(help="Port to receive callbacks on (1-65535).")] = 9809,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
) -> None:
    """Receive ModelArk's task callbacks and send each job's poll at once.

    Serves POST /callbacks/byteplus/<job id>/<token> (the callback_url creates carry when
    CALLBACK_BASE_URL is set) and GET /healthz. Needs CALLBACK_SECRET, the workers' key of
    the tokens. A callback only hastens the poll: the status call decides."""
    if not 1 <= port <= MAX_PORT:
        raise fail(f"--port {port} is not a port: give 1-{MAX_PORT}")
    require_worker_extra("callbacks")
    try:
        settings = get_settings()
    except InvalidSettingsError as exc:
        raise fail(str(exc)) from None
    if settings.callback_secret is None:
        raise fail("set CALLBACK_SECRET (the key the workers sign callback URLs with) to receive callbacks")
    try:
        from worker.callbacks import serve
    except ImportError as exc:
        raise needs_worker_extra("callbacks", [exc.name or str(exc)]) from None
    namespace.use(settings.vq_namespace)
    sys.stderr.write(f"receiving provider callbacks on http://{host}:{port}/callbacks/\n")
    serve(port, host, settings)
