"""The `videoqueue` command line: submit, status, wait, cancel and list jobs."""

from __future__ import annotations

import csv
import inspect
import itertools
import json
import os
import re
import sys
import traceback
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producer.api import (
    EnqueueError,
    PreparedJob,
    StoreRetryRefusedError,
    VideoQueue,
    WaitTimeoutError,
)
from producer.celery_client import producer_app_for
from producer.cli_archive import expired_lines
from producer.cli_archive import register as register_archive
from producer.cli_batch import register as register_batch
from producer.cli_budget import register as register_budget
from producer.cli_errors import explain, redact
from producer.cli_jobs import note_existing
from producer.cli_jobs import register as register_jobs
from producer.cli_limits import register as register_limits
from producer.cli_movie import register as register_movie
from producer.cli_queue import register as register_queue
from producer.cli_table import Col, fit_table
from producer.cli_watch import register as register_watch
from producer.cli_webhooks import register as register_webhooks
from producer.request import VideoRequest, repeated_client_ids
from producer.workercheck import no_worker_warning
from videoqueue.batches import BatchOptions
from videoqueue.budget import BudgetExceededError
from videoqueue.catalog import ModelSpec, load_catalog
from videoqueue.commands import ENTRY_POINT_GROUP, USAGE_ERROR, WORKER_EXTRA, error_line, needs_worker_extra
from videoqueue.commands import fail as _fail
from videoqueue.errors import InvalidRequestError
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.jobids import AmbiguousJobIdError, UnknownJobError
from videoqueue.ledger import GROUPS
from videoqueue.settings import get_settings
from videoqueue.stalled import StallRule, describe, stalls

app = typer.Typer(
    help="Run AI video generation at scale: enqueue jobs for the videoqueue workers and follow them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

# Exit statuses of `wait` (README "CLI").
WAIT_ALL_SUCCEEDED = 0
WAIT_SOME_NOT_SUCCEEDED = 1
WAIT_TIMED_OUT = 3

JOB_IDS_HELP = "Job ids, or unique prefixes of at least 4 characters (as `jobs` shows them)."


class _State:
    debug = False


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@app.callback()
def _global_options(
    debug: Annotated[
        bool, typer.Option("--debug", help="On an error, print the traceback too (or set VQ_DEBUG=1).")
    ] = False,
) -> None:
    """Run AI video generation at scale: enqueue jobs for the videoqueue workers and follow them.

    Every error is one line on stderr naming the cause and the fix, with exit status 2."""
    _State.debug = debug or _flag(os.environ.get("VQ_DEBUG"))


def _hide_flag_types() -> None:
    """typer's rich help prints a Python type after every parameter: after flags too
    (`--json <bool>`), as if they took a value, and `<list[str]>` after repeatable ones,
    `<%Y-%m-%d>` after dates. A flag shows none, as in click's plain help; a repeatable
    option its metavar, else its name (`TAG...`); a repeatable argument nothing more than
    its metavar or name (`JOB_ID...`); a date its format as people write it (`<YYYY-MM-DD>`)."""
    shown_option = typer.core.TyperOption.display_type_rich
    shown_argument = typer.core.TyperArgument.display_type_rich

    def readable(label: str | None) -> str | None:
        if label is None:
            return None
        for code, text in (("%Y", "YYYY"), ("%m", "MM"), ("%d", "DD"), ("%H", "HH"), ("%M", "MM"), ("%S", "SS")):
            label = label.replace(code, text)
        return label

    def option_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
        if self.is_flag:
            return None
        if self.multiple and self.metavar is None:
            return f"{(self.name or 'value').upper()}..."
        return readable(shown_option(self, ctx))

    def argument_type(self: typer.core.TyperArgument, ctx: Any) -> str | None:
        if self.nargs != 1:
            return None  # its metavar or name, repeated (JOB_ID..., job_ids...), says it all
        return readable(shown_argument(self, ctx))

    typer.core.TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    typer.core.TyperArgument.display_type_rich = argument_type  # type: ignore[method-assign,assignment]


_hide_flag_types()


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _detail(r: JobRecord) -> str:
    """Where the video went, or why there is none; for a job that failed in storage, until
    when `videoqueue store retry` can still store it."""
    if r.output_uri:
        return r.output_uri
    if r.error is None:
        return ""
    text = f"{r.error.code}: {r.error.message}"
    if r.store_retry_refusal(utcnow()) is None:
        until = r.result_expires_at.isoformat(timespec="seconds") if r.result_expires_at else "the provider forgets it"
        text += f" (videoqueue store retry possible until {until})"
    return text


def _show(records: list[JobRecord], stalled: dict[str, float] | None = None) -> None:
    """A table on a terminal; tab-separated lines (whole values, easy to grep) otherwise.
    `stalled`: seconds overdue of the stalled jobs, by id (videoqueue.stalled)."""
    stalled = stalled or {}
    if out.is_terminal:
        out.print(_job_table(records, out.width, stalled))
        return
    sys.stdout.write("\t".join(PIPED_COLUMNS) + "\n")
    for r in records:
        sys.stdout.write("\t".join(_piped_row(r, stalled.get(r.id))) + "\n")


PIPED_COLUMNS = ("id", "status", "provider", "model", "cost_estimate_usd", "cost_usd", "output_or_error", "stalled_s")


def _piped_row(r: JobRecord, stalled_s: float | None) -> list[str]:
    """One job as whole values for scripts: `status` the plain lifecycle status (what
    `status --json` says), `stalled_s` whole seconds overdue, empty when not stalled; tabs
    and line breaks in the output or error text become spaces."""
    cost = "" if r.cost_usd is None else str(r.cost_usd)
    detail = " ".join(_detail(r).split())
    stalled = "" if stalled_s is None else str(int(stalled_s))
    return [r.id, r.status.value, r.provider, r.model, str(r.cost_estimate_usd), cost, detail, stalled]


def _stalls(vq: VideoQueue, records: list[JobRecord]) -> dict[str, float]:
    """Seconds overdue of the stalled jobs among `records` (a display state), by id."""
    return stalls(vq.store, StallRule.from_settings(vq.settings), records)


SHORT_ID_CHARS = 8
OUTPUT_MIN_CHARS = 24
"""The output / error column is not narrowed below this: the model is cut, then the cost
and the model left out, first."""

JOB_COLUMNS = (
    Col("id", priority=0, short=lambda job_id: job_id[:SHORT_ID_CHARS]),
    Col("status", priority=0, min_width=12, overflow="words"),
    Col("model", priority=2, min_width=12),
    Col("cost", priority=3, justify="right"),
    Col("output / error", priority=1, min_width=OUTPUT_MIN_CHARS, overflow="words"),
)


def _job_table(records: list[JobRecord], width: int, stalled: dict[str, float] | None = None) -> Table:
    """Jobs as a table at most `width` wide: ids shortened to their first 8 characters
    (accepted wherever an id is) unless there is room; model cut with an ellipsis; an
    output path or URL cut on one line keeping its end ("…/videos/0c1c0196-….mp4"), an
    error wrapped at spaces; cost (the actual cost, or ~ the estimate) and then the model
    left out on narrow terminals. No word is ever broken across lines."""
    stalled = stalled or {}
    rows = [
        [
            r.id,
            describe(r, stalled.get(r.id)),
            r.model,
            f"${r.cost_usd:.4f}" if r.cost_usd is not None else f"~${r.cost_estimate_usd:.4f}",
            _detail(r),
        ]
        for r in records
    ]
    return fit_table(JOB_COLUMNS, rows, width)


def read_jsonl(
    path: Path, defaults: dict[str, Any] | None = None
) -> tuple[list[tuple[int, VideoRequest]], dict[str, str]]:
    """Requests from a JSON-lines file with their line numbers, and the problems of the
    lines that are not requests. Blank lines are skipped. `defaults` (request fields, as a
    line spells them) fill in what a line leaves out: a line's own field wins."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError({"file": f"cannot read {path}: {exc}"}) from exc
    requests: list[tuple[int, VideoRequest]] = []
    problems: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems[f"line {number}"] = f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(data, dict):
            problems[f"line {number}"] = "must be a JSON object"
            continue
        try:
            requests.append((number, VideoRequest.parse({**(defaults or {}), **data})))
        except InvalidRequestError as exc:
            for field, message in exc.problems.items():
                problems[f"line {number}: {field}"] = message
    if not requests and not problems:
        problems["file"] = f"{path} holds no requests"
    return requests, problems


def _prepare_all(
    vq: VideoQueue, requests: list[tuple[int, VideoRequest]], problems: dict[str, str]
) -> list[PreparedJob]:
    """Prepared jobs for every request, or InvalidRequestError with every problem found."""
    records: list[PreparedJob] = []
    problems = dict(problems)
    for number, request in requests:
        try:
            records.append(vq.prepare(request))
        except InvalidRequestError as exc:
            prefix = f"line {number}: " if number else ""
            problems.update({f"{prefix}{field}": message for field, message in exc.problems.items()})
    client_ids = [request.client_job_id for _, request in requests]
    for index, first in repeated_client_ids(client_ids).items():
        number = requests[index][0]
        where = f"line {number}: " if number else ""
        problems[f"{where}client_job_id"] = f"{client_ids[index]!r} repeats line {requests[first][0]}"
    if problems:
        raise InvalidRequestError(problems)
    return records


@app.command()
def submit(  # noqa: PLR0917 - typer maps each parameter to an option
    prompt: Annotated[str | None, typer.Argument(help="What the video should show.")] = None,
    provider: Annotated[str | None, typer.Option(help="byteplus or veo (default: DEFAULT_PROVIDER).")] = None,
    model: Annotated[str | None, typer.Option(help="Model id (default: the provider's default).")] = None,
    duration: Annotated[int | None, typer.Option(help="Seconds of video.")] = None,
    resolution: Annotated[str | None, typer.Option(help="480p, 720p, 1080p, ...")] = None,
    ratio: Annotated[str | None, typer.Option(help="Aspect ratio such as 16:9 or 9:16.")] = None,
    audio: Annotated[bool | None, typer.Option("--audio/--no-audio", help="Generate sound.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible output.")] = None,
    service_tier: Annotated[str | None, typer.Option(help="default or flex (cheaper, slower).")] = None,
    image_url: Annotated[str | None, typer.Option(help="First-frame image URL.")] = None,
    image_file: Annotated[str | None, typer.Option(help="First-frame image file (PNG, JPEG, WebP).")] = None,
    last_frame_url: Annotated[str | None, typer.Option(help="Last-frame image URL.")] = None,
    last_frame_file: Annotated[str | None, typer.Option(help="Last-frame image file.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to keep out (Veo).")] = None,
    person_generation: Annotated[str | None, typer.Option(help="allow_adult or dont_allow (Veo).")] = None,
    tag: Annotated[list[str] | None, typer.Option(metavar="TAG", help="Tag for cost reports; repeatable.")] = None,
    client_job_id: Annotated[str | None, typer.Option(help="Your own unique id for this job.")] = None,
    priority: Annotated[
        int | None, typer.Option(help="0-9, higher first (default 5): the job's place in its model's waiting room.")
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(help='Whose share of the quota the job counts to (default "default"; weights: TENANT_WEIGHTS).'),
    ] = None,
    on_complete: Annotated[
        str | None, typer.Option(help="Your Celery task sent the final job record when the job ends.")
    ] = None,
    on_complete_queue: Annotated[
        str | None, typer.Option(help='The queue of --on-complete (default "celery").')
    ] = None,
    webhook_url: Annotated[
        str | None, typer.Option(help="Where the job's end is POSTed, signed with WEBHOOK_SECRET (https).")
    ] = None,
    webhook_event: Annotated[
        list[str] | None,
        typer.Option(metavar="EVENT", help="final (default), started, progress, or one end; repeatable."),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", help="JSON-lines file, one request per line; the options above fill in what a line leaves out."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job records as a JSON list.")] = False,
    batch: Annotated[
        str | None,
        typer.Option("--batch", metavar="NAME", help="Submit the jobs as one batch of this name; print its id."),
    ] = None,
) -> None:
    """Enqueue one job (PROMPT) or one job per JSON line of --file; print the job ids (with
    --batch, the batch's id: `videoqueue batch status|wait|cancel`)."""
    vq = VideoQueue()
    options: dict[str, Any] = {
        "provider": provider,
        "model": model,
        "duration": duration,
        "resolution": resolution,
        "ratio": ratio,
        "audio": audio,
        "seed": seed,
        "service_tier": service_tier,
        "image_url": image_url,
        "image_file": image_file,
        "last_frame_url": last_frame_url,
        "last_frame_file": last_frame_file,
        "negative_prompt": negative_prompt,
        "person_generation": person_generation,
        "client_job_id": client_job_id,
        "priority": priority,
        "tenant": tenant,
        "on_complete": on_complete,
        "on_complete_queue": on_complete_queue,
        "webhook_url": webhook_url,
        "tags": tuple(tag) if tag else None,
        "webhook_events": tuple(webhook_event) if webhook_event else None,
    }
    given = {k: v for k, v in options.items() if v is not None}
    try:
        if file is not None:
            if prompt is not None:
                raise _fail("give a PROMPT or --file, not both")
            if "client_job_id" in given:
                raise _fail("--client-job-id names one job: give it per line of --file")
            # The options are every line's defaults: ignored, they would buy renders of
            # another model, length or size than the command line asked for.
            requests, problems = read_jsonl(file, given)
        elif prompt is None:
            raise _fail("give a PROMPT or --file")
        else:
            requests = [(0, VideoRequest.parse({"prompt": prompt, **given}))]
            problems = {}
        prepared = _prepare_all(vq, requests, problems)
        if batch is not None:
            made = vq.enqueue_batch(prepared, BatchOptions(name=batch, tags=tag or ()))
            records = vq.get_many(made.job_ids)
        else:
            records = vq.enqueue(prepared)
    except InvalidRequestError as exc:
        if file is not None and given:
            flags = {"tags": "tag", "webhook_events": "webhook_event"}
            shown = ", ".join("--" + flags.get(name, name).replace("_", "-") for name in given)
            err.print(f"note: each line below was read with the options {shown} filling in what it leaves out")
        if len(exc.problems) == 1:
            ((field, message),) = exc.problems.items()
            raise _fail(f"invalid {field}: {message}; nothing was enqueued") from None
        for field, message in exc.problems.items():
            err.print(f"[red]invalid[/red] {escape(field)}: {escape(message)}", highlight=False, soft_wrap=True)
        raise _fail("nothing was enqueued") from None
    except BudgetExceededError as exc:
        raise _fail(str(exc)) from None
    except EnqueueError as exc:
        # A broker that cannot be reached is explained (and exits 2) like every other error.
        if exc.__cause__ is not None and not explain(exc.__cause__).message.startswith("unexpected"):
            raise exc.__cause__ from None
        raise _fail(str(exc), code=1) from None
    if batch is not None:
        sys.stdout.write((json.dumps(made.public_dict()) if as_json else made.id) + "\n")
        return
    note_existing(prepared, records)
    if as_json:
        _print_json([r.public_dict() for r in records])
    else:
        for record in records:
            sys.stdout.write(record.id + "\n")
    warning = no_worker_warning(producer_app_for(vq.settings))
    if warning:
        sys.stderr.write(warning + "\n")


@app.command()
def status(
    job_ids: Annotated[list[str], typer.Argument(help=JOB_IDS_HELP, metavar="JOB_ID...")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the job records as a JSON list.")] = False,
) -> None:
    """Show the current record of each job. A job whose record expired (JOB_RETENTION_S after
    it ended) is named with its manifest in storage (`videoqueue archive get`); exit code 1."""
    vq = VideoQueue()
    records, missing = _current(vq, job_ids)
    lines: list[str] = []
    unknown: list[str] = []
    if missing:
        lines, unknown, notes = expired_lines(vq, missing)
        for note in notes:
            err.print(f"note {escape(note)}", highlight=False, soft_wrap=True)
        if not lines:
            raise UnknownJobError(unknown)
    stalled = _stalls(vq, records)
    if as_json:
        _print_json([{**r.public_dict(), "stalled_s": stalled.get(r.id)} for r in records])
    elif records:  # every one expired: stdout stays empty, as for unknown ids
        _show(records, stalled)
        # What a status alone does not say (followed past its deadline, charged for a lost
        # create, ...): on stderr, so the lines on stdout keep their shape for scripts.
        for record in records:
            notes = [*record.notes, *([record.waiting_for_endpoint] if record.waiting_for_endpoint else [])]
            for note in notes:
                err.print(f"note {record.id}: {escape(note)}", highlight=False, soft_wrap=True)
    for line in lines:
        err.print(f"expired {escape(line)}", highlight=False, soft_wrap=True)
    if unknown:
        raise UnknownJobError(unknown)
    if lines:
        raise typer.Exit(1)


def _current(vq: VideoQueue, refs: list[str]) -> tuple[list[JobRecord], list[str]]:
    """(the current records `refs` name, in order; the refs, or the whole ids they
    resolved to, that have none). A prefix still in an index whose record just expired
    resolves to its whole id, which is then looked for in the archive. Raises
    AmbiguousJobIdError as `resolve_id`."""
    resolved: list[str] = []
    missing: list[str] = []
    for ref in refs:
        try:
            resolved.append(vq.resolve_id(ref))
        except UnknownJobError:
            missing.append(ref.strip().lower())
    found = vq.store.get_many(resolved)
    missing += [job_id for job_id, record in zip(resolved, found, strict=True) if record is None]
    return vq.with_standing([r for r in found if r is not None]), missing


@app.command()
def wait(
    job_ids: Annotated[list[str], typer.Argument(help=JOB_IDS_HELP, metavar="JOB_ID...")],
    timeout: Annotated[float | None, typer.Option(min=0, help="Give up after this many seconds.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as a JSON list.")] = False,
) -> None:
    """Wait until every job has ended, then show them.

    Exit status: 0 all succeeded; 1 all ended, some not succeeded (failed, expired or
    cancelled); 3 --timeout passed with some still active; 2 an error (unknown id, no Redis)."""
    vq = VideoQueue()
    job_ids = vq.resolve_ids(job_ids)
    vq.get_many(job_ids)
    timed_out = False
    try:
        if err.is_terminal and not as_json:
            records = _wait_with_bar(vq, job_ids, timeout)
        else:
            records = _wait_plain(vq, job_ids, timeout)
    except WaitTimeoutError as exc:
        records, timed_out = exc.jobs, True
        err.print(f"[yellow]timeout:[/yellow] {escape(str(exc))}", highlight=False, soft_wrap=True)
    stalled = _stalls(vq, records)
    if as_json:
        _print_json([{**r.public_dict(), "stalled_s": stalled.get(r.id)} for r in records])
    else:
        _show(records, stalled)
    if timed_out:
        raise typer.Exit(WAIT_TIMED_OUT)
    if not all(r.status is JobStatus.SUCCEEDED for r in records):
        raise typer.Exit(WAIT_SOME_NOT_SUCCEEDED)


def _wait_plain(vq: VideoQueue, job_ids: list[str], timeout: float | None) -> list[JobRecord]:
    seen: dict[str, JobStatus] = {}

    def report(records: list[JobRecord]) -> None:
        for r in records:
            if seen.get(r.id) is not r.status:
                seen[r.id] = r.status
                err.print(f"{r.id} {r.status.value}", highlight=False)

    return vq.wait(job_ids, timeout, on_update=report)


def _wait_with_bar(vq: VideoQueue, job_ids: list[str], timeout: float | None) -> list[JobRecord]:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress:
        bar = progress.add_task("waiting", total=len(job_ids))

        def report(records: list[JobRecord]) -> None:
            counts: dict[str, int] = {}
            for r in records:
                counts[r.status.value] = counts.get(r.status.value, 0) + 1
            summary = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            progress.update(bar, completed=sum(r.status.is_final for r in records), description=summary)

        return vq.wait(job_ids, timeout, on_update=report)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="Job id, or a unique prefix of at least 4 characters.")],
) -> None:
    """Cancel a job (at the provider too, where it can still be stopped)."""
    vq = VideoQueue()
    record = vq.cancel(vq.resolve_id(job_id))
    state = "cancel requested" if not record.status.is_final else record.status.value
    sys.stdout.write(f"{record.id} {state}\n")


@app.command()
def jobs(
    status_filter: Annotated[str | None, typer.Option("--status", help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job records as a JSON list.")] = False,
) -> None:
    """List recent jobs."""
    if status_filter is not None and status_filter not in {s.value for s in JobStatus}:
        raise _fail(f"unknown status {status_filter!r}; one of {', '.join(s.value for s in JobStatus)}")
    vq = VideoQueue()
    records = vq.list(status_filter, limit)
    stalled = _stalls(vq, records)
    if as_json:
        _print_json([{**r.public_dict(), "stalled_s": stalled.get(r.id)} for r in records])
    else:
        _show(records, stalled)


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object: model id -> its facts.")] = False,
) -> None:
    """The capability and price table: what each model accepts and what it costs."""
    catalog = load_catalog(get_settings().pricing_file)
    if as_json:
        _print_json({m: spec.model_dump(mode="json") for m, spec in catalog.models.items()})
        return
    for spec in catalog.models.values():
        default = ", default" if spec.default_for_provider else ""
        facts = [
            spec.label,
            f"{_ranges(spec.durations)} s",
            ", ".join(spec.resolutions),
            ", ".join(spec.ratios),
            "audio" if spec.audio else "no audio",
            f"images: {', '.join(spec.image_roles) or 'none'}",
            f"tiers: {', '.join(spec.service_tiers)}",
        ]
        sys.stdout.write(f"{spec.id} ({spec.provider}{default})\n")
        sys.stdout.write(f"  {' | '.join(facts)}\n")
        sys.stdout.write(f"  price: {_price_text(spec)}\n")
        sys.stdout.write(f"  source: {spec.price.source} (as of {spec.price.as_of})\n")


def _ranges(values: tuple[int, ...]) -> str:
    steps = {b - a for a, b in itertools.pairwise(values)}
    if len(values) > 2 and steps == {1}:
        return f"{values[0]}-{values[-1]}"
    return ", ".join(str(v) for v in values)


def _price_text(spec: ModelSpec) -> str:
    price = spec.price
    if price.unit == "token":
        text = f"${price.usd_per_million_audio}/M tokens with audio, ${price.usd_per_million_silent}/M without"
    else:
        rates = price.usd_per_second or {}
        text = "; ".join(f"{res} ${r.audio:.2f}/s (${r.silent:.2f}/s silent)" for res, r in rates.items())
    if price.flex_multiplier != 1:
        text += f"; flex x{price.flex_multiplier}"
    return text


@app.command()
def metrics(
    port: Annotated[int, typer.Option(help="Port to serve /metrics on.")] = 9808,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
) -> None:
    """Serve job-level Prometheus metrics for the whole fleet.

    Jobs by status, provider and model; cost in USD; render and store times; budgets;
    each model's waiting room and slots."""
    from videoqueue.metrics import serve

    sys.stderr.write(f"serving videoqueue metrics on http://{host}:{port}/metrics\n")
    serve(port, host)


@app.command()
def recover(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be recovered.")] = False,
    after: Annotated[
        float | None,
        typer.Option(help="The rule's floor in seconds (default RECOVER_AFTER_S); see docs/reliability.md."),
    ] = None,
) -> None:
    """Put stalled jobs (stranded by a crash) back on their way.

    Each worker also does this every SWEEP_INTERVAL_S."""
    from videoqueue.recovery import recover_stranded

    vq = VideoQueue()
    app_ = producer_app_for(vq.settings)

    def send(name: str, args: list[Any]) -> None:
        app_.send_task(name, args=args)

    report = recover_stranded(vq.store, send, StallRule.from_settings(vq.settings, after), dry_run=dry_run)
    verb = "would recover" if dry_run else "recovered"
    by_status = ", ".join(f"{n} {status}" for status, n in sorted(report.recovered.items())) or "none"
    sys.stdout.write(f"examined {report.examined} overdue jobs; {verb} {report.total} ({by_status})\n")
    if report.unparked:
        sys.stdout.write(f"sent {len(report.unparked)} parked steps now due\n")
    for job_id in report.job_ids:
        sys.stdout.write(f"{job_id}\n")


store_app = typer.Typer(help="The store step: store again what it gave up on.")
app.add_typer(store_app, name="store")


@store_app.command("retry")
def store_retry(job_ids: Annotated[list[str], typer.Argument(help=JOB_IDS_HELP, metavar="JOB_ID...")]) -> None:
    """Store again jobs that failed in storage, while the provider still holds their video.

    ModelArk holds it 24 h from the finish. Each job goes back to `downloading` with a
    fresh STORE_MAX_ATTEMPTS and the store task is sent. Exit code 2 if any was refused."""
    vq = VideoQueue()
    refused = 0
    for job_id in job_ids:
        try:
            record = vq.store_retry(vq.resolve_id(job_id))
        except (UnknownJobError, AmbiguousJobIdError, StoreRetryRefusedError) as exc:
            err.print(f"[red]refused[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            refused += 1
            continue
        sys.stdout.write(f"{record.id} {record.status.value} (store sent, retry {record.store_retries})\n")
    if refused:
        raise typer.Exit(2)


costs_app = typer.Typer(help="What jobs cost: reports from the ledger, and its rebuild from storage.")
app.add_typer(costs_app, name="costs")

DAY = ["%Y-%m-%d"]


@costs_app.callback(invoke_without_command=True)
def costs(  # noqa: PLR0917 - typer maps each parameter to an option
    ctx: typer.Context,
    since: Annotated[datetime | None, typer.Option(formats=DAY, help="First UTC day (YYYY-MM-DD).")] = None,
    until: Annotated[datetime | None, typer.Option(formats=DAY, help="Last UTC day, inclusive.")] = None,
    by: Annotated[str, typer.Option(help="day, month, provider, model, tag or status.")] = "day",
    provider: Annotated[str | None, typer.Option(help="Only this provider.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only jobs with this tag.")] = None,
    status_filter: Annotated[str | None, typer.Option("--status", help="Only jobs that ended so.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as a JSON list.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """Job counts, estimated and actual totals and their difference, per group."""
    if ctx.invoked_subcommand is not None:
        return
    if by not in GROUPS:
        raise _fail(f"--by must be one of {', '.join(GROUPS)}")
    if as_json and as_csv:
        raise _fail("give --json or --csv, not both")
    rows = VideoQueue().costs(
        by,  # type: ignore[arg-type]
        since.date() if since else None,
        until.date() if until else None,
        provider=provider,
        model=model,
        tag=tag,
        status=status_filter,
    )
    if as_json:
        _print_json([r.model_dump(mode="json") for r in rows])
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow([by, "jobs", "estimate_usd", "actual_usd", "difference_usd"])
        for r in rows:
            amounts = (f"{v:.6f}" for v in (r.estimate_usd, r.actual_usd, r.difference_usd))
            writer.writerow([r.group, r.jobs, *amounts])
    else:
        columns = (
            Col(by, priority=0, min_width=24, overflow="words"),
            Col("jobs", priority=0, justify="right"),
            Col("actual", priority=0, justify="right"),
            Col("estimate", priority=1, justify="right"),
            Col("difference", priority=2, justify="right"),
        )
        cells = [
            [r.group, str(r.jobs), f"${r.actual_usd:.4f}", f"${r.estimate_usd:.4f}", f"${r.difference_usd:+.4f}"]
            for r in rows
        ]
        out.print(fit_table(columns, cells, out.width))


register_budget(app)
register_archive(app)
register_jobs(app)
register_queue(app)
register_limits(app)
register_webhooks(app)
register_watch(app)
register_movie(app)
register_batch(app)


def _plug_in(typer_app: typer.Typer) -> None:
    """Add the commands other parts of the distribution define (worker/cli.py: doctor, fetch,
    url, costs rebuild), found by their entry points (videoqueue.commands.ENTRY_POINT_GROUP)
    without importing them here. One that cannot be loaded is still listed, and running it
    prints the one line saying what to install."""
    groups = {group.name: group.typer_instance for group in typer_app.registered_groups}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        *parents, name = entry.name.split(".")
        target = groups.get(parents[0]) if parents else typer_app
        if target is None or len(parents) > 1:
            raise RuntimeError(f"entry point {entry.name!r} of {ENTRY_POINT_GROUP}: no such command group")
        try:
            target.command(name=name)(entry.load())
        except ImportError as exc:
            target.command(name=name, context_settings=_ANY_ARGS)(_unavailable(" ".join(entry.name.split(".")), exc))


_ANY_ARGS = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _unavailable(command: str, missing: ImportError) -> Any:
    """A command that can only say what to install for `command` (whatever it is given)."""

    def unavailable(ctx: typer.Context) -> None:
        raise needs_worker_extra(command, [missing.name or str(missing)])

    unavailable.__doc__ = f"Not installed here: needs the worker extra ({WORKER_EXTRA})."
    return unavailable


_plug_in(app)


def _summaries(typer_app: typer.Typer) -> None:
    """The line each command gets in its group's --help: the first sentence of its
    docstring on one line (rich help otherwise keeps the docstring's line breaks and cuts
    a summary mid-sentence, "status, provider / and model")."""
    for info in typer_app.registered_commands:
        doc = info.help or inspect.getdoc(info.callback) or ""
        first = " ".join(doc.split("\n\n", 1)[0].split())
        if info.short_help is None and first:
            info.short_help = re.split(r"(?<=\.)\s+(?=[A-Z`])", first, maxsplit=1)[0]
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _summaries(group.typer_instance)


_summaries(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `videoqueue` console script. Whatever the command, an error ends
    it with one line on stderr naming the cause and the fix, and exit status 2 (`wait`
    and a few others document more); `--debug` or VQ_DEBUG=1 prints the traceback first."""
    _State.debug = _flag(os.environ.get("VQ_DEBUG"))
    try:
        code = app(args=argv, prog_name="videoqueue", standalone_mode=False)
    except typer.Abort:
        error_line("aborted")
        code = 130
    except KeyboardInterrupt:
        error_line("interrupted")
        code = 130
    except Exception as exc:  # noqa: BLE001 - every error becomes one line, the point of main
        code = _report(exc)
    sys.exit(code if isinstance(code, int) else 0)


def _report(exc: Exception) -> int:
    """Print the line for `exc` (and its traceback with --debug); return the exit status."""
    if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
        # click's (typer's) usage errors: a bad option, a missing argument.
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            return USAGE_ERROR  # typer printed the help already
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        error_line(redact(exc.format_message()) + hint)
        code: int = exc.exit_code  # type: ignore[attr-defined]
        return code
    if _State.debug:
        traceback.print_exception(exc)
    explained = explain(exc)
    error_line(explained.message)
    return explained.code
