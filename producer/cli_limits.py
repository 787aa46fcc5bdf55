"""`videoqueue limits`: the fleet's provider limits per model in Redis (show, set, clear).

A limit stored here (`ProviderLimits.store_limits`, `keys.LIMITS_CONFIG`) binds every worker
at its next admission, which reads it in the admission's Lua script: no restart. `set` and
`clear` then send the model's admit message, so that a raised limit admits waiting jobs at
once. `register(app)` adds the sub-app to the main Typer app.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console

from producer.api import VideoQueue
from producer.cli_table import Col, fit_table
from videoqueue import keys
from videoqueue.commands import error_line
from videoqueue.commands import fail as _fail
from videoqueue.limits import LimitSource, limit_problem

limits_app = typer.Typer(
    help="Provider limits per model: tasks in flight and creates per minute, for the whole fleet.",
    no_args_is_help=True,
)
out = Console()

# Where a limit comes from, for people: one from settings binds each worker by its own
# settings, not the fleet, which `limits show` must not suggest (as `budget show`).
SOURCE_LABELS: dict[LimitSource, str] = {
    "redis": "redis, fleet-wide",
    "workers": "the workers' settings",
    "shell-settings": "this shell's settings",
}
SETTINGS_NOTE = (
    "note: a limit from settings (MAX_IN_FLIGHT_PER_MODEL, CREATES_PER_MINUTE_PER_MODEL, MODEL_LIMITS) "
    "binds each worker by its own settings (shown as the workers' last admission applied them, or this "
    "shell's before any); `videoqueue limits set` makes it fleet-wide"
)

LIMIT_COLUMNS = (
    Col("model", priority=0, min_width=12),
    Col("in flight", priority=0, justify="right"),
    Col("creates/min", priority=0, justify="right"),
    Col("from", priority=0, min_width=12, overflow="words"),
)


@dataclass(frozen=True)
class LimitRow:
    """The limits in force for one model and where each comes from. `provider` is None for
    a model stored in Redis that the catalog no longer has."""

    model: str
    provider: str | None
    max_in_flight: int
    max_in_flight_source: LimitSource
    creates_per_minute: int
    creates_per_minute_source: LimitSource

    def as_dict(self) -> dict[str, Any]:
        """`limits show --json`'s object: `{model, provider, max_in_flight,
        max_in_flight_source, creates_per_minute, creates_per_minute_source}`, a source being
        "redis" (`limits set`, fleet-wide), "workers" (the workers' settings, as their last
        admission of the model applied them) or "shell-settings" (this shell's settings)."""
        return {
            "model": self.model,
            "provider": self.provider,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_source": self.max_in_flight_source,
            "creates_per_minute": self.creates_per_minute,
            "creates_per_minute_source": self.creates_per_minute_source,
        }


def limit_rows(vq: VideoQueue) -> list[LimitRow]:
    """Every catalog model's limits in force, then those of stored models the catalog
    no longer has."""
    limits = vq.room.limits
    raw: dict[str, str] = vq.store.redis.hgetall(keys.LIMITS_CONFIG)  # type: ignore[assignment]
    models = [*vq.catalog.models, *sorted(set(raw) - set(vq.catalog.models))]
    rows: list[LimitRow] = []
    for model in models:
        in_force, sources = limits.limits_and_sources(model)
        spec = vq.catalog.models.get(model)
        rows.append(
            LimitRow(
                model=model,
                provider=None if spec is None else spec.provider,
                max_in_flight=in_force.max_in_flight,
                max_in_flight_source=sources["max_in_flight"],
                creates_per_minute=in_force.creates_per_minute,
                creates_per_minute_source=sources["creates_per_minute"],
            )
        )
    return rows


def source_text(row: LimitRow) -> str:
    """Where a model's limits come from, for people: "redis, fleet-wide", "this shell's
    settings", or each limit's source when they differ."""
    if row.max_in_flight_source == row.creates_per_minute_source:
        return SOURCE_LABELS[row.max_in_flight_source]
    return (
        f"in flight: {SOURCE_LABELS[row.max_in_flight_source]}; "
        f"creates/min: {SOURCE_LABELS[row.creates_per_minute_source]}"
    )


def _print_rows(rows: list[LimitRow]) -> None:
    from_settings = any(
        source != "redis" for r in rows for source in (r.max_in_flight_source, r.creates_per_minute_source)
    )
    if out.is_terminal:
        cells = [[r.model, str(r.max_in_flight), str(r.creates_per_minute), source_text(r)] for r in rows]
        out.print(fit_table(LIMIT_COLUMNS, cells, out.width))
        if from_settings:
            out.print(SETTINGS_NOTE, highlight=False, markup=False)
        return
    sys.stdout.write("model\tmax_in_flight\tmax_in_flight_source\tcreates_per_minute\tcreates_per_minute_source\n")
    for r in rows:
        sys.stdout.write(
            f"{r.model}\t{r.max_in_flight}\t{r.max_in_flight_source}\t"
            f"{r.creates_per_minute}\t{r.creates_per_minute_source}\n"
        )
    if from_settings:
        sys.stderr.write(SETTINGS_NOTE + "\n")  # stdout stays one table for scripts


@limits_app.command("show")
def show(as_json: Annotated[bool, typer.Option("--json", help="Print a list of JSON objects.")] = False) -> None:
    """Show each model's limits in force and where each comes from.

    Tasks in flight and creates per minute, each from Redis (set by `videoqueue limits
    set`, binding the whole fleet) or from this shell's settings (MODEL_LIMITS, else
    MAX_IN_FLIGHT_PER_MODEL and CREATES_PER_MINUTE_PER_MODEL), which bind each worker by
    its own settings."""
    rows = limit_rows(VideoQueue())
    if as_json:
        sys.stdout.write(json.dumps([row.as_dict() for row in rows], indent=2) + "\n")
    else:
        _print_rows(rows)


def _model_provider(vq: VideoQueue, model: str) -> str:
    """The provider of catalog model `model`; the one-line error (exit 2) naming the known
    models otherwise."""
    spec = vq.catalog.models.get(model)
    if spec is None:
        raise _fail(f"unknown model {model!r}; one of {', '.join(vq.catalog.models)}")
    return spec.provider


def _whole(option: str, value: int | None) -> None:
    problem = None if value is None else limit_problem(option, value)
    if problem is not None:
        raise _fail(problem)


def _report(vq: VideoQueue, model: str, provider: str) -> None:
    """Print the model's limits in force now and send its admit message: a limit raised
    (or cleared to a higher setting) admits waiting jobs at once."""
    row = next(r for r in limit_rows(vq) if r.model == model)
    sys.stdout.write(
        f"{model}: in flight {row.max_in_flight} ({SOURCE_LABELS[row.max_in_flight_source]}), "
        f"creates per minute {row.creates_per_minute} ({SOURCE_LABELS[row.creates_per_minute_source]})\n"
    )
    try:
        vq.send_admit(provider, model)
    except Exception as exc:  # noqa: BLE001 - the limits are stored; admission follows anyway
        error_line(
            f"the limits are stored, but the admit message was not sent ({type(exc).__name__}): "
            "waiting jobs are admitted at the next freed slot or every worker's sweep (SWEEP_INTERVAL_S)"
        )
        raise typer.Exit(1) from None


@limits_app.command("set")
def set_(
    model: Annotated[str, typer.Argument(help="A model of the catalog (`videoqueue models`).")],
    max_in_flight: Annotated[
        int | None, typer.Option(help="Provider tasks in flight at once, fleet-wide.", metavar="N")
    ] = None,
    creates_per_minute: Annotated[
        int | None, typer.Option(help="Create requests per minute, fleet-wide.", metavar="M")
    ] = None,
) -> None:
    """Set a model's limits for the whole fleet, in Redis.

    Every worker follows them at its next admission, no restart; a limit not given keeps
    what Redis holds (else the settings'). Then the model's admit message is sent, so that
    a raised limit admits waiting jobs at once. `videoqueue limits clear MODEL` goes back
    to the settings. Exit status 1 when the limits were stored but the admit message could
    not be sent."""
    _whole("--max-in-flight", max_in_flight)
    _whole("--creates-per-minute", creates_per_minute)
    if max_in_flight is None and creates_per_minute is None:
        raise _fail(
            "nothing to set: give --max-in-flight N, --creates-per-minute M or both "
            "(`videoqueue limits clear MODEL` goes back to the settings)"
        )
    vq = VideoQueue()
    provider = _model_provider(vq, model)
    vq.room.limits.store_limits(model, max_in_flight=max_in_flight, creates_per_minute=creates_per_minute)
    _report(vq, model, provider)


@limits_app.command("clear")
def clear(model: Annotated[str, typer.Argument(help="A model of the catalog (`videoqueue models`).")]) -> None:
    """Remove a model's limits from Redis: each worker's settings apply again.

    Then the model's admit message is sent, as `set` does. Stored limits of a model the
    catalog no longer has are removed too (no admit message)."""
    vq = VideoQueue()
    if model not in vq.catalog.models and model in vq.room.limits.stored():
        # A model the catalog dropped: its stored limits go, and no job of it can wait.
        vq.room.limits.clear_limits(model)
        sys.stdout.write(f"{model}: limits removed from Redis (not a model of the catalog)\n")
        return
    provider = _model_provider(vq, model)
    if not vq.room.limits.clear_limits(model):
        sys.stderr.write(f"note: Redis held no limits for {model}\n")
    _report(vq, model, provider)


def register(app: typer.Typer) -> None:
    """Add `videoqueue limits` to `app`."""
    app.add_typer(limits_app, name="limits")
