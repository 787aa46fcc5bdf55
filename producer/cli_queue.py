"""`videoqueue queue`: each model's waiting room and quota now (videoqueue.room).

`register(app)` adds the command to the main Typer app.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from producer.api import VideoQueue
from producer.cli_table import Col, fit_table
from videoqueue.room import RoomSnapshot
from videoqueue.stalled import duration_text

out = Console()

QUEUE_COLUMNS = (
    Col("model", priority=0, min_width=12),
    Col("waiting", priority=0, justify="right"),
    Col("in flight", priority=0, justify="right"),
    Col("creates/min", priority=1, justify="right"),
    Col("oldest", priority=2, justify="right"),
    Col("back-off", priority=3, justify="right"),
)
"""One row per model: jobs waiting; slots in use / limit; creates in the last minute /
limit; how long the longest-waiting job has waited; how long a fleet-wide back-off still
lasts (the column left out when no model is backing off)."""

LINE_COLUMNS = (
    Col("model", priority=0, min_width=12),
    Col("priority", priority=0, justify="right"),
    Col("tenant", priority=0, min_width=12),
    Col("waiting", priority=0, justify="right"),
)
"""One row per model, priority (first served first) and tenant with jobs waiting."""

PIPED_COLUMNS = (
    "provider",
    "model",
    "waiting",
    "in_flight",
    "max_in_flight",
    "creates_last_minute",
    "creates_per_minute",
    "oldest_wait_s",
    "backoff_until",
    "waiting_by",
)


def snapshot_dict(snap: RoomSnapshot) -> dict[str, Any]:
    """One model's room as `queue --json` prints it: `{provider, model, waiting, waiting_by:
    [{priority, tenant, jobs}] (first served first, then by tenant), oldest_wait_s (seconds,
    null when nobody waits), in_flight, max_in_flight, creates_last_minute,
    creates_per_minute, backoff_until (ISO 8601 UTC, null when none)}`."""
    return {
        "provider": snap.provider,
        "model": snap.model,
        "waiting": snap.total_waiting,
        "waiting_by": [
            {"priority": priority, "tenant": tenant, "jobs": jobs} for (priority, tenant), jobs in _lines(snap)
        ],
        "oldest_wait_s": None if snap.oldest_wait_s is None else round(snap.oldest_wait_s, 3),
        "in_flight": snap.in_flight,
        "max_in_flight": snap.max_in_flight,
        "creates_last_minute": snap.creates_last_minute,
        "creates_per_minute": snap.creates_per_minute,
        "backoff_until": None
        if snap.backoff_until is None
        else snap.backoff_until.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def _lines(snap: RoomSnapshot) -> list[tuple[tuple[int, str], int]]:
    return sorted(snap.waiting.items(), key=lambda item: (-item[0][0], item[0][1]))


def snapshots(vq: VideoQueue) -> list[RoomSnapshot]:
    """The rooms of every model with jobs waiting, slots taken or a back-off, by provider
    and model."""
    now = time.time()
    found = [vq.room.snapshot(provider, model, now) for provider, model in vq.room.models_in_use()]
    return [s for s in found if s.total_waiting or s.in_flight or s.backoff_until is not None]


def summary_line(rows: list[RoomSnapshot]) -> str | None:
    """The one line said when no job waits anywhere (None when some do)."""
    if any(s.total_waiting for s in rows):
        return None
    return "nothing waiting" if rows else "nothing waiting, nothing in flight"


def _quota_row(snap: RoomSnapshot, now: float) -> list[str]:
    backoff = "-"
    if snap.backoff_until is not None:
        backoff = duration_text(max(0.0, snap.backoff_until.timestamp() - now))
    return [
        snap.model,
        str(snap.total_waiting),
        f"{snap.in_flight}/{snap.max_in_flight}",
        f"{snap.creates_last_minute}/{snap.creates_per_minute}",
        "-" if snap.oldest_wait_s is None else duration_text(snap.oldest_wait_s),
        backoff,
    ]


def _piped_row(snap: RoomSnapshot) -> list[str]:
    data = snapshot_dict(snap)
    by = " ".join(f"{line['priority']}/{line['tenant']}={line['jobs']}" for line in data["waiting_by"])
    return ["" if data[name] is None else str(data[name]) for name in PIPED_COLUMNS if name != "waiting_by"] + [by]


def queue(as_json: Annotated[bool, typer.Option("--json", help="Print a list of JSON objects.")] = False) -> None:
    """Show each model's waiting room: jobs waiting by priority and tenant, in flight, rate, back-off.

    Per model with jobs waiting or in flight: the jobs waiting (by priority, first served
    first, and tenant), slots in use / the limit, creates in the last minute / the limit,
    how long a fleet-wide back-off after a 429 lasts, and the longest wait. Piped: a header
    and tab-separated lines (`waiting_by` as PRIORITY/TENANT=JOBS ...)."""
    vq = VideoQueue()
    rows = snapshots(vq)
    if as_json:
        sys.stdout.write(json.dumps([snapshot_dict(s) for s in rows], indent=2) + "\n")
        return
    if not out.is_terminal:
        sys.stdout.write("\t".join(PIPED_COLUMNS) + "\n")
        for snap in rows:
            sys.stdout.write("\t".join(_piped_row(snap)) + "\n")
        return
    line = summary_line(rows)
    now = time.time()
    if rows:
        backing_off = any(s.backoff_until is not None for s in rows)
        columns = QUEUE_COLUMNS if backing_off else QUEUE_COLUMNS[:-1]
        cells = [_quota_row(s, now)[: len(columns)] for s in rows]
        out.print(fit_table(columns, cells, out.width))
    if line is not None:
        out.print(line, highlight=False, markup=False)
        return
    lines = [[s.model, str(p), tenant, str(n)] for s in rows for (p, tenant), n in _lines(s)]
    out.print(fit_table(LINE_COLUMNS, lines, out.width))


def register(app: typer.Typer) -> None:
    """Add `videoqueue queue` to `app`."""
    app.command(name="queue")(queue)
