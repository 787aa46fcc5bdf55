"""What every `videoqueue` command shares, whichever part of the distribution defines it.

The CLI (producer/cli.py) holds the producer's commands; commands that need the worker side
(its storage backends, provider clients, the doctor's checks) live in worker/cli.py and plug
in through the entry points of ENTRY_POINT_GROUP, so that the producer never imports the
worker. Both sides fail the same way: one `error: ...` line on stderr and exit status 2.
"""

from __future__ import annotations

import sys

import typer

ENTRY_POINT_GROUP = "videoqueue.cli"
"""Entry points of commands added to the `videoqueue` CLI. The name is the command's path,
its words separated by dots (`doctor`, `costs.rebuild`: `rebuild` in the `costs` group); the
object is a Typer command function (its parameters are the options, its docstring the help)."""

USAGE_ERROR = 2
"""Exit status of every error a command explains in one line (and of click's usage errors)."""

WORKER_EXTRA = 'pip install "videoqueue[worker]"'
"""What installs the worker side's dependencies (provider SDKs, boto3) next to the producer."""


def error_line(message: str) -> None:
    """Write `message` as the one `error: ...` line every failure ends with, on stderr."""
    sys.stderr.write(f"error: {' '.join(message.split())}\n")


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    """Print `message` as the error line and return the Exit (status `code`) to raise."""
    error_line(message)
    return typer.Exit(code)


def needs_worker_extra(command: str, missing: ImportError) -> typer.Exit:
    """The failure of `videoqueue <command>` where the worker side's dependencies are not
    installed (`missing`: the ImportError that says which module). Returns the Exit to raise."""
    module = missing.name or str(missing)
    return fail(
        f"`videoqueue {command}` needs the worker extra (missing module: {module}): {WORKER_EXTRA}, "
        f"or run it where the workers run (docker compose run --rm worker videoqueue {command})"
    )
