"""Unusable settings stop the real CLI, doctor and `celery -A worker worker` with exit
status 2 and one line naming the variable, never a traceback; empty ones are unset
(issue 12)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from simulator.stack import _bin
from tests.integration.conftest import REDIS_URL
from tests.integration.test_cli import CLI

pytestmark = pytest.mark.integration

BAD = [
    ("MODEL_LIMITS", "{not json", "invalid setting MODEL_LIMITS: not valid JSON"),
    ("POLL_MIN_S", "soon", "invalid setting POLL_MIN_S: Input should be a valid number"),
    (
        "TENANT_WEIGHTS",
        '{"acme": 0}',
        "invalid setting TENANT_WEIGHTS: tenant 'acme': the weight must be a finite number greater than 0",
    ),
]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": REDIS_URL, **extra}


def _assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith(f"error: {expected}"), result.stderr


@pytest.mark.parametrize(("variable", "value", "expected"), BAD)
@pytest.mark.parametrize("command", [["jobs"], ["doctor"], ["submit", "a fox"], ["costs"]])
def test_the_cli_names_the_bad_setting(
    variable: str, value: str, expected: str, command: list[str], tmp_path: Path
) -> None:
    result = subprocess.run(
        [CLI, *command],
        env=_env(**{variable: value}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _assert_one_line(result, expected)


@pytest.mark.parametrize(("variable", "value", "expected"), BAD)
def test_a_worker_names_the_bad_setting(variable: str, value: str, expected: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [_bin("celery"), "-A", "worker", "worker", "--loglevel=INFO", "--concurrency=1"],
        env=_env(**{variable: value}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    _assert_one_line(result, expected)


def test_empty_values_are_unset_for_the_cli(tmp_path: Path) -> None:
    # What compose's ${S3_ENDPOINT_URL:-} and a `MODEL_LIMITS=` line of .env give.
    (tmp_path / ".env").write_text("MODEL_LIMITS=\nBUDGET_TAGS_USD=\n")
    result = subprocess.run(
        [CLI, "jobs", "--json"],
        env=_env(S3_ENDPOINT_URL="", POLL_INITIAL_S="", S3_CHECKSUMS=""),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
