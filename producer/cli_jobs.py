"""Commands of the `videoqueue` CLI for jobs that ended: `retry` resubmits them, `fetch`
copies a stored video onto this machine, `url` prints a presigned link to one in S3.

`register(app)` adds them to a Typer app. Every job id goes through `_resolve`. `fetch`
and `url` read storage and need the worker's dependencies (boto3); they import them only
when they run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from producer.api import (
    AmbiguousJobIdError,
    EnqueueError,
    PreparedJob,
    RetryRefusedError,
    UnknownJobError,
    VideoQueue,
)
from producer.cli_errors import fail as _fail
from videoqueue.budget import BudgetExceededError
from videoqueue.job import JobRecord

DEFAULT_URL_EXPIRES_S = 3600


def _resolve(vq: VideoQueue, raw_id: str) -> JobRecord:
    """The record of the job `raw_id` names (a whole id or a unique prefix); UnknownJobError
    if none, AmbiguousJobIdError if the prefix is too short or shared."""
    return vq.get(vq.resolve_id(raw_id))


def note_existing(prepared: list[PreparedJob], records: list[JobRecord]) -> None:
    """On stderr, for each submitted request its client job id returned an existing job for
    (`VideoQueue.enqueue` gives back that job instead of the prepared one)."""
    for job, record in zip(prepared, records, strict=True):
        if job.record.id != record.id:
            client_id = record.request.client_job_id
            sys.stderr.write(f"note: {client_id} was already submitted as job {record.id} ({record.status.value})\n")


def retry(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids, or unique prefixes of at least 4 characters.")],
    again: Annotated[bool, typer.Option("--again", help="Retry a job even if it was retried before.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new jobs' records as a JSON list.")] = False,
) -> None:
    """Resubmit failed, expired or cancelled jobs as new jobs.

    Each new job has the same request and is linked both ways (retry_of, retried_by);
    prints the new ids. A job already retried is refused unless --again. Exit code 2 if
    any was refused."""
    vq = VideoQueue()
    created: list[JobRecord] = []
    refused = 0
    for raw_id in job_ids:
        label = raw_id
        try:
            old = _resolve(vq, raw_id)
            label = old.id
            new = vq.retry(old.id, again=again)
        except (UnknownJobError, AmbiguousJobIdError, RetryRefusedError, BudgetExceededError) as exc:
            # Each refusal names its job: a budget's message is the same for every job it refuses.
            message = str(exc) if str(exc).startswith(label) else f"{label}: {exc}"
            sys.stderr.write(f"refused {message}\n")
            refused += 1
            continue
        except EnqueueError as exc:
            raise _fail(str(exc), code=1) from None
        sys.stderr.write(f"{old.id} retried as {new.id}\n")
        created.append(new)
    if as_json:
        sys.stdout.write(json.dumps([r.public_dict() for r in created], indent=2) + "\n")
    else:
        for record in created:
            sys.stdout.write(record.id + "\n")
    if refused:
        raise typer.Exit(2)


def _stored_video(vq: VideoQueue, raw_id: str) -> tuple[JobRecord, str]:
    """The record of a job that has a stored video and the video's URI, or a one-line
    failure saying why not."""
    try:
        record = _resolve(vq, raw_id)
    except UnknownJobError as exc:
        raise _fail(str(exc)) from None
    if not record.status.is_final:
        raise _fail(f"job {record.id} is {record.status.value}: no video yet (videoqueue wait {record.id})")
    if not record.output_uri:
        why = f" ({record.error.code}: {record.error.message})" if record.error else ""
        raise _fail(f"job {record.id} ended {record.status.value} with no stored video{why}")
    return record, record.output_uri


WORKER_MISSING = "this command reads storage and needs the worker install (boto3): {exc}"


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
    vq = VideoQueue()
    record, uri = _stored_video(vq, job_id)
    try:
        from worker.storage.fetch import FetchError, fetch_video
    except ImportError as exc:
        raise _fail(WORKER_MISSING.format(exc=exc)) from None

    dest = output if output is not None else Path(f"{record.id}.mp4")
    if dest.is_dir():
        dest = dest / f"{record.id}.mp4"
    try:
        fetched = fetch_video(uri, dest, vq.settings, manifest_uri=record.manifest_uri, overwrite=force)
    except FetchError as exc:
        raise _fail(f"job {record.id}: {exc}") from None
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
    vq = VideoQueue()
    record, uri = _stored_video(vq, job_id)
    try:
        from worker.storage.fetch import FetchError, presigned_url
    except ImportError as exc:
        raise _fail(WORKER_MISSING.format(exc=exc)) from None

    try:
        link = presigned_url(uri, vq.settings, expires)
    except FetchError as exc:
        raise _fail(f"job {record.id}: {exc}") from None
    sys.stdout.write(link + "\n")


def register(app: typer.Typer) -> None:
    """Add `retry`, `fetch` and `url` to `app`."""
    app.command(name="retry")(retry)
    app.command(name="fetch")(fetch)
    app.command(name="url")(url)
