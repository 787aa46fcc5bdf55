"""Batches end to end (videoqueue.batches): real workers, the simulator over HTTP, real
Redis. A batch of 50 jobs (some failing) keeps its counts and cost right at every read while
it runs, and at its end has `finished_at`, its event in the stream and its signed webhook;
`cancel_batch` mid-run; the CLI's `submit --batch` and `batch status|list|wait|cancel`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.integration.conftest import Stack
from tests.integration.helpers import wait_for as wait_until
from tests.integration.receiver import Receiver
from tests.integration.test_cli import run
from tests.integration.test_webhooks import PRODUCER, SECRET, WEBHOOK_ENV
from videoqueue import batches, events, keys
from videoqueue.job import JobRecord, JobStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def _snapshot(stack: Stack, batch_id: str, job_ids: list[str]) -> tuple[batches.Batch, list[JobRecord]]:
    """The batch and its jobs read in one MULTI: the same instant of the store."""
    pipe = stack.redis.pipeline(transaction=True)
    pipe.hgetall(keys.batch_key(batch_id))
    pipe.mget([keys.job_key(j) for j in job_ids])
    raw, jobs = pipe.execute()
    batch = batches.parse(raw)
    assert batch is not None
    return batch, [JobRecord.from_store_json(j, i) for i, j in zip(job_ids, jobs, strict=True)]


def _check(batch: batches.Batch, jobs: list[JobRecord]) -> None:
    assert sum(batch.counts.values()) == len(jobs)
    for status in JobStatus:
        assert batch.counts[status.value] == sum(j.status is status for j in jobs), status
    charged = sum((j.charged_usd or Decimal(0) for j in jobs if j.status.is_final), Decimal(0))
    assert batch.cost_usd == charged
    assert batch.done == all(j.status.is_final for j in jobs)


def test_a_batch_of_50_keeps_its_counts_and_cost_while_it_runs_and_ends_once(
    local_stack: Stack, receiver: Receiver
) -> None:
    local_stack.start_worker(concurrency=4, **WEBHOOK_ENV)
    vq = local_stack.queue(**PRODUCER)
    requests = [{"prompt": f"scene {i}" + (" [sim:fail]" if i % 7 == 3 else "")} for i in range(50)]
    since = events.newest_id(local_stack.redis)
    batch = vq.submit_batch(requests, name="fifty", tags=["t19"], webhook_url=receiver.url)
    assert batch.size == 50 and sum(batch.counts.values()) == 50  # the worker may have moved some

    reads = 0
    seen_running = False
    while True:
        now, jobs = _snapshot(local_stack, batch.id, batch.job_ids)
        _check(now, jobs)
        reads += 1
        seen_running = seen_running or 0 < now.ended < 50
        if now.done:
            break
        threading.Event().wait(0.05)
    assert reads > 1 and seen_running

    done = vq.wait_batch(batch.id, timeout=30)
    assert done.finished_at is not None and done.ended == 50
    assert done.counts["failed"] == sum(1 for i in range(50) if i % 7 == 3)
    assert done.counts["succeeded"] == 50 - done.counts["failed"]
    ends = [
        e
        for e in events.read_events(local_stack.redis, since, count=10_000)
        if isinstance(e, events.BatchEvent) and e.batch_id == batch.id
    ]
    assert len(ends) == 1

    wait_until(lambda: len(receiver.received) >= 1, 60, "the batch webhook")
    [got] = receiver.received
    event = Webhook(SECRET).verify(got.body, got.headers)
    assert got.headers["webhook-id"] == f"{batch.id}:completed"
    assert event["type"] == "batch.completed"
    assert event["data"]["id"] == batch.id and event["data"]["counts"] == done.counts
    assert Decimal(str(event["data"]["cost_usd"])) == done.cost_usd
    [delivery] = vq.webhook_status(batch.id)
    assert (delivery.state, delivery.last_code) == ("delivered", 200)


def test_cancel_batch_mid_run_cancels_what_has_not_ended(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=2)
    vq = local_stack.queue()
    batch = vq.submit_batch([{"prompt": f"slow {i} [sim:latency=3]"} for i in range(8)], name="to cancel")
    wait_until(lambda: vq.batch(batch.id).counts["running"] > 0, 60, "a running job")
    vq.cancel_batch(batch.id)
    done = vq.wait_batch(batch.id, timeout=90)
    assert done.done and done.ended == 8
    assert done.counts["cancelled"] >= 1
    _check(*_snapshot(local_stack, batch.id, batch.job_ids))


def test_the_cli_submits_a_batch_and_shows_lists_and_waits_for_it(local_stack: Stack, tmp_path: Path) -> None:
    local_stack.start_worker(concurrency=2)
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"prompt": f"clip {i}"}) + "\n" for i in range(3)))
    submitted = run(local_stack, "submit", "--file", str(requests), "--batch", "cli batch")
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    assert batch_id.startswith(batches.ID_PREFIX)

    status = run(local_stack, "batch", "status", batch_id, "--json")
    assert status.returncode == 0, status.stderr
    shown: dict[str, Any] = json.loads(status.stdout)
    assert (shown["name"], shown["size"]) == ("cli batch", 3)
    listed = run(local_stack, "batch", "list")
    assert batch_id in listed.stdout and "cli batch" in listed.stdout

    waited = run(local_stack, "batch", "wait", batch_id[:14], "--timeout", "90")
    assert waited.returncode == 0, waited.stderr
    assert "3/3 ended" in waited.stdout and "succeeded=3" in waited.stdout
    assert "3/3 ended" in waited.stderr  # the plain progress lines (no terminal)

    cancelled = run(local_stack, "batch", "cancel", batch_id)
    assert cancelled.returncode == 0 and "succeeded=3" in cancelled.stdout  # nothing left to cancel
    unknown = run(local_stack, "batch", "status", "batch-nope")
    assert unknown.returncode == 2 and "unknown batch id" in unknown.stderr
