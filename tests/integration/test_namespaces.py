"""Deployments on one Redis do not mix (issue 13, seen case 3): a "real" worker in namespace
`default` and the suite's own (namespace `test`) share a Redis database and each takes only
its own deployment's jobs."""

from __future__ import annotations

import uuid
from pathlib import Path

from producer import JobStatus, VideoRequest
from simulator.stack import start_worker
from tests.integration.conftest import Stack
from tests.integration.helpers import local_path
from videoqueue import keys, namespace


def test_a_real_worker_never_takes_another_deployments_jobs(local_stack: Stack, tmp_path: Path) -> None:
    """Seen: `make demo` against a Redis a real worker used; the real worker took two demo
    jobs and stored them in its own storage."""
    real_videos, test_videos = tmp_path / "real", tmp_path / "test"
    real = start_worker(
        f"real-{uuid.uuid4().hex[:6]}",
        local_stack.env(VQ_NAMESPACE="default", STORAGE_URL=f"file://{real_videos}"),
        local_stack.log_dir,
        concurrency=2,
    )
    local_stack.workers.append(real)

    suite = local_stack.queue()  # the suite's own deployment, `test`
    ours = [j.id for j in suite.submit_many([VideoRequest(prompt=f"demo clip {i}") for i in range(4)])]
    with namespace.using("default"):
        fleet = local_stack.queue(vq_namespace="default")
        theirs = fleet.submit(VideoRequest(prompt="the real fleet's clip")).id
        # The real worker is at work, and it took its own job, enqueued after ours, first.
        done = fleet.wait([theirs], timeout=60)[0]
        assert done.status is JobStatus.SUCCEEDED and local_path(done.output_uri or "").is_relative_to(real_videos)
    assert [r.status for r in suite.get_many(ours)] == [JobStatus.QUEUED] * 4
    assert local_stack.redis.llen(namespace.queue("submit")) == 4
    assert not any(job_id in real.log_text() for job_id in ours)

    local_stack.start_worker(STORAGE_URL=f"file://{test_videos}")
    records = suite.wait(ours, timeout=90)
    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * 4
    assert all(local_path(r.output_uri or "").is_relative_to(test_videos) for r in records)
    assert not any(job_id in real.log_text() for job_id in ours)


def test_every_key_of_a_deployment_carries_its_namespace(local_stack: Stack) -> None:
    """The suite's jobs, counters, ledger and the worker's broker keys all live under
    `vq@test:` (or in `vq@test.*` queues): nothing under the `default` deployment's names."""
    local_stack.start_worker()
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"keyed {i}", tags=("ns",)) for i in range(2)])
    assert all(r.status is JobStatus.SUCCEEDED for r in vq.wait([j.id for j in jobs], timeout=60))
    names: list[str] = local_stack.redis.keys("*")  # type: ignore[assignment]
    assert {keys.status_index("succeeded"), keys.STATS_JOBS, keys.LEDGER_DAYS} <= {
        k for k in names if k.startswith(keys.PREFIX)
    }
    assert [k for k in names if k.startswith(("vq:", "vq."))] == []  # the `default` deployment's names


def test_a_worker_refuses_another_namespaces_queue(local_stack: Stack) -> None:
    env = local_stack.env()
    try:
        start_worker("foreign", env, local_stack.log_dir, queues=["vq@other.submit"], ready_timeout=60)
    except RuntimeError as exc:
        assert "vq@other.submit, not a queue of this worker's namespace 'test'" in str(exc)
    else:
        raise AssertionError("a worker consumed another namespace's queue")
