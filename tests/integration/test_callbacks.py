"""Provider callbacks end to end: the simulator calls back (over HTTP) the receiver run as
`videoqueue callbacks` (a real process), which sends the poll to real `celery worker`
processes. A callback only hastens the poll: a forged or lying one changes nothing.

Unless a test says otherwise the safety-net poll (CALLBACK_SAFETY_POLL_S) is 300 s: a job
that ends within the tests' timeouts (60 s) was ended by its callback, not by a regular poll.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest

from producer import JobStatus, VideoRequest
from simulator.stack import ManagedProcess, free_port, http_ok, wait_until
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_final, wait_for, wait_status
from worker.callback_url import callback_token

pytestmark = pytest.mark.integration

SECRET = "integration-callback-secret-7f3a"
SAFETY_S = "300"


class Receiver:
    """`videoqueue callbacks` on `port`, with the stack's settings."""

    def __init__(self, stack: Stack, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        cli = str(Path(sys.executable).with_name("videoqueue"))
        argv = [cli, "callbacks", "--port", str(port), "--host", "127.0.0.1"]
        self.process = ManagedProcess("callbacks", argv, stack.env(), stack.log_dir / "callbacks.log")
        wait_until(lambda: http_ok(f"{self.url}/healthz") or not self.process.alive(), 30, "callback receiver")
        assert self.process.alive(), self.process.log_text()

    def post(self, job_id: str, body: object, token: str | None = None) -> httpx.Response:
        token = callback_token(SECRET, job_id) if token is None else token
        return httpx.post(f"{self.url}/callbacks/byteplus/{job_id}/{token}", json=body, timeout=10)


def with_callbacks(stack: Stack, safety_s: str = SAFETY_S) -> Receiver:
    """Turn callbacks on for the stack's processes and start the receiver they point at."""
    port = free_port()
    stack.extra_env.update(
        {
            "CALLBACK_BASE_URL": f"http://127.0.0.1:{port}",
            "CALLBACK_SECRET": SECRET,
            "CALLBACK_SAFETY_POLL_S": safety_s,
        }
    )
    receiver = Receiver(stack, port)
    stack.workers.append(receiver.process)  # stopped with the stack
    return receiver


def status_calls(stack: Stack, task_id: str | None) -> int:
    polls: dict[str, int] = httpx.get(f"{stack.simulator.url}/_sim/polls", timeout=5).json()
    return polls.get(str(task_id), 0)


def test_a_callback_ends_the_job_without_waiting_for_the_next_poll(local_stack: Stack) -> None:
    with_callbacks(local_stack)
    local_stack.start_worker()
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"callback {n}") for n in range(3)])
    # Each render takes 1 s; the first regular poll would come 240-360 s after submit.
    records = wait_final(vq.store, [j.id for j in jobs], timeout=60)
    for record in records:
        assert record is not None and record.status is JobStatus.SUCCEEDED, record
        # One status call: the one the callback's poll made; and the job ended before its
        # first regular poll could have come (300 s -20 % jitter after submit).
        assert status_calls(local_stack, record.provider_task_id) == 1
        assert record.finished_at and record.submitted_at
        assert (record.finished_at - record.submitted_at).total_seconds() < 240
    assert local_stack.simulator.stats()["callbacks_sent_total"] >= 3


def test_a_forged_callback_is_refused_and_changes_nothing(local_stack: Stack) -> None:
    receiver = with_callbacks(local_stack)
    local_stack.start_worker()
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="forged [sim:latency=8]"))
    running = wait_status(vq, job.id, {"running"}, timeout=30)
    body = {"id": running.provider_task_id, "status": "succeeded"}
    assert receiver.post(job.id, body, token=callback_token("not-the-secret", job.id)).status_code == 403
    assert receiver.post(job.id, body, token="x" * 43).status_code == 403
    time.sleep(1.0)  # time for a poll, had one been sent
    assert vq.get(job.id) == running
    assert status_calls(local_stack, running.provider_task_id) == 0
    # The real one, when the task ends, still does.
    done = wait_status(vq, job.id, {"succeeded", "failed"}, timeout=60)
    assert done.status is JobStatus.SUCCEEDED


def test_a_lying_callback_with_a_good_token_changes_nothing(local_stack: Stack) -> None:
    receiver = with_callbacks(local_stack)
    worker = local_stack.start_worker()
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="lied about [sim:latency=20]"))
    running = wait_status(vq, job.id, {"running"}, timeout=30)
    task_id = running.provider_task_id
    # No worker while the lies come: their poll waits, so the second one is a true duplicate
    # (once a poll has run and advanced poll_seq, a new callback may send the next one).
    worker.stop()

    # Another task's end: not the job's task, no poll.
    assert receiver.post(job.id, {"id": "cgt-someone-else", "status": "succeeded"}).status_code == 202
    # The job's task "succeeded" while the provider says running: a poll is sent (only
    # the status call can tell), once, however often the lie is told.
    lie = {"id": task_id, "status": "succeeded", "content": {"video_url": "http://attacker/v.mp4"}}
    assert receiver.post(job.id, lie).status_code == 200
    assert receiver.post(job.id, lie).status_code == 202
    local_stack.start_worker()
    wait_for(lambda: status_calls(local_stack, task_id) == 1, 20, "the poll the lie sent")
    wait_for(lambda: vq.get(job.id).poll_seq > running.poll_seq, 20, "that poll to schedule the next")
    time.sleep(1.0)
    after = vq.get(job.id)
    assert after.status is JobStatus.RUNNING and after.video_url is None
    assert status_calls(local_stack, task_id) == 1  # one poll chain: the duplicate sent none

    # When the provider really finishes, its callback ends the job.
    done = wait_status(vq, job.id, {"succeeded", "failed"}, timeout=60)
    assert done.status is JobStatus.SUCCEEDED
    assert done.video_url != lie["content"]["video_url"]  # type: ignore[index]
    assert status_calls(local_stack, task_id) == 2


def test_with_30_percent_of_callbacks_lost_the_safety_net_ends_every_job(local_stack: Stack) -> None:
    # A 3 s safety net instead of minutes: the jobs whose callback was lost are then found
    # by their regular poll within seconds, which is what this test is about.
    with_callbacks(local_stack, safety_s="3")
    local_stack.simulator.configure(callback_loss_rate=0.3)
    local_stack.start_worker(concurrency=4)
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"lossy {n}") for n in range(20)])
    records = wait_final(vq.store, [j.id for j in jobs], timeout=90)
    assert [r.status if r else None for r in records] == [JobStatus.SUCCEEDED] * 20
    # 40 callbacks at 30 %: none lost once in a million runs.
    assert local_stack.simulator.stats()["callbacks_lost_total"] > 0
