"""What every `videoqueue` command shares, whichever part of the distribution defines it.

The CLI (producer/cli.py) holds the producer's commands; commands that need the worker side
(its storage backends, provider clients, the doctor's checks) live in worker/cli.py and plug
in through the entry points of ENTRY_POINT_GROUP, so that the producer never imports the
worker. Both sides fail the same way: one `error: ...` line on stderr and exit status 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from importlib import metadata

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


def missing_worker_extra() -> list[str]:
    """The distributions of the `worker` extra that are not installed here, as this
    distribution's metadata lists them ([] when all are, or when videoqueue itself is not
    installed, as when run from a source folder)."""
    try:
        requirements = metadata.requires("videoqueue") or []
    except metadata.PackageNotFoundError:
        return []
    missing: list[str] = []
    for requirement in requirements:
        if _WORKER_MARKER.search(requirement) is None:
            continue
        name = _NAME.match(requirement)
        if name is None:
            continue
        try:
            metadata.distribution(name.group(0))
        except metadata.PackageNotFoundError:
            missing.append(name.group(0))
    return missing


_WORKER_MARKER = re.compile(r"""extra\s*==\s*["']worker["']""")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def needs_worker_extra(command: str, missing: Sequence[str]) -> typer.Exit:
    """The failure of `videoqueue <command>` where the worker side's dependencies are not
    installed (`missing`: the distributions or modules that are not). Returns the Exit to raise."""
    return fail(
        f"`videoqueue {command}` needs the worker extra (not installed here: {', '.join(missing)}): "
        f"{WORKER_EXTRA}, or run it where the workers run (docker compose run --rm worker videoqueue {command})"
    )


def require_worker_extra(command: str) -> None:
    """Raise the Exit of `needs_worker_extra` unless every distribution of the `worker` extra
    is installed: a worker-side command checks this first, so that it never runs half-way on
    an install without the extra."""
    missing = missing_worker_extra()
    if missing:
        raise needs_worker_extra(command, missing)
