"""Run benchmark scenarios: `python -m bench [SCENARIO ...] [--quick]` (or `make bench`).

Each scenario starts what it needs (its own Redis servers, the simulator, moto, celery
workers), prints a table and writes the same, with the machine and the command, to
bench/results/<scenario>.json. `--quick` runs a small version of each (a smoke test; its
numbers mean nothing) and writes under bench/results/quick/.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.harness import BenchStack

# name -> (module, needs an S3 server)
SCENARIOS: dict[str, tuple[str, bool]] = {
    "capacity": ("bench.capacity", False),
    "overhead": ("bench.overhead", False),
    "scaleout": ("bench.scaleout", False),
    "pools": ("bench.pools", False),
    "detection": ("bench.detection", False),
    "cold": ("bench.cold", False),
    "transfer": ("bench.transfer", True),
    "overload": ("bench.overload", False),
    "memory": ("bench.memory", False),
    "day": ("bench.day", False),
    "held": ("bench.held", False),
    "waiting": ("bench.waiting", False),
}
RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": redis_version,
        "commit": commit,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def print_table(console: Console, title: str, rows: list[dict[str, Any]]) -> None:
    """Rows (dicts) as a table whose columns are the union of their keys."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text: a cell is shown as it is (`:ledger:` in a key name is no emoji code).
        table.add_row(*(Text(_cell(row.get(column))) for column in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def run_scenario(name: str, quick: bool, console: Console, options: argparse.Namespace | None = None) -> dict[str, Any]:
    """Run one scenario on a fresh stack; returns its result document. A scenario with
    options of its own (an `add_arguments` function) gets them as `run`'s third argument."""
    module_name, needs_s3 = SCENARIOS[name]
    module = importlib.import_module(module_name)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"vq-bench-{name}-") as tmp, BenchStack(Path(tmp), moto=needs_s3) as stack:
        if hasattr(module, "add_arguments"):
            result: dict[str, Any] = module.run(stack, quick, options)
        else:
            result = module.run(stack, quick)
    document = {
        "scenario": name,
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(),
        **result,
    }
    print_table(console, f"{name}{' (quick)' if quick else ''}", result["rows"])
    for note in result.get("notes", []):
        console.print(f"  - {note}")
    return document


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios", nargs="*", metavar="SCENARIO", help=f"any of {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not a measurement")
    parser.add_argument("--results", type=Path, default=None, help="folder for the JSON results")
    # Scenarios with options of their own add them (e.g. `python -m bench overload --parts A,D`).
    modules = {name: importlib.import_module(module) for name, (module, _) in SCENARIOS.items()}
    for module in modules.values():
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    for name in args.scenarios or list(SCENARIOS):
        check = getattr(modules[name], "check_options", None)
        if check is not None:
            try:
                check(args, args.quick)
            except ValueError as err:
                parser.error(f"{name}: {err}")
    console = Console(width=max(160, Console().width))
    out = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.scenarios or list(SCENARIOS):
        document = run_scenario(name, args.quick, console, args)
        path = out / f"{name}.json"
        path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        console.print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
