"""`videoqueue submit` warns (one line on stderr, exit 0, jobs enqueued) when no worker
consumes the submit queue. Seen: after `make demo` stopped its worker, a job submitted sat
`queued` with no word of why."""

from __future__ import annotations

import pytest

from simulator.stack import start_worker
from tests.integration.conftest import Stack
from tests.integration.test_cli import run
from videoqueue import namespace

pytestmark = pytest.mark.integration

WARNING = "warning: no worker consumes "  # then the submit queue's name


def test_submit_with_no_worker_warns_and_still_enqueues(local_stack: Stack) -> None:
    result = run(local_stack, "submit", "nobody is listening")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(WARNING), result.stderr
    assert local_stack.queue().get(job_id).status.value == "queued"


def test_submit_with_a_worker_does_not_warn(local_stack: Stack) -> None:
    local_stack.start_worker()
    result = run(local_stack, "submit", "someone is listening [sim:latency=0.5]")
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert local_stack.queue().wait([result.stdout.strip()], timeout=60)[0].status.value == "succeeded"


def test_a_worker_on_other_queues_only_does_not_count(local_stack: Stack) -> None:
    worker = start_worker(
        "polls-only", local_stack.env(), local_stack.log_dir, queues=[namespace.queue("poll"), namespace.queue("store")]
    )
    local_stack.workers.append(worker)
    result = run(local_stack, "submit", "only pollers are listening")
    assert result.returncode == 0, result.stderr
    assert WARNING in result.stderr
