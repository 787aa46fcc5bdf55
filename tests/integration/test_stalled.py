"""A job whose worker died shows as stalled in `status` and `jobs`, and the sweep's rule
(`recover --dry-run`) counts it: one rule, videoqueue.stalled."""

from __future__ import annotations

import json

import pytest

from producer import VideoRequest
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_for, wait_status
from tests.integration.test_cli import run

pytestmark = pytest.mark.integration


def test_a_job_whose_worker_was_killed_mid_poll_shows_stalled_and_is_counted(local_stack: Stack) -> None:
    """Seen: after a `kill -9` a job showed `running` for 7 minutes, and `recover --dry-run`
    said 0 until the job was 300 s overdue."""
    # The CLI and the worker read the same rule: floor 5 s, polls every 1-2 s.
    local_stack.extra_env.update(RECOVER_AFTER_S="5", POLL_SCHEDULE="backoff", POLL_MIN_S="1", POLL_MAX_S="2")
    doomed = local_stack.start_worker(SWEEP_INTERVAL_S="0")
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="rendering for long [sim:latency=600]"))
    wait_status(vq, job.id, {"running"})
    wait_for(lambda: vq.get(job.id).poll_seq >= 2, 60, "a second poll")
    doomed.kill()  # the next poll dies with it (held, unacknowledged, until the visibility timeout)

    def shown_stalled() -> bool:
        # Piped: the status field stays the plain status, `stalled_s` (last column) says it.
        header, line = run(local_stack, "status", job.id).stdout.splitlines()
        row = dict(zip(header.split("\t"), line.split("\t"), strict=True))
        assert row["status"] == "running", row
        return row["stalled_s"] != ""

    wait_for(shown_stalled, 120, "status to show the job stalled")
    [status] = json.loads(run(local_stack, "status", job.id, "--json").stdout)  # always a list
    assert status["status"] == "running"  # a display state, not a lifecycle state
    assert status["stalled_s"] > 5
    listed = run(local_stack, "jobs", "--json")
    assert next(j["stalled_s"] for j in json.loads(listed.stdout) if j["id"] == job.id) > 5
    piped = [line.split("\t") for line in run(local_stack, "jobs").stdout.splitlines()]
    assert piped[0][-1] == "stalled_s" and int(next(r for r in piped if r[0] == job.id)[-1]) > 5

    dry = run(local_stack, "recover", "--dry-run")
    assert "would recover 1 (1 running)" in dry.stdout, dry.stdout
    assert job.id in dry.stdout
    assert vq.get(job.id).recoveries == 0  # a dry run changes nothing
