"""The `videoqueue` command as a user runs it, against real Redis and a real worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Stack
from tests.integration.helpers import wait_status
from videoqueue import keys, namespace

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("videoqueue"))


def run(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=stack.env(), capture_output=True, text=True, timeout=timeout, check=False)


def _queue_state(stack: Stack) -> tuple[Any, ...]:
    r = stack.redis
    names: list[str] = r.keys(f"{keys.PREFIX}*")  # type: ignore[assignment]
    return (sorted(names), *(r.llen(queue) for queue in namespace.queues()))


def test_submit_wait_status_jobs(local_stack: Stack) -> None:
    local_stack.start_worker()
    submitted = run(
        local_stack, "submit", "a fox [sim:latency=1]", "--duration", "6", "--ratio", "9:16", "--no-audio", "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    [record] = json.loads(submitted.stdout)
    assert record["status"] == "queued"
    assert record["request"]["duration"] == 6 and record["request"]["audio"] is False
    job_id = record["id"]

    waited = run(local_stack, "wait", job_id, "--timeout", "60", "--json")
    assert waited.returncode == 0, waited.stderr
    final = json.loads(waited.stdout)[0]
    for key in (
        "id", "status", "provider", "model", "request", "provider_task_id", "attempts",
        "cost_estimate_usd", "cost_usd", "output_uri", "error", "created_at", "updated_at", "finished_at",
    ):  # fmt: skip
        assert key in final
    assert final["status"] == "succeeded" and final["cost_usd"] == final["cost_estimate_usd"] > 0
    assert f"{job_id} succeeded" in waited.stderr  # plain progress lines when not a terminal

    status = run(local_stack, "status", job_id, "--json")
    assert json.loads(status.stdout)[0]["output_uri"] == final["output_uri"]
    listed = run(local_stack, "jobs", "--status", "succeeded", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)] == [job_id]
    table = run(local_stack, "jobs")
    assert job_id in table.stdout and "succeeded" in table.stdout


def test_wait_exits_non_zero_when_a_job_fails(local_stack: Stack) -> None:
    local_stack.start_worker()
    ok = run(local_stack, "submit", "fine").stdout.strip()
    bad = run(local_stack, "submit", "unsafe [sim:fail]").stdout.strip()
    waited = run(local_stack, "wait", ok, bad, "--timeout", "60")
    assert waited.returncode == 1
    assert "content_filtered" in waited.stdout


def test_jsonl_file_enqueues_one_job_per_line(local_stack: Stack, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "one"}\n\n{"prompt": "two", "duration": 8}\n{"prompt": "three", "ratio": "1:1"}\n')
    result = run(local_stack, "submit", "--file", str(jobs))
    assert result.returncode == 0, result.stderr
    ids = result.stdout.split()
    assert len(ids) == 3
    assert local_stack.redis.llen(namespace.queue("submit")) == 3


def test_a_bad_jsonl_line_enqueues_nothing(local_stack: Stack, tmp_path: Path) -> None:
    run(local_stack, "submit", "already here")
    before = _queue_state(local_stack)
    jobs = tmp_path / "jobs.jsonl"
    lines = ['{"prompt": "fine"}', '{"prompt": "x", "duration": 99}', "not json", '{"prompt": "ok", "colour": "red"}']
    jobs.write_text("\n".join(lines) + "\n")
    result = run(local_stack, "submit", "--file", str(jobs))
    assert result.returncode == 2
    assert "line 2: duration" in result.stderr
    assert "line 3: not valid JSON" in result.stderr
    assert "line 4: colour: unknown field" in result.stderr
    assert "nothing was enqueued" in result.stderr
    assert _queue_state(local_stack) == before


def test_unknown_job_ids_are_errors(local_stack: Stack) -> None:
    for command in (["status"], ["wait", "--timeout", "1"], ["cancel"]):
        result = run(local_stack, *command, "no-such-job")
        assert result.returncode == 2, command
        assert "unknown job id(s): no-such-job" in result.stderr


def test_bad_options_name_the_field_and_enqueue_nothing(local_stack: Stack) -> None:
    before = _queue_state(local_stack)
    for args, message in [
        (["", "--duration", "5"], "prompt: must not be empty"),
        (["fox", "--duration", "3"], "duration: 3 s is not supported"),
        (["fox", "--provider", "sora"], "provider: unknown provider 'sora'"),
        (["fox", "--resolution", "8k"], "resolution: '8k' is not supported"),
        (["fox", "--seed", "-5"], "seed: Input should be greater than or equal to 0"),
        (["fox", "--image-url", "file:///etc/passwd"], "image_url: must be an http"),
    ]:
        result = run(local_stack, "submit", *args)
        assert result.returncode == 2, (args, result.stdout)
        assert message in result.stderr, (args, result.stderr)
    assert _queue_state(local_stack) == before


def test_cancel_from_the_cli(local_stack: Stack) -> None:
    local_stack.start_worker()
    job_id = run(local_stack, "submit", "held [sim:hold]").stdout.strip()
    vq = local_stack.queue()
    wait_status(vq, job_id, {"running"})
    result = run(local_stack, "cancel", job_id)
    assert result.returncode == 0 and job_id in result.stdout
    assert vq.wait([job_id], timeout=30)[0].status.value == "cancelled"


def test_veo_from_the_cli_and_the_model_table(local_stack: Stack) -> None:
    local_stack.start_worker()
    submitted = run(local_stack, "submit", "a veo fox", "--provider", "veo", "--duration", "6", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)[0]["id"]
    waited = run(local_stack, "wait", job_id, "--timeout", "60", "--json")
    assert waited.returncode == 0, waited.stderr
    final = json.loads(waited.stdout)[0]
    assert (final["model"], final["billed_units"], final["cost_usd"]) == ("veo-3.1-fast-generate-001", 6, 0.6)

    table = run(local_stack, "models")
    assert table.returncode == 0
    for model in ("seedance-1-5-pro-251215", "seedance-1-0-pro-fast-251015", "veo-3.1-generate-001"):
        assert model in table.stdout
    assert "720p $0.10/s ($0.08/s silent)" in table.stdout
    as_json = json.loads(run(local_stack, "models", "--json").stdout)
    assert as_json["veo-3.1-generate-001"]["price"]["usd_per_second"]["4k"] == {"audio": "0.6", "silent": "0.4"}
