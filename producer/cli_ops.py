"""Operations commands of the `videoqueue` CLI: `videoqueue doctor`.

`register(app)` adds them to a Typer app. The checks live in `worker.doctor` and need the
worker side (boto3, the provider SDKs); they are imported only when the command runs, so
the producer CLI keeps working where only the producer's dependencies are installed.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from videoqueue.settings import InvalidSettingsError, get_settings

WORKER_MISSING = (
    "`videoqueue doctor` runs the worker's checks and needs the worker's dependencies "
    "(missing module: {module}). Install the full package (`pip install videoqueue`, which "
    "brings celery, redis, boto3 and the provider SDKs) on this machine, or run the doctor "
    "where the workers run (`docker compose run --rm worker videoqueue doctor`)."
)


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check Redis, storage, the provider keys and the workers. Exit code 1 if a check failed."""
    try:
        from worker.doctor import run_doctor
    except ImportError as exc:
        sys.stderr.write("error: " + WORKER_MISSING.format(module=exc.name or exc) + "\n")
        raise typer.Exit(2) from None
    try:
        settings = get_settings()
    except InvalidSettingsError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise typer.Exit(2) from None
    report = run_doctor(settings)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        sys.stdout.write(report.to_text())
    raise typer.Exit(0 if report.ok else 1)


def register(app: typer.Typer) -> None:
    """Add the operations commands (`doctor`) to `app`."""
    app.command(name="doctor")(doctor)
