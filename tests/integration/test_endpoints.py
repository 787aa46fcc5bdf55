"""A job belongs to the provider endpoint and account its task was created with (issue 13,
seen case 3): two workers in one namespace configured for different BytePlus endpoints, and
the job is finished by the one that made its task, never failed `not_found` by the other."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import JobStatus, VideoRequest
from simulator.stack import free_port, start_simulator
from tests.integration.conftest import SIM_GOOGLE_KEY, SIM_KEY, Simulator, Stack
from tests.integration.helpers import wait_for, wait_status

pytestmark = pytest.mark.integration


@pytest.fixture
def other_simulator(log_dir: Path) -> Iterator[Simulator]:
    """A second provider endpoint, which accepts the same key and knows none of the
    first one's tasks (the demo's simulator against a real endpoint)."""
    port = free_port()
    env = {**os.environ, "SIM_API_KEY": SIM_KEY, "SIM_GOOGLE_API_KEY": SIM_GOOGLE_KEY}
    proc = start_simulator(port, log_dir / "other-sim", ["--latency", "1.0"], env=env)
    yield Simulator(url=f"http://127.0.0.1:{port}", process=proc)
    proc.stop()


def test_a_job_waits_for_a_worker_of_its_endpoint_instead_of_failing(
    local_stack: Stack, other_simulator: Simulator
) -> None:
    """Seen: four jobs created on the demo's simulator and polled by a worker configured for
    another endpoint all failed `not_found`."""
    maker = local_stack.start_worker()
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"made on the suite's simulator {i} [sim:latency=3]") for i in range(4)])
    ids = [j.id for j in jobs]
    for job_id in ids:
        wait_status(vq, job_id, {"running"})
    made = vq.get(ids[0])
    assert made.provider_endpoint == local_stack.simulator.url.removeprefix("http://")
    maker.stop()  # its held polls go back to the queue

    # Only a worker configured for the other endpoint runs: the jobs wait, and say so.
    local_stack.start_worker(BYTEPLUS_BASE_URL=other_simulator.ark_base_url)
    wait_for(lambda: all(r.waiting_for_endpoint for r in vq.get_many(ids)), 60, "the jobs to say what they wait for")
    for record in vq.get_many(ids):
        assert record.status is JobStatus.RUNNING and record.error is None
        note = record.waiting_for_endpoint or ""
        assert note.startswith(
            f"waiting for a worker configured for endpoint host {made.provider_endpoint} "
            f"(fingerprint {made.provider_fingerprint}); this worker has endpoint host "
            f"{other_simulator.url.removeprefix('http://')} (fingerprint "
        )
        assert SIM_KEY not in record.model_dump_json()
    assert other_simulator.stats()["gets_total"] == 0  # never asked about the jobs

    # A worker configured like the one that made the tasks finishes them.
    local_stack.start_worker()
    done = vq.wait(ids, timeout=120)
    assert [r.status for r in done] == [JobStatus.SUCCEEDED] * 4
    assert all(r.waiting_for_endpoint is None for r in done)
    assert local_stack.simulator.stats()["creates_total"] == 4


def test_a_new_job_takes_the_endpoint_of_the_worker_that_creates_it(
    local_stack: Stack, other_simulator: Simulator
) -> None:
    local_stack.start_worker(BYTEPLUS_BASE_URL=other_simulator.ark_base_url)
    vq = local_stack.queue()
    job = vq.wait([vq.submit(VideoRequest(prompt="made on the other simulator")).id], timeout=60)[0]
    assert job.status is JobStatus.SUCCEEDED
    assert job.provider_endpoint == other_simulator.url.removeprefix("http://")
    assert other_simulator.stats()["creates_total"] == 1 and local_stack.simulator.stats()["creates_total"] == 0
