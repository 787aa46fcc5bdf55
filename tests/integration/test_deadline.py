"""A job ends the way the provider says (issue 11), through real worker processes, the
real SDKs and the simulator over HTTP.

Most tests here make the first poll come late on purpose (POLL_INITIAL_S=30 against a
JOB_DEADLINE_S of 8 s): the poll then runs at the deadline, and what it must do first is
ask the provider. The last two tests run every setting at its default (default_stack), one per
provider, on a cold fleet (no render history).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import ErrorCode, JobStatus, VideoRequest
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_for
from videoqueue.ledger import Ledger

pytestmark = pytest.mark.integration

DEADLINE_S = 8.0
# The first poll is due long after the deadline, so it is cut to the deadline.
LATE_FIRST_POLL = {"POLL_INITIAL_S": "30", "POLL_MAX_S": "60", "JOB_DEADLINE_S": str(DEADLINE_S)}


def _late_worker(stack: Stack) -> None:
    stack.start_worker(2, **LATE_FIRST_POLL)


def test_a_task_that_succeeded_before_the_deadline_but_was_polled_after_it_is_stored_and_billed(
    local_stack: Stack,
) -> None:
    _late_worker(local_stack)
    vq = local_stack.queue(job_deadline_s=DEADLINE_S)
    job = vq.submit(VideoRequest(prompt="quick one [sim:latency=2]", duration=5))

    done = vq.wait([job.id], timeout=40)[0]

    assert done.status is JobStatus.SUCCEEDED, (done.error, done.notes)
    assert done.output_uri is not None and done.cost_usd is not None and done.cost_usd > 0
    assert done.past_deadline_at is not None
    assert any("before the deadline" in note for note in done.notes)
    ledger = Ledger(local_stack.redis).entries()
    assert [e.job_id for e in ledger] == [job.id] and ledger[0].actual_usd == done.cost_usd
    stats = local_stack.simulator.stats()
    assert stats["deletes_total"] == 0  # the paid task was never deleted
    assert done.provider_task_id is not None
    assert local_stack.simulator.task(done.provider_task_id)["status"] == "succeeded"


def test_a_task_that_failed_fast_ends_failed_with_the_provider_code(local_stack: Stack) -> None:
    _late_worker(local_stack)
    vq = local_stack.queue(job_deadline_s=DEADLINE_S)
    job = vq.submit(VideoRequest(prompt="moderated [sim:fail] [sim:latency=1]"))

    done = vq.wait([job.id], timeout=40)[0]

    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.code is ErrorCode.CONTENT_FILTERED
    assert done.error.provider_code == "OutputVideoSensitiveContentDetected"
    assert Ledger(local_stack.redis).entries() == []  # a failed task is not billed
    assert local_stack.simulator.stats()["deletes_total"] == 0


@pytest.mark.parametrize(
    ("markers", "code", "provider_code"),
    [
        ("[sim:fail]", ErrorCode.CONTENT_FILTERED, "RAI_MEDIA_FILTERED"),  # the safety filter
        ("[sim:fail=INVALID_ARGUMENT]", ErrorCode.INVALID_REQUEST, "3"),  # a failed operation
    ],
)
def test_a_veo_operation_that_ended_badly_ends_failed_not_expired(
    local_stack: Stack, markers: str, code: ErrorCode, provider_code: str
) -> None:
    _late_worker(local_stack)
    vq = local_stack.queue(job_deadline_s=DEADLINE_S)
    job = vq.submit(VideoRequest(prompt=f"veo {markers} [sim:latency=1]", provider="veo", duration=4))

    done = vq.wait([job.id], timeout=40)[0]

    assert done.status is JobStatus.FAILED
    assert done.error is not None and done.error.code is code
    assert done.error.provider_code == provider_code


def test_a_task_still_queued_at_the_deadline_is_cancelled_at_the_provider_and_expires(local_stack: Stack) -> None:
    _late_worker(local_stack)
    vq = local_stack.queue(job_deadline_s=DEADLINE_S)
    job = vq.submit(VideoRequest(prompt="never starts [sim:hold]"))

    done = vq.wait([job.id], timeout=40)[0]

    assert done.status is JobStatus.EXPIRED
    assert done.error is not None and done.error.code is ErrorCode.DEADLINE
    assert "cancelled there" in done.error.message
    assert done.provider_task_id is not None
    assert local_stack.simulator.task(done.provider_task_id)["status"] == "cancelled"
    assert Ledger(local_stack.redis).entries() == []


def test_a_task_rendering_at_the_deadline_is_followed_to_its_end_stored_and_billed(local_stack: Stack) -> None:
    _late_worker(local_stack)
    vq = local_stack.queue(job_deadline_s=DEADLINE_S)
    job = vq.submit(VideoRequest(prompt="slow render [sim:latency=14]"))

    wait_for(lambda: vq.get(job.id).past_deadline_at is not None, DEADLINE_S + 6, "the deadline poll")
    running = vq.get(job.id)
    assert running.status is JobStatus.RUNNING and running.past_deadline_at is not None
    assert any("followed to its end" in note for note in running.notes)
    done = vq.wait([job.id], timeout=60)[0]

    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.output_uri is not None and done.cost_usd is not None
    [entry] = Ledger(local_stack.redis).entries()
    assert entry.actual_usd == done.cost_usd
    assert local_stack.simulator.stats()["deletes_total"] == 0
    status = subprocess.run(
        [str(Path(sys.executable).with_name("videoqueue")), "status", job.id],
        env=local_stack.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0 and "succeeded" in status.stdout
    assert f"note {job.id}:" in status.stderr and "followed to its end" in status.stderr


def test_identical_requests_with_a_fixed_seed_and_lost_create_answers_each_get_their_own_task(
    local_stack: Stack,
) -> None:
    # Every create answers after 3 s and our client gives up after 1 s: the task exists
    # but its id is lost. Six identical requests with one seed: each job's lookup must find
    # its own task (the listing echoes parameters, not prompts), never a neighbour's.
    local_stack.start_worker(concurrency=3, PROVIDER_TIMEOUT_S="1")
    vq = local_stack.queue()
    prompt = "same shot [sim:slowcreate=3]"
    jobs = vq.submit_many([VideoRequest(prompt=prompt, seed=7, duration=5) for _ in range(6)])

    done = vq.wait([j.id for j in jobs], timeout=120)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 6, [j.error for j in done]
    tasks = [j.provider_task_id for j in done]
    assert len(set(tasks)) == 6
    stats = local_stack.simulator.stats()
    assert stats["creates_by_prompt"] == {prompt: 6}  # no task made twice
    assert sum(j.uncertain_creates for j in done) == 0
    assert all(j.attempts == 1 for j in done)


@pytest.mark.parametrize(
    ("provider", "extra"),
    [("byteplus", {}), ("veo", {"duration": 4})],
)
def test_a_cold_fleet_on_default_poll_settings_sees_a_fast_ending_in_seconds(
    default_stack: Stack, provider: str, extra: dict[str, Any]
) -> None:
    """Defaults as users get them: no render history, the cold schedule. A task that
    fails within a second and one that renders in 3 s are both seen within
    25% of their time + 3 s (plus the worker's own latency)."""
    assert not any(k.upper().startswith("POLL_") for k in default_stack.env())
    default_stack.start_worker()
    vq = default_stack.queue()
    jobs = vq.submit_many(
        [
            VideoRequest(prompt="fails at once [sim:fail] [sim:latency=1]", provider=provider, **extra),
            VideoRequest(prompt="fast model [sim:latency=3]", provider=provider, **extra),
        ]
    )

    failed, succeeded = vq.wait([j.id for j in jobs], timeout=60)

    assert failed.status is JobStatus.FAILED and succeeded.status is JobStatus.SUCCEEDED, (failed, succeeded)
    finished = httpx.get(f"{default_stack.simulator.url}/_sim/finished", timeout=5).json()
    # When the worker saw each ending: the failure's final move, the success's move to store.
    for seen, job, render_s in ((failed.finished_at, failed, 1.0), (succeeded.provider_done_at, succeeded, 3.0)):
        assert seen is not None and job.provider_task_id is not None
        delay = seen.timestamp() - finished[job.provider_task_id]
        assert delay <= 0.25 * render_s + 3 + 1.5, (job.id, delay)  # 1.5 s: message and worker latency
