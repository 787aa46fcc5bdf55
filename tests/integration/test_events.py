"""The event stream (videoqueue.events) with a real worker on real Redis: every status
change of a job is one event, in order, final ones with cost, output or error;
`VideoQueue.events` resumes from an event id; `videoqueue watch` follows a job to its end;
`wait` rides on the stream."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from producer import WaitTimeoutError
from tests.integration.conftest import Stack
from videoqueue import events
from videoqueue.events import JobEvent
from videoqueue.job import ErrorCode, JobStatus

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("videoqueue"))


def until_final(follow: object, job_id: str) -> list[JobEvent]:
    """The events of `follow` (an iterator of JobEvent) up to the job's final one."""
    seen: list[JobEvent] = []
    for event in follow:  # type: ignore[attr-defined]
        assert event.job_id == job_id
        seen.append(event)
        if event.final:
            return seen
    raise AssertionError(f"no final event of {job_id} within the block time; saw {seen}")


def assert_a_chain(seen: list[JobEvent]) -> None:
    """Each event starts where the one before ended; the first is the job's creation."""
    assert (seen[0].old_status, seen[0].status) == (None, JobStatus.QUEUED)
    for before, after in zip(seen, seen[1:], strict=False):
        assert after.old_status is before.status
        assert events.order(after.id) > events.order(before.id)
        assert after.at >= before.at


def test_a_job_life_is_one_event_per_status_change_and_the_last_carries_cost_and_uri(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    follow = vq.events(block=60)  # new events only, from this call on
    job = vq.submit({"prompt": "a fox [sim:latency=1]"})
    seen = until_final(vq.events("0", job_ids=[job.id], block=60), job.id)
    assert_a_chain(seen)
    assert [e.status for e in seen][:2] == [JobStatus.QUEUED, JobStatus.SUBMITTING]
    assert (seen[-2].status, seen[-1].status) == (JobStatus.DOWNLOADING, JobStatus.SUCCEEDED)
    record = vq.get(job.id)
    assert (seen[-1].cost_usd, seen[-1].output_uri, seen[-1].error) == (record.cost_usd, record.output_uri, None)
    assert record.cost_usd is not None and record.cost_usd > 0
    # The follower made before the submit saw the same events; each event once.
    assert until_final(follow, job.id) == seen
    assert len(vq.store.redis.xrange(events.keys.EVENTS_STREAM)) == len(seen)


def test_a_failed_job_event_carries_its_error_and_events_resume_from_an_id(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    job = vq.submit({"prompt": "unsafe [sim:fail]"})
    seen = until_final(vq.events("0", job_ids=[job.id], block=60), job.id)
    assert_a_chain(seen)
    last = seen[-1]
    assert last.status is JobStatus.FAILED and last.error is not None
    assert last.error.code is ErrorCode.CONTENT_FILTERED
    assert last.error.message == vq.get(job.id).error.message  # type: ignore[union-attr]
    # From an event id on: the ones after it, then nothing more (block 0.5 s ends the read).
    assert list(vq.events(seen[0].id, job_ids=[job.id], block=0.5)) == seen[1:]
    assert list(vq.events(seen[-1].id, block=0.5)) == []
    # `wait` on a job that ended returns at once with its record.
    assert vq.wait([job.id], timeout=5)[0].status is JobStatus.FAILED


def run(stack: Stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], env=stack.env(), capture_output=True, text=True, timeout=timeout, check=False)


def test_watch_follows_named_jobs_and_exits_when_they_end(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    since = events.newest_id(vq.store.redis)
    # Ten seconds at the provider: the watch below starts while the job still runs.
    job = vq.submit({"prompt": "a slow fox [sim:latency=10]"})
    watched = run(local_stack, "watch", job.id[:8], timeout=90)
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert lines and lines[-1].split()[1:] == [job.id, "downloading", "->", "succeeded", *lines[-1].split()[5:]]
    assert "cost=$" in lines[-1] and "output=file://" in lines[-1]
    # Replayed from before the submit, as JSON lines: the whole life, then it exits.
    replayed = run(local_stack, "watch", job.id, "--json", "--since", since, timeout=30)
    assert replayed.returncode == 0, replayed.stderr
    objects = [json.loads(text) for text in replayed.stdout.splitlines()]
    assert [(o["old_status"], o["status"]) for o in objects][0] == (None, "queued")
    assert objects[-1]["status"] == "succeeded" and objects[-1]["output_uri"] == vq.get(job.id).output_uri
    # A job that has ended: named on stderr, nothing to follow.
    again = run(local_stack, "watch", job.id, timeout=30)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", f"{job.id} already succeeded\n")
    refused = run(local_stack, "watch", job.id, "--all")
    assert refused.returncode == 2 and "not both" in refused.stderr


def test_wait_returns_every_record_in_order_and_times_out_with_them(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=4)
    vq = local_stack.queue()
    slow = vq.submit({"prompt": "slow [sim:latency=30]"})
    jobs = vq.submit_many([{"prompt": f"fox {i} [sim:latency=1]"} for i in range(5)])
    ids = [j.id for j in jobs]
    updates: list[list[str]] = []
    done = vq.wait([*ids, ids[0]], timeout=120, on_update=lambda rs: updates.append([r.status.value for r in rs]))
    assert [r.id for r in done] == [*ids, ids[0]]
    assert all(r.status is JobStatus.SUCCEEDED for r in done)
    assert updates[-1] == ["succeeded"] * 6 and len(updates) >= 2
    with pytest.raises(WaitTimeoutError) as timed_out:
        vq.wait([ids[0], slow.id], timeout=1)
    assert [r.id for r in timed_out.value.jobs] == [ids[0], slow.id]
    assert not timed_out.value.jobs[1].status.is_final
    vq.cancel(slow.id)
