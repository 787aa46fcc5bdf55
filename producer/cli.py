"""The `videoqueue` command line: submit, status, wait, cancel and list jobs."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from producer.api import (
    EnqueueError,
    PreparedJob,
    StoreRetryRefusedError,
    UnknownJobError,
    VideoQueue,
    WaitTimeoutError,
)
from producer.budget import BudgetExceededError
from producer.catalog import ModelSpec, load_catalog
from producer.celery_client import producer_app
from producer.cli_ops import register as register_ops
from producer.contract import JobRecord, JobStatus, utcnow
from producer.ledger import GROUPS
from producer.request import InvalidRequestError, VideoRequest
from producer.settings import InvalidSettingsError, get_settings

app = typer.Typer(
    help="Run AI video generation at scale: enqueue jobs for the videoqueue workers and follow them.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


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


def _show(records: list[JobRecord]) -> None:
    """A table on a terminal; tab-separated lines (whole values, easy to grep) otherwise."""
    if out.is_terminal:
        out.print(_job_table(records))
        return
    sys.stdout.write("id\tstatus\tprovider\tmodel\tcost_estimate_usd\tcost_usd\toutput_or_error\n")
    for r in records:
        detail = _detail(r)
        cost = "" if r.cost_usd is None else str(r.cost_usd)
        sys.stdout.write(
            f"{r.id}\t{r.status.value}\t{r.provider}\t{r.model}\t{r.cost_estimate_usd}\t{cost}\t{detail}\n"
        )


def _job_table(records: list[JobRecord]) -> Table:
    table = Table()
    table.add_column("id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    table.add_column("model", overflow="fold")
    table.add_column("est.", justify="right", no_wrap=True)
    table.add_column("cost", justify="right", no_wrap=True)
    table.add_column("output / error", overflow="fold")
    for r in records:
        detail = _detail(r)
        table.add_row(
            r.id,
            r.status.value,
            r.model,
            f"${r.cost_estimate_usd:.4f}",
            f"${r.cost_usd:.4f}" if r.cost_usd is not None else "-",
            detail,
        )
    return table


def read_jsonl(path: Path) -> tuple[list[tuple[int, VideoRequest]], dict[str, str]]:
    """Requests from a JSON-lines file with their line numbers, and the problems of the
    lines that are not requests. Blank lines are skipped."""
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
            requests.append((number, VideoRequest.parse(data)))
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
    seen: dict[str, int] = {}
    for number, request in requests:
        if request.client_job_id is None:
            continue
        if request.client_job_id in seen:
            where = f"line {number}: " if number else ""
            problems[f"{where}client_job_id"] = f"{request.client_job_id!r} repeats line {seen[request.client_job_id]}"
        else:
            seen[request.client_job_id] = number
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
    tag: Annotated[list[str] | None, typer.Option(help="Tag for cost reports; repeatable.")] = None,
    client_job_id: Annotated[str | None, typer.Option(help="Your own unique id for this job.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="JSON-lines file, one request per line.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print job records as JSON.")] = False,
) -> None:
    """Enqueue one job (PROMPT) or one job per line of --file; print the job ids."""
    vq = VideoQueue()
    try:
        if file is not None:
            if prompt is not None:
                raise _fail("give a PROMPT or --file, not both")
            requests, problems = read_jsonl(file)
        elif prompt is None:
            raise _fail("give a PROMPT or --file")
        else:
            fields: dict[str, Any] = {
                "prompt": prompt,
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
            }
            if tag:
                fields["tags"] = tuple(tag)
            requests = [(0, VideoRequest.parse({k: v for k, v in fields.items() if v is not None}))]
            problems = {}
        records = vq.enqueue(_prepare_all(vq, requests, problems))
    except InvalidRequestError as exc:
        for field, message in exc.problems.items():
            err.print(f"[red]invalid[/red] {escape(field)}: {escape(message)}", highlight=False)
        raise _fail("nothing was enqueued") from None
    except BudgetExceededError as exc:
        raise _fail(str(exc)) from None
    except EnqueueError as exc:
        raise _fail(str(exc), code=1) from None
    if as_json:
        _print_json([r.public_dict() for r in records] if file else records[0].public_dict())
    else:
        for record in records:
            sys.stdout.write(record.id + "\n")


@app.command()
def status(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print job records as JSON.")] = False,
) -> None:
    """Show the current record of each job."""
    try:
        records = VideoQueue().get_many(job_ids)
    except UnknownJobError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json([r.public_dict() for r in records] if len(records) > 1 else records[0].public_dict())
    else:
        _show(records)
        # What a status alone does not say (followed past its deadline, charged for a lost
        # create, ...): on stderr, so the lines on stdout keep their shape for scripts.
        for record in records:
            notes = [*record.notes, *([record.waiting_for_endpoint] if record.waiting_for_endpoint else [])]
            for note in notes:
                err.print(f"note {record.id}: {escape(note)}", highlight=False, soft_wrap=True)


@app.command()
def wait(
    job_ids: Annotated[list[str], typer.Argument(help="Job ids.")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print final records as JSON.")] = False,
) -> None:
    """Wait until every job is final. Exit code 0 only if all succeeded."""
    vq = VideoQueue()
    try:
        vq.get_many(job_ids)
    except UnknownJobError as exc:
        raise _fail(str(exc)) from None
    try:
        if err.is_terminal and not as_json:
            records = _wait_with_bar(vq, job_ids, timeout)
        else:
            records = _wait_plain(vq, job_ids, timeout)
    except WaitTimeoutError as exc:
        records = exc.jobs
        err.print(f"[yellow]timeout:[/yellow] {escape(str(exc))}", highlight=False)
    if as_json:
        _print_json([r.public_dict() for r in records])
    else:
        _show(records)
    if not all(r.status is JobStatus.SUCCEEDED for r in records):
        raise typer.Exit(1)


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
def cancel(job_id: Annotated[str, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job (at the provider too, where it can still be stopped)."""
    try:
        record = VideoQueue().cancel(job_id)
    except UnknownJobError as exc:
        raise _fail(str(exc)) from None
    state = "cancel requested" if not record.status.is_final else record.status.value
    sys.stdout.write(f"{record.id} {state}\n")


@app.command()
def jobs(
    status_filter: Annotated[str | None, typer.Option("--status", help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print job records as JSON.")] = False,
) -> None:
    """List recent jobs."""
    if status_filter is not None and status_filter not in {s.value for s in JobStatus}:
        raise _fail(f"unknown status {status_filter!r}; one of {', '.join(s.value for s in JobStatus)}")
    records = VideoQueue().list(status_filter, limit)
    if as_json:
        _print_json([r.public_dict() for r in records])
    else:
        _show(records)


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False) -> None:
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
    """Serve job-level Prometheus metrics for the whole fleet (jobs by status, provider
    and model; cost in USD; render and store times; budgets)."""
    from producer.metrics import serve

    sys.stderr.write(f"serving videoqueue metrics on http://{host}:{port}/metrics\n")
    serve(get_settings().redis_url, port, host)


@app.command()
def recover(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be recovered.")] = False,
    after: Annotated[float | None, typer.Option(help="Overdue by this many seconds (default RECOVER_AFTER_S).")] = None,
) -> None:
    """Put jobs stranded by a crash back on their way (each worker also does this every
    SWEEP_INTERVAL_S)."""
    from producer.recovery import recover_stranded

    vq = VideoQueue()
    app_ = producer_app(vq.settings.effective_broker_url)

    def send(name: str, args: list[Any]) -> None:
        app_.send_task(name, args=args)

    report = recover_stranded(
        vq.store, send, after if after is not None else vq.settings.recover_after_s, dry_run=dry_run
    )
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
def store_retry(job_ids: Annotated[list[str], typer.Argument(help="Job ids.")]) -> None:
    """Store again jobs that failed in storage, while the provider still holds their video
    (ModelArk: 24 h from the finish): each goes back to `downloading` with a fresh
    STORE_MAX_ATTEMPTS and the store task is sent. Exit code 2 if any was refused."""
    vq = VideoQueue()
    refused = 0
    for job_id in job_ids:
        try:
            record = vq.store_retry(job_id)
        except (UnknownJobError, StoreRetryRefusedError) as exc:
            err.print(f"[red]refused[/red] {escape(str(exc))}", highlight=False)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
        table = Table(by, "jobs", "estimate", "actual", "difference")
        for r in rows:
            table.add_row(
                r.group, str(r.jobs), f"${r.estimate_usd:.4f}", f"${r.actual_usd:.4f}", f"${r.difference_usd:+.4f}"
            )
        out.print(table)


@costs_app.command("rebuild")
def costs_rebuild() -> None:
    """Rebuild the ledger from the manifests in storage (after Redis lost it). Needs the
    worker install (it reads storage)."""
    try:
        from worker.ledger_rebuild import rebuild_ledger
    except ImportError as exc:
        raise _fail(f"costs rebuild needs the worker install (boto3): {exc}") from None
    count = rebuild_ledger(get_settings())
    sys.stdout.write(f"ledger rebuilt from storage: {count} entries\n")


register_ops(app)


def main() -> None:
    """Entry point of the `videoqueue` console script. Unusable settings end it with one
    line naming the variable and exit status 2, whatever the command."""
    try:
        app()
    except InvalidSettingsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
