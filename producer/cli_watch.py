"""`videoqueue watch`: follow the event stream (videoqueue.events) like `tail -f`.

`register(app)` adds it to a Typer app.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from producer.api import VideoQueue
from videoqueue import events
from videoqueue.commands import fail as _fail
from videoqueue.errors import InvalidRequestError
from videoqueue.events import JobEvent
from videoqueue.jobids import records


def line(event: JobEvent) -> str:
    """One event for people: `TIME JOB_ID OLD -> NEW`, `new` as OLD for a created job, then
    for a final one its cost, output and error where it has them; `TIME BATCH_ID
    batch.completed` for a batch's end."""
    at = event.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(event, events.BatchEvent):
        return f"{at} {event.batch_id} batch.completed"
    old = "new" if event.old_status is None else event.old_status.value
    parts = [at, event.job_id, old, "->", event.status.value]
    if event.cost_usd is not None:
        parts.append(f"cost=${event.cost_usd}")
    if event.output_uri:
        parts.append(f"output={event.output_uri}")
    if event.error is not None:
        parts.append(f"error={event.error.code.value}: {event.error.message}")
    return " ".join(parts)


def watch(
    job_ids: Annotated[
        list[str] | None,
        typer.Argument(help="Job ids, or unique prefixes of at least 4 characters.", metavar="JOB_ID..."),
    ] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Every job's events, until Ctrl-C.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="ID", help='Start after this event id ("0": from the oldest kept); default: new events only.'
        ),
    ] = None,
) -> None:
    """Follow job status changes as they happen, one line each, like `tail -f`.

    With job ids, only theirs, and it ends when every one has ended (one already ended
    is named on stderr); with --all, every job's, until Ctrl-C. --since ID replays the
    events after ID first (each line of --json carries its `id`)."""
    if bool(job_ids) == all_jobs:
        raise _fail("name the jobs to watch, or give --all (not both)")
    if since is not None:
        try:
            events.check_since(since)
        except InvalidRequestError as exc:
            raise _fail(f"--since: {exc.problems['since']}") from None
    vq = VideoQueue()
    client = vq.store.redis
    start = events.newest_id(client)  # before the records are read: no change falls between
    wanted: set[str] | None = None
    ended_at_start: set[str] = set()
    if job_ids:
        ids = list(dict.fromkeys(vq.resolve_ids(job_ids)))  # a job named twice: once
        wanted = set(ids)
        for record in records(vq.store, ids):
            if record.status.is_final:
                ended_at_start.add(record.id)
                if since is None:
                    sys.stderr.write(f"{record.id} already {record.status.value}\n")
    # Each named job's latest event after `start`: final or not. Without one, its record says.
    final_now: dict[str, bool] = {}
    position = start if since is None else since
    caught_up = since is None
    try:
        while not (wanted is not None and caught_up and _all_ended(wanted, final_now, ended_at_start)):
            found = events.read_events(client, position, block_ms=events.MAX_BLOCK_MS)
            if found:
                position = found[-1].id
            caught_up = caught_up or not found or events.order(position) >= events.order(start)
            for event in found:
                if wanted is not None and event.job_id not in wanted:
                    continue
                sys.stdout.write((json.dumps(event.to_dict()) if as_json else line(event)) + "\n")
                if events.order(event.id) > events.order(start):
                    final_now[event.job_id] = event.final
            sys.stdout.flush()
    except KeyboardInterrupt:
        return  # Ctrl-C is how --all ends: not an error


def _all_ended(wanted: set[str], final_now: dict[str, bool], ended_at_start: set[str]) -> bool:
    return all(final_now.get(job_id, job_id in ended_at_start) for job_id in wanted)


def register(app: typer.Typer) -> None:
    """Add `watch` to `app`."""
    app.command(name="watch")(watch)
