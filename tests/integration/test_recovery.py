"""Jobs stranded by a crash are put back on their way by the job store, not the broker."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery

from producer import JobStatus, VideoRequest
from tests.integration.conftest import UNACKED, Stack
from tests.integration.helpers import wait_for, wait_status
from tests.integration.test_cli import run
from videoqueue import keys, namespace
from videoqueue.jobstore import JobStore
from videoqueue.recovery import recover_stranded
from videoqueue.settings import Settings
from worker import sweep

pytestmark = pytest.mark.integration


def test_a_poll_lost_with_a_killed_worker_is_recovered_by_the_sweep(local_stack: Stack) -> None:
    # SWEEP_INTERVAL_S=0: the doomed worker does not sweep, so only its replacement recovers.
    doomed = local_stack.start_worker(SWEEP_INTERVAL_S="0")
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="rendering when the worker dies [sim:latency=4]"))
    wait_status(vq, job.id, {"running"})
    doomed.kill()  # it held the countdown poll message, unacknowledged
    held: int = local_stack.redis.hlen(UNACKED)  # type: ignore[assignment]
    assert held >= 1  # the broker would give it back only after ~36 min

    # A sweep every second, taking back a job 2 s overdue (defaults 60 s and 60 s): the
    # recovery happens within the test.
    local_stack.start_worker(SWEEP_INTERVAL_S="1", RECOVER_AFTER_S="2")
    done = vq.wait([job.id], timeout=60)[0]

    assert done.status is JobStatus.SUCCEEDED
    assert done.recoveries >= 1
    assert local_stack.simulator.stats()["creates_total"] == 1


def test_videoqueue_recover_puts_stranded_jobs_back_once(local_stack: Stack) -> None:
    # No worker sweeps (SWEEP_INTERVAL_S=0): only `videoqueue recover` may recover the jobs.
    doomed = local_stack.start_worker(SWEEP_INTERVAL_S="0")
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"stranded {i} [sim:latency=3]") for i in range(3)])
    for job in jobs:
        wait_status(vq, job.id, {"running"})
    doomed.kill()

    def all_overdue() -> bool:
        return "would recover 3" in run(local_stack, "recover", "--after", "5", "--dry-run").stdout

    wait_for(all_overdue, 30, "three overdue jobs")
    first = run(local_stack, "recover", "--after", "5")
    assert first.returncode == 0, first.stderr
    assert "recovered 3 (3 running)" in first.stdout
    again = run(local_stack, "recover", "--after", "5")
    assert "recovered 0" in again.stdout  # each stall is recovered once, then given time

    local_stack.start_worker(SWEEP_INTERVAL_S="0")
    done = vq.wait([j.id for j in jobs], timeout=60)
    assert all(j.status is JobStatus.SUCCEEDED and j.recoveries == 1 for j in done)
    assert local_stack.simulator.stats()["creates_total"] == 3


def test_a_job_queued_with_no_message_at_all_is_submitted_by_the_sweep(local_stack: Stack) -> None:
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="message lost before any worker saw it"))
    local_stack.redis.delete(namespace.queue("submit"))  # the broker lost it (no AOF, a crash...)
    local_stack.start_worker(SWEEP_INTERVAL_S="1", RECOVER_AFTER_S="1")  # recovery within the test
    done = vq.wait([job.id], timeout=60)[0]
    assert done.status is JobStatus.SUCCEEDED and done.recoveries == 1


def test_one_worker_sweeps_at_a_time_and_frees_the_lock_after(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """worker/sweep.py's lock (redis-py's Lock): a sweep while another holds it does nothing
    and leaves that lock alone; a sweep that ran releases its own."""
    ran: list[int] = []
    recover = recover_stranded

    def counted(*args: Any, **kwargs: Any) -> Any:
        ran.append(1)
        return recover(*args, **kwargs)

    monkeypatch.setattr(sweep, "recover_stranded", counted)
    redis_client.delete(keys.SWEEP_LOCK)
    store = JobStore(redis_client)
    app = Celery("sweep-lock-test", broker="memory://")
    settings = Settings(_env_file=None, sweep_interval_s=30)
    held = redis_client.lock(keys.SWEEP_LOCK, timeout=30)
    assert held.acquire(blocking=False)
    assert sweep.sweep_once(app, store, settings) == 0
    assert ran == [] and held.owned(), "no sweep under another's lock, and that lock stays"
    held.release()
    assert sweep.sweep_once(app, store, settings) == 0  # nothing stranded here
    assert ran == [1]
    assert not redis_client.exists(keys.SWEEP_LOCK), "the sweep released its lock"
