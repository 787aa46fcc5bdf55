"""The worker side's commands plug into the producer's CLI by entry points
(videoqueue.commands.ENTRY_POINT_GROUP): the producer never imports the worker."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from importlib.metadata import EntryPoint
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

import producer.cli
import worker.cli
from videoqueue import commands
from videoqueue.commands import ENTRY_POINT_GROUP


def test_the_worker_commands_are_registered_from_their_entry_points() -> None:
    root = typer.main.get_command(producer.cli.app)
    commands = getattr(root, "commands", {})
    for name in ("doctor", "fetch", "url"):
        assert commands[name].callback.__module__ == "worker.cli", name
    rebuild = commands["costs"].commands["rebuild"]
    assert rebuild.callback.__module__ == "worker.cli"


def test_loading_the_cli_imports_no_worker_module_but_the_commands() -> None:
    code = "import sys, producer.cli; print(sorted(m for m in sys.modules if m.startswith('worker')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['worker', 'worker.cli']"


def test_a_command_that_cannot_be_loaded_is_listed_and_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [
        EntryPoint(name="doctor", value="no_such_module_for_this_test:doctor", group=ENTRY_POINT_GROUP),
        EntryPoint(name="costs.rebuild", value="no_such_module_for_this_test:rebuild", group=ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(producer.cli, "entry_points", lambda group: missing if group == ENTRY_POINT_GROUP else [])
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A group, as the videoqueue CLI is."""

    costs = typer.Typer()
    app.add_typer(costs, name="costs")
    producer.cli._plug_in(app)
    listed = CliRunner().invoke(app, ["--help"])
    assert "doctor" in listed.output and "needs the worker extra" in listed.output
    for argv, command in ((["doctor", "--json"], "doctor"), (["costs", "rebuild", "--dry-run"], "costs rebuild")):
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1
        assert result.output.startswith(f"error: `videoqueue {command}` needs the worker extra")
        assert 'pip install "videoqueue[worker]"' in result.output and "no_such_module_for_this_test" in result.output


def test_the_worker_extra_is_checked_from_the_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    assert commands.missing_worker_extra() == []  # the dev install has it
    found = metadata.distribution

    def without_boto3(name: str) -> Any:
        if name == "boto3":
            raise metadata.PackageNotFoundError(name)
        return found(name)

    monkeypatch.setattr(metadata, "distribution", without_boto3)
    assert commands.missing_worker_extra() == ["boto3"]
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A group, as the videoqueue CLI is."""

    app.command(name="doctor")(worker.cli.doctor)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 2
    assert result.output == (
        "error: `videoqueue doctor` needs the worker extra (not installed here: boto3): "
        'pip install "videoqueue[worker]", or run it where the workers run '
        "(docker compose run --rm worker videoqueue doctor)\n"
    )
