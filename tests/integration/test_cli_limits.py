"""`videoqueue limits set` against a real Redis and a real worker: a raised limit admits the
jobs waiting for a slot at once, without restarting the worker; `videoqueue queue` shows
them waiting first."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from producer import JobRecord, JobStatus, VideoRequest
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("videoqueue"))
MODEL = "seedance-1-5-pro-251215"


def run(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    # The shell keeps the default limits (100 in flight), unlike the worker (1): `queue`
    # and `status` count with the limits the workers' admissions applied.
    env = stack.env()
    return subprocess.run([CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_raising_a_limit_admits_waiting_jobs_without_a_worker_restart(local_stack: Stack) -> None:
    # Renders of 20 s: the one job let in by the worker's own limit is still at the
    # provider when the raised limit must have let the others in.
    local_stack.simulator.configure(latency=20.0)
    local_stack.start_worker(concurrency=2, MAX_IN_FLIGHT_PER_MODEL="1")
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"waiting {i}", model=MODEL) for i in range(4)])
    ids = [j.id for j in jobs]

    def states() -> list[JobRecord]:
        return vq.get_many(ids)

    wait_for(
        lambda: (
            sum(r.status is JobStatus.RUNNING for r in states()) == 1
            and sum(r.queue_position is not None for r in states()) == 3
        ),
        60,
        "one job running and three waiting for a slot",
    )
    shown = run(local_stack, "queue", "--json")
    assert shown.returncode == 0, shown.stderr
    (room,) = json.loads(shown.stdout)
    assert room["model"] == MODEL and room["waiting"] == 3 and room["in_flight"] == 1 and room["max_in_flight"] == 1
    status = run(local_stack, "status", ids[-1], "--json")
    assert json.loads(status.stdout)[0]["waiting_reason"] == "in_flight_limit"

    raised_at = time.monotonic()
    result = run(local_stack, "limits", "set", MODEL, "--max-in-flight", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{MODEL}: in flight 4 (redis, fleet-wide)")
    wait_for(
        lambda: all(r.status is JobStatus.RUNNING for r in states()),
        15,
        "every job at the provider after the limit was raised",
    )
    # All running: none finished, so nothing but the raise freed quota.
    print(f"limits set: 3 waiting jobs at the provider {time.monotonic() - raised_at:.1f} s after the raise")

    done = vq.wait(ids, timeout=120)
    assert all(r.status is JobStatus.SUCCEEDED for r in done)
    assert local_stack.simulator.stats()["max_in_flight"] >= 2
