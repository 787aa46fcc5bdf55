"""`videoqueue budget`: the fleet's caps in Redis (show, set) and the recount of the
budget counters from the ledger and the job store (rebuild).

`register(app)` adds the sub-app to the main Typer app.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from videoqueue.budget import BudgetState, CapSource, load_caps, parse_usd, set_caps, states
from videoqueue.budget_rebuild import rebuild_counters
from videoqueue.commands import fail as _fail
from videoqueue.errors import BudgetError
from videoqueue.job import utcnow
from videoqueue.jobstore import JobStore
from videoqueue.settings import get_settings

budget_app = typer.Typer(
    help="Budgets: caps per UTC day, month and tag, and what each has spent and reserved.",
    no_args_is_help=True,
)
out = Console()


class BudgetInputError(BudgetError, ValueError):
    """A `budget set` argument that is not a cap; the message is one line."""


def _store() -> JobStore:
    return JobStore.from_settings(get_settings())


def _usd(value: Decimal | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def _amount(option: str, text: str) -> Decimal | None:
    """A cap given on the command line: USD, or `none` for no cap."""
    if text.strip().lower() == "none":
        return None
    try:
        return parse_usd(text)
    except ValueError as exc:
        raise BudgetInputError(f"{option} {text}: {exc}, or none for no cap") from None


def parse_changes(
    *,
    daily: str | None,
    monthly: str | None,
    tags: list[str],
    clear_daily: bool,
    clear_monthly: bool,
    clear_tags: list[str],
) -> dict[str, Decimal | Literal["clear"] | None]:
    """The caps a `budget set` asks for, by name (`day`, `month`, `tag:NAME`): an amount,
    None for "no cap", or "clear". Raises BudgetInputError."""
    changes: dict[str, Decimal | Literal["clear"] | None] = {}
    if daily is not None and clear_daily:
        raise BudgetInputError("give --daily or --clear-daily, not both")
    if monthly is not None and clear_monthly:
        raise BudgetInputError("give --monthly or --clear-monthly, not both")
    if daily is not None:
        changes["day"] = _amount("--daily", daily)
    if monthly is not None:
        changes["month"] = _amount("--monthly", monthly)
    if clear_daily:
        changes["day"] = "clear"
    if clear_monthly:
        changes["month"] = "clear"
    for item in tags:
        name, sep, amount = item.partition("=")
        if not sep or not name.strip():
            raise BudgetInputError(f"--tag {item}: give NAME=USD, such as campaign-a=50 (or NAME=none)")
        changes[f"tag:{name.strip()}"] = _amount(f"--tag {name.strip()}", amount)
    for name in clear_tags:
        if f"tag:{name}" in changes:
            raise BudgetInputError(f"give --tag {name}=... or --clear-tag {name}, not both")
        changes[f"tag:{name}"] = "clear"
    if not changes:
        raise BudgetInputError(
            "nothing to set: give --daily, --monthly, --tag NAME=USD, or --clear-daily, --clear-monthly, --clear-tag"
        )
    return changes


# Where a cap comes from, for people: a cap from settings binds only the processes that
# have that setting, not the fleet, which `budget show` must not suggest.
SOURCE_LABELS: dict[CapSource, str] = {
    "redis": "redis, fleet-wide",
    "shell-settings": "this shell's settings",
    "none": "none",
}
SETTINGS_NOTE = (
    "note: a cap from this shell's settings (BUDGET_*) binds only the producers and workers whose "
    "settings have it; `videoqueue budget set` makes it fleet-wide"
)


def _print_states(rows: list[BudgetState]) -> None:
    from_settings = any(row.cap_source == "shell-settings" for row in rows)
    if out.is_terminal:
        table = Table("budget", "cap", "from", "spent", "reserved", "left")
        for row in rows:
            table.add_row(
                row.budget,
                _usd(row.cap_usd),
                SOURCE_LABELS[row.cap_source],
                _usd(row.spent_usd),
                _usd(row.reserved_usd),
                _usd(row.left_usd),
            )
        out.print(table)
        if from_settings:
            out.print(SETTINGS_NOTE, highlight=False, markup=False)
        return
    sys.stdout.write("budget\tcap_usd\tcap_source\tspent_usd\treserved_usd\tleft_usd\n")
    for row in rows:
        amounts = ["" if v is None else str(v) for v in (row.cap_usd, row.spent_usd, row.reserved_usd, row.left_usd)]
        sys.stdout.write(f"{row.budget}\t{amounts[0]}\t{row.cap_source}\t{amounts[1]}\t{amounts[2]}\t{amounts[3]}\n")
    if from_settings:
        sys.stderr.write(SETTINGS_NOTE + "\n")  # stdout stays one table for scripts


@budget_app.command("show")
def show(as_json: Annotated[bool, typer.Option("--json", help="Print a list of JSON objects.")] = False) -> None:
    """Show each budget's cap, spent, reserved and left.

    Today's, this month's and each tag's budget: the cap and where it comes from (redis,
    fleet-wide; this shell's settings, binding only processes that have them; or none),
    spent, reserved by jobs not ended yet, and left."""
    rows = states(_store().redis, get_settings().budget_policy(), utcnow().date())
    if as_json:
        sys.stdout.write(json.dumps([row.as_dict() for row in rows], indent=2, allow_nan=False) + "\n")
    else:
        _print_states(rows)


@budget_app.command("set")
def set_(  # noqa: PLR0917 - typer maps each parameter to an option
    daily: Annotated[str | None, typer.Option(help="Cap per UTC day in USD, or none.", metavar="USD")] = None,
    monthly: Annotated[str | None, typer.Option(help="Cap per UTC month in USD, or none.", metavar="USD")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option(help="Cap of a tag (all time), NAME=USD or NAME=none; repeatable.", metavar="NAME=USD"),
    ] = None,
    clear_daily: Annotated[bool, typer.Option("--clear-daily", help="Remove the daily cap from Redis.")] = False,
    clear_monthly: Annotated[bool, typer.Option("--clear-monthly", help="Remove the monthly cap from Redis.")] = False,
    clear_tag: Annotated[
        list[str] | None, typer.Option(help="Remove a tag's cap from Redis; repeatable.", metavar="NAME")
    ] = None,
) -> None:
    """Set the fleet's budget caps in Redis.

    Every producer enforces them at submit and every worker before a create, whatever
    its own BUDGET_* settings. `none` means no cap (over any setting); --clear-* removes
    the cap from Redis, so each process's setting applies."""
    try:
        changes = parse_changes(
            daily=daily,
            monthly=monthly,
            tags=tag or [],
            clear_daily=clear_daily,
            clear_monthly=clear_monthly,
            clear_tags=clear_tag or [],
        )
    except BudgetInputError as exc:
        raise _fail(str(exc)) from None
    client = _store().redis
    set_caps(client, changes)
    caps = load_caps(client, get_settings().budget_policy())
    for name in changes:
        cap = caps.cap(name)
        amount = "no cap" if cap.amount is None else f"${cap.amount:,.2f}"
        sys.stdout.write(f"{name}: {amount} ({SOURCE_LABELS[cap.source]})\n")


@budget_app.command("rebuild")
def rebuild(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would change; write nothing.")] = False,
) -> None:
    """Recount every budget counter: spent from the cost ledger, reserved from the jobs not
    ended yet. Prints each counter that changed, and the day and month counters it kept
    (their jobs' ledger rows may have expired: spent is never lowered). Tag counters take
    spent from the ledger's day aggregates, which outlive the rows."""
    result = rebuild_counters(_store().redis, dry_run=dry_run)
    verb = "would change" if dry_run else "changed"
    sys.stdout.write(
        f"counted {result.entries} ledger entries (spent) and {result.active_jobs} active jobs (reserved); "
        f"{len(result.changes)} counters {verb}, {result.unchanged} unchanged\n"
    )
    for c in result.changes:
        sys.stdout.write(
            f"  {c.budget}: spent ${c.spent_before:.4f} -> ${c.spent_after:.4f}, "
            f"reserved ${c.reserved_before:.4f} -> ${c.reserved_after:.4f}\n"
        )
    if result.rekeyed_jobs:
        sys.stdout.write(f"{result.rekeyed_jobs} active jobs {'would be' if dry_run else 'were'} given every counter\n")
    if result.day_from_settlement:
        sys.stdout.write(
            f"{result.day_from_settlement} entries of jobs no longer in the store and written before entries "
            "recorded their submission: counted on the day they were settled\n"
        )
    if result.kept and result.cutoff:
        sys.stdout.write(
            f"kept {len(result.kept)} day/month counters, not recounted: their jobs' ledger rows may have "
            f"expired (JOB_RETENTION_S; the period started before {result.cutoff:%Y-%m-%d %H:%M} UTC, or "
            f"rows of its settlement days are gone): spent not lowered, reserved recounted: "
            f"{', '.join(result.kept)}\n"
        )


def register(app: typer.Typer) -> None:
    """Add `videoqueue budget` to `app`."""
    app.add_typer(budget_app, name="budget")
