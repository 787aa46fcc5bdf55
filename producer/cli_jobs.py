"""Commands of the `videoqueue` CLI for jobs that ended: `retry` resubmits them. (`fetch` and
`url`, which read storage, are the worker side's: worker/cli.py.)

`register(app)` adds them to a Typer app. Every job id goes through `_resolve`.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from producer.api import EnqueueError, PreparedJob, RetryRefusedError, VideoQueue
from videoqueue.budget import BudgetExceededError
from videoqueue.commands import fail as _fail
from videoqueue.job import JobRecord
from videoqueue.jobids import AmbiguousJobIdError, UnknownJobError


def _resolve(vq: VideoQueue, raw_id: str) -> JobRecord:
    """The record of the job `raw_id` names (a whole id or a unique prefix); UnknownJobError
    if none, AmbiguousJobIdError if the prefix is too short or shared."""
    return vq.get(vq.resolve_id(raw_id))


def note_existing(prepared: list[PreparedJob], records: list[JobRecord]) -> None:
    """On stderr, for each submitted request its client job id returned an existing job for
    (`VideoQueue.enqueue` gives back that job instead of the prepared one)."""
    for job, record in zip(prepared, records, strict=True):
        if job.record.id != record.id:
            client_id = record.request.get("client_job_id")
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


def register(app: typer.Typer) -> None:
    """Add `retry` to `app`."""
    app.command(name="retry")(retry)
