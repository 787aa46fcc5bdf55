"""Polls that do not crowd out new work (issue 18, item 4): what a worker holds stays under
HELD_MESSAGES_MAX whatever the renders in flight, parked steps are sent on time by the park
timer, and a lost timer is repaired by the sweep. Real Redis, real `celery worker`
processes, the simulator over HTTP."""

from __future__ import annotations

import time

import pytest

from producer import JobStatus, VideoRequest
from tests.integration.conftest import UNACKED, Stack
from tests.integration.helpers import wait_for, wait_status
from videoqueue import keys, namespace
from videoqueue.parking import eta_task_limit

pytestmark = pytest.mark.integration

# Why the bound is shrunk: Celery's cap on held messages (worker_eta_task_limit, derived
# from HELD_MESSAGES_MAX) is 2,500 by default; showing a worker past it with the defaults
# would take thousands of renders in flight. With a bound of 10 the cap is 210: 250
# renders, each with its first poll 300 s away (all within a horizon of 600 s, so only the
# bound parks them), would hold the worker at the cap for those 300 s, taking nothing, if
# anything but the bound limited what it holds.
HELD_MAX = 10
RENDERS = 250


def test_a_worker_at_its_held_bound_with_many_renders_in_flight_still_takes_a_fresh_job(
    local_stack: Stack,
) -> None:
    local_stack.simulator.configure(concurrency_per_model=1000)
    local_stack.start_worker(
        concurrency=4,
        pool="threads",
        HELD_MESSAGES_MAX=str(HELD_MAX),
        COUNTDOWN_HORIZON_S="600",
        POLL_INITIAL_S="300",
        POLL_MIN_S="300",
        POLL_MAX_S="600",
    )
    vq = local_stack.queue()
    long_jobs = vq.submit_many([VideoRequest(prompt=f"long render {i} [sim:latency=900]") for i in range(RENDERS)])
    redis = local_stack.redis

    def all_running() -> bool:
        running: int = redis.zcard(keys.status_index(JobStatus.RUNNING))  # type: ignore[assignment]
        return running >= RENDERS

    # Past the first HELD_MAX, every first poll is parked: the worker keeps taking submits.
    wait_for(all_running, 180, f"{RENDERS} renders in flight")
    parked: int = redis.zcard(keys.PARKED_INDEX)  # type: ignore[assignment]
    assert parked >= RENDERS - HELD_MAX
    held: int = redis.hlen(UNACKED)  # type: ignore[assignment]
    assert held < eta_task_limit(HELD_MAX)

    # A fresh job is claimed and created (its own first poll is 300 s away too).
    fresh = vq.submit(VideoRequest(prompt="a fresh job [sim:latency=1]"))
    wait_status(vq, fresh.id, {"running"}, timeout=60)
    # Taken while every long render is still in flight, none yet polled.
    states = vq.get_many([job.id for job in long_jobs])
    assert all(state is not None and state.status is JobStatus.RUNNING for state in states)


def test_parked_polls_are_sent_when_due_by_the_timer_not_the_sweep(local_stack: Stack) -> None:
    # The sweep would only run after an hour: every parked step the jobs need is sent by the
    # park timer. A horizon of 0.5 s parks every poll (they are 1-3 s apart).
    local_stack.start_worker(
        SWEEP_INTERVAL_S="3600", COUNTDOWN_HORIZON_S="0.5", POLL_INITIAL_S="2", POLL_MIN_S="1", POLL_MAX_S="3"
    )
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"parked polls {i} [sim:latency=6]") for i in range(5)])
    done = vq.wait([job.id for job in jobs], timeout=120)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 5
    assert all(job.recoveries == 0 for job in done)
    worker_log = local_stack.workers[0].log_text()
    assert "wait parked in the job store" in worker_log
    assert "videoqueue.unpark" in worker_log
    assert not local_stack.redis.zcard(keys.PARKED_INDEX)


def test_a_lost_park_timer_is_repaired_by_the_sweep(local_stack: Stack) -> None:
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"parked, timer lost {i} [sim:latency=1]") for i in range(3)])
    # No worker yet: the jobs wait queued with their submit messages. Make them parked steps
    # whose timer message was lost: due in 8 s, parked, no message and no timer key.
    redis = local_stack.redis
    redis.delete(namespace.queue("submit"))
    due = time.time() + 8
    for job in jobs:
        redis.zadd(keys.DUE_INDEX, {job.id: due}, xx=True)
        redis.zadd(keys.PARKED_INDEX, {job.id: due})
    assert not redis.exists(keys.PARK_TIMER)

    worker = local_stack.start_worker(SWEEP_INTERVAL_S="2", COUNTDOWN_HORIZON_S="0.5")
    done = vq.wait([job.id for job in jobs], timeout=120)
    assert [job.status for job in done] == [JobStatus.SUCCEEDED] * 3
    assert "park timer armed by the sweep" in worker.log_text()
