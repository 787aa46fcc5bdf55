"""The real `videoqueue` command as people and scripts meet it (issue 13): one-line errors
with exit status 2 whatever went wrong, id prefixes, one JSON shape per command, `wait`
exit statuses, help without `<bool>`, and tables that fit 60, 80 and 120 columns on a
real terminal (a pty)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
from pathlib import Path

import pytest
import typer

from producer.cli import app
from simulator.stack import free_port
from tests.integration.conftest import REDIS_URL, Stack
from tests.integration.helpers import wait_status
from tests.integration.test_cli import CLI, run
from videoqueue.job import JobStatus

pytestmark = pytest.mark.integration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _run_env(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


REDIS_COMMANDS = [
    ["submit", "a fox"],
    ["submit", "--file", "{jobs}"],
    ["status", "abcd1234"],
    ["wait", "abcd1234", "--timeout", "1"],
    ["cancel", "abcd1234"],
    ["jobs"],
    ["costs"],
    ["costs", "--by", "model", "--json"],
    ["store", "retry", "abcd1234"],
    ["recover", "--dry-run"],
]


@pytest.mark.parametrize("command", REDIS_COMMANDS, ids=" ".join)
def test_redis_unreachable_is_one_line_naming_the_url_and_the_fix(command: list[str], tmp_path: Path) -> None:
    # Seen: a 206-line traceback from `submit`.
    (tmp_path / "jobs.jsonl").write_text('{"prompt": "one"}\n')
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = {**os.environ, "REDIS_URL": url, "CHECK_IMAGE_URLS": "false"}
    args = [a.replace("{jobs}", str(tmp_path / "jobs.jsonl")) for a in command]
    line = _assert_one_line_error(_run_env(env, *args, cwd=tmp_path), "cannot reach Redis at redis://:***@127.0.0.1:")
    assert "connection refused" in line and "set REDIS_URL" in line and "hunter2" not in line


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for result in (
        _run_env(env, "--debug", "jobs", cwd=tmp_path),
        _run_env({**env, "VQ_DEBUG": "1"}, "jobs", cwd=tmp_path),
    ):
        assert result.returncode == 2
        assert "Traceback" in result.stderr and "ConnectionError" in result.stderr
        assert result.stderr.splitlines()[-1].startswith("error: cannot reach Redis at")


def test_a_broker_that_cannot_be_reached_is_one_line(local_stack: Stack) -> None:
    env = local_stack.env(BROKER_URL=f"amqp://guest:hunter2@127.0.0.1:{free_port()}//")
    line = _assert_one_line_error(_run_env(env, "submit", "a fox"), "cannot reach the broker at amqp://guest:***@")
    assert "set BROKER_URL" in line and "hunter2" not in line
    assert sum(local_stack.queue().store.count_by_status().values()) == 0  # the job was withdrawn


@pytest.mark.parametrize(
    ("variable", "value"), [("BUDGET_DAILY_USD", "-5"), ("BUDGET_DAILY_USD", "lots"), ("REDIS_URL", "localhost")]
)
@pytest.mark.parametrize("command", [["submit", "a fox"], ["status", "abcd"], ["wait", "abcd"], ["models"]])
def test_bad_settings_are_one_line(variable: str, value: str, command: list[str], tmp_path: Path) -> None:
    # Seen: BUDGET_DAILY_USD=-5 or =lots gave about 60 lines.
    env = {**os.environ, "REDIS_URL": REDIS_URL, variable: value}
    _assert_one_line_error(_run_env(env, *command, cwd=tmp_path), f"invalid setting {variable}")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["jobs", "--limit", "lots"], "Invalid value for '--limit'"),
        (["jobs", "--status", "done"], "unknown status 'done'"),
        (["status"], "Missing argument"),
        (["submit", "a fox", "--colour", "red"], "No such option: --colour"),
        (["submit", "a fox", "--duration", "3"], "invalid duration: 3 s is not supported"),
        (["costs", "--by", "week"], "--by must be one of"),
        (["frobnicate"], "No such command"),
    ],
)
def test_bad_input_is_one_line(local_stack: Stack, args: list[str], fragment: str) -> None:
    _assert_one_line_error(run(local_stack, *args), fragment)


def test_the_ids_the_demo_prints_are_accepted_everywhere(local_stack: Stack) -> None:
    # Seen: `status` refused the 8-character ids the demo prints.
    job_id = run(local_stack, "submit", "held [sim:hold]").stdout.strip()
    short = job_id[:8]
    status = run(local_stack, "status", short, "--json")
    assert status.returncode == 0, status.stderr
    assert [r["id"] for r in json.loads(status.stdout)] == [job_id]
    # Seen: an upper-case id or prefix was refused; ids are lowercase uuids.
    upper = run(local_stack, "status", short.upper(), job_id.upper(), "--json")
    assert upper.returncode == 0 and [r["id"] for r in json.loads(upper.stdout)] == [job_id, job_id], upper.stderr
    waited = run(local_stack, "wait", short[:4], "--timeout", "0.1", "--json")
    assert waited.returncode == 3 and json.loads(waited.stdout)[0]["id"] == job_id
    cancelled = run(local_stack, "cancel", short)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(job_id)
    refused = run(local_stack, "store", "retry", short)
    assert refused.returncode == 2 and "cannot store again" in refused.stderr
    _assert_one_line_error(run(local_stack, "status", short[:3]), "too short: give at least 4 characters")
    _assert_one_line_error(run(local_stack, "status", "ffff-no-such-job"), "unknown job id(s): ffff-no-such-job")
    # Seen: with another VQ_NAMESPACE it said only "unknown job id": it names where it looked.
    elsewhere = _run_env({**local_stack.env(), "VQ_NAMESPACE": "elsewhere"}, "status", short)
    _assert_one_line_error(elsewhere, f"unknown job id(s): {short}", "in namespace 'elsewhere'", "VQ_NAMESPACE")


def test_an_ambiguous_prefix_lists_its_candidates(local_stack: Stack) -> None:
    vq = local_stack.queue()
    ids = ["abcd1111-0000-4000-8000-000000000000", "abcd2222-0000-4000-8000-000000000000"]
    for job_id in ids:
        prepared = vq.prepare({"prompt": "a fox"})
        vq.store.create_many([prepared.record.model_copy(update={"id": job_id})])
    line = _assert_one_line_error(run(local_stack, "status", "abcd"), "'abcd' is ambiguous", *ids)
    assert "give more characters" in line
    assert run(local_stack, "status", "abcd2").returncode == 0


def test_json_has_one_shape_per_command(local_stack: Stack) -> None:
    # Seen: `status --json` gave an object for one id and a list for several.
    one = json.loads(run(local_stack, "submit", "one", "--json").stdout)
    two = json.loads(run(local_stack, "submit", "two", "--json").stdout)
    assert isinstance(one, list) and isinstance(two, list)
    ids = [one[0]["id"], two[0]["id"]]
    assert [r["id"] for r in json.loads(run(local_stack, "status", ids[0], "--json").stdout)] == ids[:1]
    assert [r["id"] for r in json.loads(run(local_stack, "status", *ids, "--json").stdout)] == ids
    assert isinstance(json.loads(run(local_stack, "jobs", "--json").stdout), list)
    assert isinstance(json.loads(run(local_stack, "costs", "--json").stdout), list)
    assert isinstance(json.loads(run(local_stack, "models", "--json").stdout), dict)
    waited = run(local_stack, "wait", ids[0], "--timeout", "0.1", "--json")
    assert isinstance(json.loads(waited.stdout), list)


def test_wait_exit_statuses_tell_success_failure_and_timeout(local_stack: Stack) -> None:
    # Seen: `wait` exited 1 both for a timeout and for a failed job.
    held = run(local_stack, "submit", "held [sim:hold]").stdout.strip()
    timed_out = run(local_stack, "wait", held, "--timeout", "0.5")
    assert timed_out.returncode == 3, timed_out.stderr
    assert "timeout:" in timed_out.stderr
    local_stack.start_worker()
    ok = run(local_stack, "submit", "fine").stdout.strip()
    bad = run(local_stack, "submit", "unsafe [sim:fail]").stdout.strip()
    assert run(local_stack, "wait", ok, "--timeout", "60").returncode == 0
    assert run(local_stack, "wait", ok, bad, "--timeout", "60").returncode == 1
    wait_status(local_stack.queue(), held, {JobStatus.RUNNING.value})
    run(local_stack, "cancel", held)
    assert run(local_stack, "wait", held, "--timeout", "60").returncode == 1
    assert run(local_stack, "wait", "no-such-job", "--timeout", "1").returncode == 2
    help_text = run(local_stack, "wait", "--help").stdout
    assert "0 all succeeded" in help_text and "3 --timeout passed" in help_text


def _command_paths() -> list[list[str]]:
    paths: list[list[str]] = [[]]
    root = typer.main.get_command(app)

    def walk(command: object, path: list[str]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*path, name])
            walk(sub, [*path, name])

    walk(root, [])
    return paths


PYTHON_TYPE = re.compile(r"<[^>]*(?:\[|%|\b(?:bool|list|dict|tuple|NoneType|datetime)\b)[^>]*>")


def test_flags_show_as_flags_in_every_help(tmp_path: Path) -> None:
    # Seen: `--json <bool>`, as if the flag took a value; then `budget set --tag <list[str]>`.
    env = {**os.environ, "COLUMNS": "120", "REDIS_URL": REDIS_URL}
    paths = _command_paths()
    assert ["status"] in paths and ["store", "retry"] in paths and ["costs", "rebuild"] in paths
    assert ["budget", "set"] in paths
    for path in paths:
        result = _run_env(env, *path, "--help", cwd=tmp_path)
        assert result.returncode == 0, (path, result.stderr)
        assert "--help" in result.stdout
        assert "<bool>" not in result.stdout, (path, result.stdout)
        assert not PYTHON_TYPE.findall(result.stdout), (path, PYTHON_TYPE.findall(result.stdout), result.stdout)
    assert "--json" in _run_env(env, "status", "--help", cwd=tmp_path).stdout
    assert "TAG" in _run_env(env, "submit", "--help", cwd=tmp_path).stdout
    assert "<YYYY-MM-DD>" in _run_env(env, "costs", "--help", cwd=tmp_path).stdout


def test_every_command_summary_is_one_whole_sentence(tmp_path: Path) -> None:
    # Seen: `videoqueue --help` cut summaries where the docstring broke its line
    # ("... (jobs by status, provider" / "and model; ...").
    env = {**os.environ, "COLUMNS": "200", "REDIS_URL": REDIS_URL}
    for group in ([], ["budget"], ["costs"], ["store"]):
        text = _run_env(env, *group, "--help", cwd=tmp_path).stdout
        panel = text[text.index("Commands") :].splitlines()[1:]
        rows = [line.strip("│ ") for line in panel if line.startswith("│")]
        assert rows, text
        for row in rows:
            name, _, summary = row.partition(" ")
            assert name and summary.strip().endswith("."), (group, row, text)


def test_wait_refuses_a_negative_timeout(tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": REDIS_URL}
    _assert_one_line_error(_run_env(env, "wait", "abcd1234", "--timeout", "-5", cwd=tmp_path), "--timeout")


def _on_a_terminal(env: dict[str, str], columns: int, *args: str) -> tuple[int, list[str]]:
    """Run the CLI with stdout on a pty `columns` wide; its exit status and output lines."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    process = subprocess.Popen(
        [CLI, *args],
        env={**env, "COLUMNS": str(columns), "TERM": "xterm"},
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    code = process.wait(timeout=60)
    text = ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")
    return code, [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("columns", [60, 80, 120])
def test_tables_fit_the_terminal_and_keep_columns_readable(local_stack: Stack, columns: int) -> None:
    # Seen: at 80 columns `jobs`, `status` and `wait` squeezed the model and output columns
    # to one letter a line.
    local_stack.start_worker()
    ids = [
        run(local_stack, "submit", "fine").stdout.strip(),
        run(local_stack, "submit", "unsafe [sim:fail]").stdout.strip(),
        run(local_stack, "submit", "a veo fox", "--provider", "veo").stdout.strip(),
    ]
    assert run(local_stack, "wait", *ids, "--timeout", "60").returncode == 1
    models = {"seedance-1-5-pro-251215", "veo-3.1-fast-generate-001"}
    env = local_stack.env()
    for args in (["jobs"], ["status", *ids], ["wait", *ids], ["costs", "--by", "model"]):
        code, lines = _on_a_terminal(env, columns, *args)
        assert code in (0, 1), (args, lines)
        assert all(len(line) <= columns for line in lines), (args, "\n".join(lines))
        text = "\n".join(lines)
        if args[0] == "costs":
            assert all(model in text for model in models), text
            continue
        for job_id in ids:
            assert job_id[:8] in text, (args, text)
        cells = [[c.strip() for c in re.split(r"[│┃]", line)[1:-1]] for line in lines if line.startswith(("│", "┃"))]
        header = cells[0]
        if columns >= 120:
            assert all(model in text for model in models), (args, text)
        if "model" in header:
            shown = [row[header.index("model")] for row in cells[1:] if row[header.index("model")]]
            assert len(shown) == len(ids) and all(len(m) >= 10 for m in shown), (args, text)
        assert "output / error" in header
        # Seen: "content_filter|ed" and a path folded over 5 lines: no word is broken, a
        # path is cut on one line keeping its file name's end.
        assert "content_filtered:" in text, (args, text)
        outputs = [row[header.index("output / error")] for row in cells[1:]]
        paths = [cell for cell in outputs if "://" in cell or cell.startswith("…/")]
        assert len(paths) >= 2 and all(p.endswith(".mp4") for p in paths), (args, text)
