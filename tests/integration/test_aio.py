"""The asyncio producer (`AsyncVideoQueue`, producer/aio.py) against real worker processes,
the real Redis and the simulator over HTTP: submit, wait, cancel and follow the event
stream from async code, as a FastAPI or aiohttp handler would."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from pathlib import Path

import pytest

from producer import InvalidRequestError, JobStatus
from producer.aio import AsyncVideoQueue
from tests.integration.conftest import Stack
from tests.integration.helpers import local_path
from videoqueue.events import START, JobEvent
from videoqueue.job import JobRecord

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]


async def _until(vq: AsyncVideoQueue, job_id: str, status: JobStatus, timeout: float = 60) -> JobEvent:
    """The first event of `job_id` entering `status`, from the oldest kept on."""
    async for event in vq.events(START, job_ids=[job_id], block=timeout):
        if event.status is status:
            return event
    raise AssertionError(f"{job_id} did not reach {status} within {timeout} s")


async def test_submit_wait_and_cancel_from_async_code(local_stack: Stack) -> None:
    local_stack.start_worker()
    async with AsyncVideoQueue(queue=local_stack.queue()) as vq:
        one = await vq.submit({"prompt": "an async fox"})
        two, held = await vq.submit_many(
            [{"prompt": "an async hare", "client_job_id": "aio-2"}, {"prompt": "held [sim:hold]"}]
        )
        # The same client job id and request again: the stored job, not a second one.
        [again] = await vq.submit_many([{"prompt": "an async hare", "client_job_id": "aio-2"}])
        assert again.id == two.id
        with pytest.raises(InvalidRequestError) as refused:
            await vq.submit({"prompt": "x", "image_url": "http://127.0.0.1:1/a.png"})
        assert "image_url" in refused.value.problems

        await _until(vq, held.id, JobStatus.RUNNING)
        requested = await vq.cancel(held.id)
        assert requested.cancel_requested
        updates: list[list[JobRecord]] = []
        done = await vq.wait([one.id, two.id, held.id], timeout=60, on_update=updates.append)

        assert [j.status for j in done] == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED, JobStatus.CANCELLED]
        for job in done[:2]:
            assert job.output_uri and Path(local_path(job.output_uri)).is_file()
        assert updates and updates[-1] == done
        assert {j.id for j in await vq.list(limit=10)} == {one.id, two.id, held.id}
        assert await vq.get(one.id) == local_stack.queue().get(one.id)


async def test_events_are_resumable_from_an_event_id(local_stack: Stack) -> None:
    local_stack.start_worker()
    async with AsyncVideoQueue(queue=local_stack.queue()) as vq:
        job = await vq.submit({"prompt": "followed"})
        await vq.wait([job.id], timeout=60)
        # Every change is in the stream; the first is the one the async store wrote.
        seen = [e async for e in vq.events(START, job_ids=[job.id], block=1)]
        assert seen[0].status is JobStatus.QUEUED and seen[0].old_status is None
        assert seen[-1].status is JobStatus.SUCCEEDED and seen[-1].output_uri
        assert all(e.old_status is p.status for p, e in pairwise(seen))
        # From the id of any event on: the ones after it, and nothing more.
        resumed = [e async for e in vq.events(seen[1].id, job_ids=[job.id], block=1)]
        assert resumed == seen[2:]
        # From now on (no `since`): only what comes after, here another job's changes.
        later = await vq.submit({"prompt": "after"})
        follow = vq.events(job_ids=[later.id, job.id], block=30)
        first = await anext(aiter(follow))
        await follow.aclose()
        assert first.job_id == later.id


async def test_a_batch_from_async_code_ends_as_a_sync_one(local_stack: Stack) -> None:
    local_stack.start_worker()
    sync = local_stack.queue()
    async with AsyncVideoQueue(queue=sync) as vq:
        batch = await vq.submit_batch([{"prompt": f"async scene {i}"} for i in range(3)], name="aio")
        assert (batch.name, batch.size) == ("aio", 3)
        done = await asyncio.to_thread(sync.wait_batch, batch.id, 90)
        assert done.done and done.counts["succeeded"] == 3
        assert (await vq.batch(batch.id)) == done
