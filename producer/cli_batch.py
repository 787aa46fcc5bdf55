"""`videoqueue batch status|wait|cancel|list`: batches of jobs followed as one
(videoqueue.batches; `videoqueue submit --file F --batch NAME` makes one).

`register(app)` adds the `batch` group to a Typer app.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from producer.api import VideoQueue, WaitTimeoutError
from videoqueue.batches import Batch, UnknownBatchError
from videoqueue.commands import fail as _fail

batch_app = typer.Typer(help="Batches of jobs: status, wait with one progress bar, cancel, list.")

BATCH_ID_HELP = "Batch id (batch-...), or a unique prefix of it."

err = Console(stderr=True)


def counts_text(batch: Batch) -> str:
    """The batch's non-zero counts by status, `queued=3 running=2 succeeded=5`."""
    return " ".join(f"{status}={n}" for status, n in batch.counts.items() if n)


def line(batch: Batch) -> str:
    """One batch for people: id, name, ended/size, counts, cost so far of the estimate, and
    when it finished (or `open`)."""
    when = batch.finished_at.isoformat(timespec="seconds") if batch.finished_at else "open"
    return (
        f"{batch.id}  {batch.name or '-'}  {batch.ended}/{batch.size} ended  {counts_text(batch)}  "
        f"cost ${batch.cost_usd:.4f} of ${batch.cost_estimate_usd:.4f} estimated  {when}"
    )


def _lookup(vq: VideoQueue, batch_id: str) -> Batch:
    try:
        return vq.batch(batch_id)
    except UnknownBatchError as exc:
        raise _fail(str(exc)) from None


def status(
    batch_id: Annotated[str, typer.Argument(help=BATCH_ID_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch as JSON.")] = False,
) -> None:
    """A batch now: its jobs' counts by status, its cost so far and its estimate."""
    batch = _lookup(VideoQueue(), batch_id)
    if as_json:
        sys.stdout.write(json.dumps(batch.public_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(line(batch) + "\n")


def wait(
    batch_id: Annotated[str, typer.Argument(help=BATCH_ID_HELP)],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds (exit code 3).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batch as JSON at the end.")] = False,
) -> None:
    """Wait for the batch's last job to end, with one progress bar (on a terminal) moved by
    the event stream; print the batch. Exit code 3 on timeout, as `videoqueue wait`."""
    vq = VideoQueue()
    first = _lookup(vq, batch_id)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        if err.is_terminal:
            with Progress(*columns, console=err, transient=False) as progress:
                bar = progress.add_task(first.name or first.id, total=first.size)

                def report(batch: Batch) -> None:
                    description = f"{batch.name or batch.id} {counts_text(batch)} ${batch.cost_usd:.2f}"
                    progress.update(bar, completed=batch.ended, description=description)

                done = vq.wait_batch(first.id, timeout, on_update=report)
        else:
            seen: list[str] = []

            def report_plain(batch: Batch) -> None:
                text = f"{batch.ended}/{batch.size} ended {counts_text(batch)}"
                if not seen or seen[-1] != text:
                    seen.append(text)
                    err.print(text, highlight=False)

            done = vq.wait_batch(first.id, timeout, on_update=report_plain)
    except WaitTimeoutError:
        raise _fail(f"{first.id}: timed out before its last job ended", code=3) from None
    if as_json:
        sys.stdout.write(json.dumps(done.public_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(line(done) + "\n")


def cancel(batch_id: Annotated[str, typer.Argument(help=BATCH_ID_HELP)]) -> None:
    """Cancel every job of the batch still cancellable (at the provider too, where it can
    still be stopped); those ended stay as they are."""
    vq = VideoQueue()
    batch = vq.cancel_batch(_lookup(vq, batch_id).id)
    sys.stdout.write(line(batch) + "\n")


def list_batches(
    limit: Annotated[int, typer.Option(min=1, max=10000, help="At most this many, newest first.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the batches as a JSON list.")] = False,
) -> None:
    """Recent batches, newest first."""
    found = VideoQueue().batches(limit)
    if as_json:
        sys.stdout.write(json.dumps([b.public_dict() for b in found], indent=2) + "\n")
        return
    for batch in found:
        sys.stdout.write(line(batch) + "\n")


def register(app: typer.Typer) -> None:
    """Add `batch status|wait|cancel|list` to `app`."""
    batch_app.command(name="status")(status)
    batch_app.command(name="wait")(wait)
    batch_app.command(name="cancel")(cancel)
    batch_app.command(name="list")(list_batches)
    app.add_typer(batch_app, name="batch")
