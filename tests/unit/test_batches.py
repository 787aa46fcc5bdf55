"""Batches (videoqueue.batches): the batch record is stored with its jobs, all or nothing;
its counts by status and its cost move in its jobs' move scripts, once per move (a step run
twice counts nothing); the last job's end stamps `finished_at` and writes the batch's event
and makes its deliveries due, and only that move does (fake Redis, the real MOVE script)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from producer import BudgetExceededError, EnqueueError, Settings, VideoQueue
from producer.cli_watch import line
from tests.unit.helpers import walk_to
from tests.unit.test_aio import _queues
from videoqueue import batches, events, keys
from videoqueue.job import JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.movescript import MOVE, Writes


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def _queue(client: Any, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[VideoQueue, list[str]]:
    vq = VideoQueue(Settings(_env_file=None, **settings), store=JobStore(client))
    sent: list[str] = []
    monkeypatch.setattr(vq, "_send", lambda records: sent.extend(r.id for r in records))
    return vq, sent


def _requests(n: int) -> list[dict[str, Any]]:
    return [{"prompt": f"scene {i}", "duration": 5} for i in range(n)]


def test_submit_batch_stores_the_batch_with_its_jobs(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vq, sent = _queue(client, monkeypatch)
    batch = vq.submit_batch(_requests(3), name="ad", tags=["spring"])
    assert batch.id.startswith(batches.ID_PREFIX)
    assert (batch.name, batch.tags, batch.size, sent) == ("ad", ["spring"], 3, batch.job_ids)
    assert batch.counts["queued"] == 3 and batch.ended == 0 and not batch.done
    jobs = vq.get_many(batch.job_ids)
    assert {j.batch_id for j in jobs} == {batch.id}
    assert batch.cost_estimate_usd == sum((j.cost_estimate_usd or Decimal(0) for j in jobs), Decimal(0))
    assert batch.cost_usd == 0
    stored = json.loads(client.get(keys.job_key(jobs[0].id)))
    assert stored["bt"] == batch.id  # the stored form's alias
    assert [b.id for b in vq.batches()] == [batch.id]
    assert vq.batch(batch.id[:12]).id == batch.id


def test_a_job_of_no_batch_stores_no_batch_field(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vq, _ = _queue(client, monkeypatch)
    job = vq.submit({"prompt": "alone"})
    assert "bt" not in json.loads(client.get(keys.job_key(job.id)))


def test_a_refused_batch_stores_nothing(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vq, sent = _queue(client, monkeypatch, budget_daily_usd=Decimal("0.5"))
    with pytest.raises(BudgetExceededError):
        vq.submit_batch(_requests(20), name="too dear")
    assert sent == []
    assert client.keys(keys.batch_key("*")) == [] and client.zcard(keys.BATCH_INDEX) == 0
    assert client.keys(keys.job_key("*")) == []


def test_counts_and_costs_move_with_the_jobs_and_the_last_end_finishes_it(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq, _ = _queue(client, monkeypatch)
    batch = vq.submit_batch(_requests(3), name="three", webhook_url=None)
    a, b, c = batch.job_ids
    store = vq.store
    walk_to(store, a, JobStatus.RUNNING)
    now = vq.batch(batch.id)
    assert (now.counts["queued"], now.counts["running"], sum(now.counts.values())) == (2, 1, 3)
    walk_to(store, a, JobStatus.SUCCEEDED, cost_usd=Decimal("0.25"), output_uri="file:///v/a.mp4")
    walk_to(store, b, JobStatus.FAILED, cost_usd=Decimal("0.10"))
    now = vq.batch(batch.id)
    assert (now.counts["succeeded"], now.counts["failed"], now.ended, now.done) == (1, 1, 2, False)
    assert now.cost_usd == Decimal("0.35")
    assert not any(isinstance(e, events.BatchEvent) for e in events.read_events(client, events.START))
    store.transition(c, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    done = vq.batch(batch.id)
    assert done.done and done.ended == 3 and done.cost_usd == Decimal("0.35")
    assert done.finished_at is not None
    ends = [e for e in events.read_events(client, events.START) if isinstance(e, events.BatchEvent)]
    assert [(e.batch_id, e.job_id) for e in ends] == [(batch.id, "")]
    assert ends[0].to_dict()["type"] == "batch.completed"


def test_a_step_run_twice_is_counted_once(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vq, _ = _queue(client, monkeypatch)
    batch = vq.submit_batch(_requests(2))
    job = batch.job_ids[0]
    assert vq.store.transition(job, {JobStatus.QUEUED}, JobStatus.SUBMITTING) is not None
    other = JobStore(client)  # a redelivered step on another worker: its compare-and-set fails
    assert other.transition(job, {JobStatus.QUEUED}, JobStatus.SUBMITTING) is None
    walk_to(vq.store, job, JobStatus.SUCCEEDED, cost_usd=Decimal("0.5"), output_uri="file:///v/x.mp4")
    assert other.transition(job, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED, cost_usd=Decimal("0.5")) is None
    now = vq.batch(batch.id)
    assert (now.counts["queued"], now.counts["submitting"], now.counts["succeeded"]) == (1, 0, 1)
    assert now.cost_usd == Decimal("0.5") and not now.done


def test_the_batch_deliveries_are_due_only_after_the_last_end(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("videoqueue.webhooks.check_url", lambda url, settings: None)
    vq, _ = _queue(client, monkeypatch, webhook_secret="whsec_" + "QUJD" * 8, webhook_allow_http=True)
    batch = vq.submit_batch(_requests(2), webhook_url="http://example.com/hook", on_complete="app.done")
    a, b = batch.job_ids
    ids = batches.delivery_ids(batch.id)
    store = vq.store
    sent: list[list[str]] = []
    store.on_deliveries = sent.append
    store.transition(a, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    assert client.zscore(keys.DELIVERIES_DUE, ids[0]) is None and sent == []
    assert batches.delivery_body(client, "webhook", batch.id) is None  # not ended: nothing to send
    store.transition(b, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    assert all(client.zscore(keys.DELIVERIES_DUE, i) is not None for i in ids)
    assert sent == [ids]
    body = json.loads(batches.delivery_body(client, "webhook", batch.id) or "")
    assert body["type"] == "batch.completed" and body["data"]["counts"]["cancelled"] == 2


def test_hincrby_then_runs_the_guarded_writes_only_at_zero(client: Any) -> None:
    client.hset("h", "open", 2)
    client.set("job", "r")
    script = client.register_script(MOVE)
    for expected in (None, "yes"):
        then = Writes()
        then.set("flag", "yes")
        writes = Writes()
        writes.hincrby_then("h", "open", -1, then)
        writes.set("after", "always")
        script(keys=["job"], args=["r", "r", "", "job", 1, 0, *writes.args])
        assert (client.get("flag"), client.get("after")) == (expected, "always")


@pytest.mark.asyncio
async def test_the_asyncio_producer_stores_a_batch_as_the_sync_one(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, aq, _client, sent = _queues(monkeypatch)
    batch = await aq.submit_batch(_requests(2), name="async", tags=["a"])
    assert (batch.name, batch.size, batch.counts["queued"], sent) == ("async", 2, 2, batch.job_ids)
    assert vq.batch(batch.id) == batch
    assert {j.batch_id for j in vq.get_many(batch.job_ids)} == {batch.id}
    await aq.aclose()


def test_a_job_stored_again_reopens_its_batch_until_it_ends_again(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vq, _ = _queue(client, monkeypatch)
    batch = vq.submit_batch(_requests(1))
    [job] = batch.job_ids
    walk_to(vq.store, job, JobStatus.FAILED, cost_usd=Decimal("0.2"))
    assert vq.batch(batch.id).done
    # As `store retry` (producer.api.reopen_for_store): failed back to downloading.
    vq.store.update(job, lambda r: r.model_copy(update={"status": JobStatus.DOWNLOADING, "finished_at": None}))
    again = vq.batch(batch.id)
    assert not again.done and again.counts["downloading"] == 1 and again.counts["failed"] == 0
    vq.store.transition(job, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED, output_uri="file:///v/x.mp4")
    done = vq.batch(batch.id)
    assert done.done and done.counts["succeeded"] == 1 and done.cost_usd == Decimal("0.2")  # settled once


def test_a_batch_entry_reads_as_a_batch_event_that_job_readers_pass(client: Any) -> None:
    fields = {"b": "batch-1", "s": "batch.completed", "t": "1700000000.250"}
    event = events.decode("5-0", fields)
    assert isinstance(event, events.BatchEvent) and event.final and event.job_id == ""
    assert line(event).endswith("batch-1 batch.completed")
    follow = events.Follower("0", ["job-a"], None, now=0)
    assert follow.take([event], 0) == [] and follow.since == "5-0"  # skipped, and moved past


def test_a_batch_the_broker_refused_is_withdrawn_with_its_jobs(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    vq = VideoQueue(Settings(_env_file=None), store=JobStore(client))
    monkeypatch.setattr("producer.api.producer_app_for", lambda settings: _RefusingApp())
    with pytest.raises(EnqueueError):
        vq.submit_batch(_requests(2))
    assert client.keys(keys.batch_key("*")) == [] and client.zcard(keys.BATCH_INDEX) == 0
    assert client.keys(keys.job_key("*")) == []


class _RefusingApp:
    """A Celery app whose broker refuses every message."""

    def producer_or_acquire(self) -> Any:
        return nullcontext(None)

    def send_task(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")
