"""`videoqueue webhooks status|replay`: a job's deliveries (its webhooks and completion
task: videoqueue.webhooks) and a new delivery of its end's webhook.

`register(app)` adds the `webhooks` group to a Typer app.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer

from producer.api import VideoQueue
from videoqueue.batches import UnknownBatchError, is_batch_id
from videoqueue.commands import fail as _fail
from videoqueue.jobids import AmbiguousJobIdError, UnknownJobError
from videoqueue.webhooks import Delivery, UnknownDeliveryError

webhooks_app = typer.Typer(help="Webhooks and completion tasks of jobs: what was delivered, and deliver again.")

JOB_ID_HELP = "Job id, or a unique prefix of at least 4 characters (or a batch id: batch-...)."


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _line(delivery: Delivery) -> str:
    code = "-" if delivery.last_code is None else str(delivery.last_code)
    where = delivery.target if delivery.kind == "webhook" else f"task {delivery.target}"
    parts = [
        delivery.id,
        delivery.type if delivery.kind == "webhook" else "on_complete",
        delivery.state,
        f"attempts {delivery.attempts}",
        f"last code {code}",
    ]
    if delivery.state == "delivered":
        parts.append(f"at {_when(delivery.delivered_at)}")
    elif delivery.next_at is not None:
        parts.append(f"next {_when(delivery.next_at)}")
    line = "  ".join(parts) + f"  -> {where}"
    return line + (f"\n    last error: {delivery.last_error}" if delivery.last_error else "")


def status(
    job_id: Annotated[str, typer.Argument(help=JOB_ID_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="Print the deliveries as a JSON list.")] = False,
) -> None:
    """A job's deliveries: each webhook and its completion task, with state, attempts, last
    status code and last error."""
    vq = VideoQueue()
    try:
        found = vq.webhook_status(job_id if is_batch_id(job_id) else vq.resolve_id(job_id))
    except (UnknownJobError, AmbiguousJobIdError, UnknownBatchError) as exc:
        raise _fail(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps([d.model_dump(mode="json") for d in found], indent=2) + "\n")
        return
    if not found:
        sys.stdout.write("no deliveries (the job asked for none, none is owed yet, or its record expired)\n")
    for delivery in found:
        sys.stdout.write(_line(delivery) + "\n")


def replay(job_id: Annotated[str, typer.Argument(help=JOB_ID_HELP)]) -> None:
    """Deliver the webhook of a job's end again: the same webhook-id (receivers that kept
    it drop it), attempts from zero, the retry schedule anew. Exit code 2 if there is none."""
    vq = VideoQueue()
    try:
        delivery = vq.webhook_replay(job_id if is_batch_id(job_id) else vq.resolve_id(job_id))
    except (UnknownJobError, AmbiguousJobIdError, UnknownBatchError, UnknownDeliveryError) as exc:
        raise _fail(str(exc)) from None
    sys.stdout.write(f"{delivery.id} {delivery.type} sent again to {delivery.target}\n")


def register(app: typer.Typer) -> None:
    """Add `webhooks status` and `webhooks replay` to `app`."""
    webhooks_app.command(name="status")(status)
    webhooks_app.command(name="replay")(replay)
    app.add_typer(webhooks_app, name="webhooks")
