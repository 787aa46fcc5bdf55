"""The asyncio producer (producer/aio.py, producer/aiostore.py) and the I/O-free pieces it
shares with the sync one (videoqueue.snapshot, jobstore.create, the cancel moves), on
fakeredis: a sync and an asyncio client of one fake server. The broker message is left
out (`_send` records what it would send), as in test_client_ids_and_retry.py."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from producer import InvalidRequestError, JobStatus, Settings, VideoQueue, VideoRequest
from producer.aio import AsyncVideoQueue
from producer.aiostore import AsyncJobStore
from producer.api import WaitTimeoutError, cancel_queued, check_batch, request_cancel
from tests.unit.helpers import walk_to
from videoqueue import keys
from videoqueue.jobids import UnknownJobError, known
from videoqueue.jobstore import DuplicateClientJobIdError, JobStore, newest
from videoqueue.limits import live_lease
from videoqueue.snapshot import Snapshot, commands, settle


def _queues(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[VideoQueue, AsyncVideoQueue, Any, list[str]]:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    vq = VideoQueue(Settings(_env_file=None, **settings), store=JobStore(client))
    sent: list[str] = []
    monkeypatch.setattr(vq, "_send", lambda records: sent.extend(r.id for r in records))
    aq = AsyncVideoQueue(queue=vq, client=fakeredis.FakeAsyncRedis(server=server, decode_responses=True))
    return vq, aq, client, sent


DUE = datetime(2030, 1, 1, tzinfo=UTC)


def _state(client: Any) -> dict[str, Any]:
    """Every key's value; the event stream's entries without their ids (the time they were
    added)."""
    state = {key: client.dump(key) for key in client.keys("*") if key != keys.EVENTS_STREAM}
    state["events"] = [fields for _id, fields in client.xrange(keys.EVENTS_STREAM)]
    return state


# The I/O-free pieces


@pytest.mark.asyncio
async def test_settle_runs_a_decision_until_it_misses_no_read() -> None:
    store = {"a": "b", "b": "c", "h": {"x": "1"}}
    fetched: list[list[tuple[str, ...]]] = []

    async def fetch(reads: Any) -> list[Any]:
        fetched.append(list(reads))
        return [store.get(read[1]) if read[0] == "GET" else store[read[1]] for read in reads]

    def decide(client: Any) -> str:
        first = client.get("a")
        second = client.get(first) if first else None
        if second is None:
            raise KeyError("decided on a value not yet read: thrown away")
        client.multi()
        client.set("out", second + client.hgetall("h")["x"], ex=5)
        return str(second)

    result, snapshot = await settle(decide, fetch)
    assert result == "c"
    assert fetched == [[("GET", "a")], [("GET", "b")], [("HGETALL", "h")]]  # one round per read depending on one
    assert snapshot.in_multi and commands(snapshot) == [("SET", "out", "c1", "EX", 5)]


@pytest.mark.asyncio
async def test_settle_raises_what_a_complete_run_raises() -> None:
    async def fetch(reads: Any) -> list[Any]:
        return [None for _ in reads]

    def decide(client: Any) -> None:
        if client.get("k") is None:
            raise LookupError("no k")

    with pytest.raises(LookupError, match="no k"):
        await settle(decide, fetch)


def test_a_snapshot_answers_missing_reads_as_absent_keys() -> None:
    snapshot = Snapshot({("GET", "known"): "v"})
    assert snapshot.get("known") == "v" and snapshot.get("other") is None
    assert snapshot.exists("x", "y") == 0 and snapshot.hmget("h", "a", "b") == [None, None]
    assert snapshot.missing == [("GET", "other"), ("EXISTS", "x"), ("EXISTS", "y"), ("HMGET", "h", "a", "b")]


@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.asyncio
async def test_both_drivers_store_a_batch_the_same_way(monkeypatch: pytest.MonkeyPatch, driver: str) -> None:
    """The same prepared records, through JobStore.create_many and AsyncJobStore.create_many
    on empty stores, leave the same keys and values (records, indexes, counters, budget
    reservations, client job ids)."""
    vq, aq, client, _ = _queues(monkeypatch, budget_daily_usd=Decimal(100))
    jobs = vq.prepare_many([VideoRequest(prompt="one", client_job_id="p-1"), VideoRequest(prompt="two")])
    records = [job.record for job in jobs]
    # The reference: the sync store on a server of its own.
    reference = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    JobStore(reference).create_many(records, vq.budget)
    if driver == "sync":
        vq.store.create_many(records, vq.budget)
    else:
        assert await aq.store.create_many(records, vq.budget) == {}
    assert _state(client) == _state(reference)
    ttl = client.ttl(keys.client_key("p-1"))
    assert ttl > 0 and ttl == reference.ttl(keys.client_key("p-1"))


# AsyncVideoQueue


@pytest.mark.asyncio
async def test_submit_get_list(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, aq, _, sent = _queues(monkeypatch)
    job = await aq.submit({"prompt": "a fox", "duration": 5})
    assert job.status is JobStatus.QUEUED and sent == [job.id]
    got = await aq.get(job.id)
    assert got.id == job.id and got.request == job.request
    assert got == vq.get(job.id)
    assert [j.id for j in await aq.list()] == [job.id]
    assert [j.id for j in await aq.list("queued", limit=1)] == [job.id]
    assert await aq.list(JobStatus.RUNNING) == []
    with pytest.raises(UnknownJobError):
        await aq.get_many([job.id, "0000-unknown"])


@pytest.mark.asyncio
async def test_an_invalid_request_is_refused_with_the_sync_message_before_any_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vq, aq, client, sent = _queues(monkeypatch)
    bad: list[dict[str, Any]] = [{"prompt": "ok"}, {"prompt": "", "duration": 99}]
    with pytest.raises(InvalidRequestError) as sync_error:
        vq.submit_many(bad)
    with pytest.raises(InvalidRequestError) as async_error:
        await aq.submit_many(bad)
    assert async_error.value.problems == sync_error.value.problems
    assert "[1].prompt" in async_error.value.problems
    with pytest.raises(InvalidRequestError) as one:
        await aq.submit({"prompt": "x", "image_url": "http://127.0.0.1/a.png"})
    assert "first_frame_url" in one.value.problems or "image_url" in one.value.problems
    assert client.keys("*") == [] and sent == []


@pytest.mark.asyncio
async def test_submit_many_with_a_client_job_id_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, aq, client, sent = _queues(monkeypatch)
    repeated = [{"prompt": "a", "client_job_id": "c-1"}, {"prompt": "a", "client_job_id": "c-1"}]
    with pytest.raises(InvalidRequestError) as within:
        await aq.submit_many(repeated)
    assert within.value.problems == {"[1].client_job_id": "'c-1' repeats item [0]"}
    assert client.keys("*") == []
    first, second = await aq.submit_many([{"prompt": "a", "client_job_id": "c-1"}, {"prompt": "b"}])
    before = _state(client)
    # Again with the same request: the stored job, nothing stored or sent again.
    again, third = await aq.submit_many([{"prompt": "a", "client_job_id": "c-1"}, {"prompt": "c"}])
    assert again.id == first.id and third.id not in (first.id, second.id)
    assert sent == [first.id, second.id, third.id]
    assert set(before) <= set(_state(client))
    # With a different request: the whole batch refused, as sync.
    with pytest.raises(DuplicateClientJobIdError) as differs:
        await aq.submit_many([{"prompt": "d"}, {"prompt": "other", "client_job_id": "c-1"}])
    assert differs.value.conflicts[0].job_id == first.id
    assert len(vq.list(limit=10)) == 3


@pytest.mark.asyncio
async def test_cancel_a_queued_job_ends_it_and_settles_as_the_sync_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, aq, client, _ = _queues(monkeypatch, budget_daily_usd=Decimal(100))
    a, b = vq.submit({"prompt": "sync"}), await aq.submit({"prompt": "async"})
    sync_done, async_done = vq.cancel(a.id), await aq.cancel(b.id)
    assert sync_done.status is async_done.status is JobStatus.CANCELLED
    assert async_done.cancel_requested_at is not None and async_done.finished_at is not None
    assert [h["to"] for h in async_done.history] == ["cancelled"]
    # Both moves ran the final hooks: the reservations released, the counts moved.
    assert a.budget_keys and all(client.hget(key, "reserved") == "0" for key in a.budget_keys)
    assert await aq.get(b.id) == vq.get(b.id)
    assert (await aq.cancel(b.id)).status is JobStatus.CANCELLED  # final: left as it is
    counts = vq.store.count_by_status()
    assert counts["cancelled"] == 2 and counts["queued"] == 0


@pytest.mark.asyncio
async def test_an_async_cancel_sends_the_deliveries_its_move_owes(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "whsec_" + base64.b64encode(b"unit-test-webhook-key").decode()
    _vq, aq, client, _ = _queues(
        monkeypatch, webhook_secret=secret, webhook_allow_http=True, webhook_allow_private=True
    )
    owed: list[list[str]] = []
    aq.store.on_deliveries = owed.append
    job = await aq.submit({"prompt": "told when cancelled", "webhook_url": "http://127.0.0.1:9/hook"})
    assert (await aq.cancel(job.id)).status is JobStatus.CANCELLED
    assert owed == [[f"{job.id}:cancelled"]]
    assert client.zscore(keys.DELIVERIES_DUE, f"{job.id}:cancelled") is not None  # the outbox, for the sweep


@pytest.mark.asyncio
async def test_cancel_a_running_job_requests_it(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, aq, _, _ = _queues(monkeypatch)
    job = await aq.submit({"prompt": "running"})
    walk_to(vq.store, job.id, JobStatus.RUNNING, provider_task_id="cgt-1")
    cancel_tasks: list[list[str]] = []

    class App:
        def send_task(self, name: str, args: list[str]) -> None:
            cancel_tasks.append([name, *args])

    monkeypatch.setattr("producer.aio.producer_app_for", lambda settings: App())
    requested = await aq.cancel(job.id)
    assert requested.status is JobStatus.RUNNING and requested.cancel_requested
    assert cancel_tasks == [["videoqueue.cancel", job.id]]
    again = await aq.cancel(job.id)  # already requested: nothing sent again
    assert again.cancel_requested and len(cancel_tasks) == 1


@pytest.mark.asyncio
async def test_a_move_that_loses_its_compare_and_set_is_computed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, aq, _, _ = _queues(monkeypatch)
    job = await aq.submit({"prompt": "raced"})
    store = AsyncJobStore(aq.store.redis)
    seen: list[str] = []

    def mutate(record: Any) -> Any:
        seen.append(record.status.value)
        if len(seen) == 1:  # another process moves it between the read and the script
            walk_to(vq.store, job.id, JobStatus.SUBMITTING)
        record.next_due_at = DUE
        return record

    moved = await store.update(job.id, mutate)
    assert seen == ["queued", "submitting"]
    assert moved is not None and moved.status is JobStatus.SUBMITTING and moved.next_due_at == DUE
    assert vq.get(job.id).next_due_at == DUE


def test_the_shared_pieces() -> None:
    # The merge of `list`: newest first, ties by the greater id, a job in two indexes once.
    assert newest([[("a", 3.0), ("b", 1.0)], [("c", 3.0), ("a", 2.0)], []], 3) == ["c", "a", "b"]
    assert live_lease(None) is False and live_lease(time.time() + 60) and not live_lease(time.time() - 1)
    with pytest.raises(UnknownJobError) as unknown:
        known(["x", "y"], [None, None])
    assert "x" in str(unknown.value) and "y" in str(unknown.value)


def test_the_cancel_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, _, _, _ = _queues(monkeypatch)
    job = vq.submit({"prompt": "x"})
    now = datetime.now(UTC)
    queued = cancel_queued(now)(job.model_copy(deep=True))
    assert queued is not None and queued.status is JobStatus.CANCELLED and queued.cancel_requested_at == now
    running = walk_to(vq.store, job.id, JobStatus.RUNNING)
    assert running is not None and cancel_queued(now)(running) is None
    requested = request_cancel(now)(running.model_copy(deep=True))
    assert requested is not None and requested.cancel_requested
    assert request_cancel(now)(requested) is None  # already requested
    with pytest.raises(InvalidRequestError, match="repeated within one submission: r-1"):
        check_batch(vq.prepare_many([{"prompt": "a", "client_job_id": "r-1"}]) * 2)


@pytest.mark.asyncio
async def test_wait_and_events_on_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, aq, _, _ = _queues(monkeypatch)
    ended, pending = await aq.submit({"prompt": "ends"}), await aq.submit({"prompt": "stays"})
    await aq.cancel(ended.id)
    [done] = await aq.wait([ended.id], timeout=5)
    assert done.status is JobStatus.CANCELLED
    with pytest.raises(WaitTimeoutError) as late:
        await aq.wait([ended.id, pending.id], timeout=0.2)
    assert [j.status for j in late.value.jobs] == [JobStatus.CANCELLED, JobStatus.QUEUED]
    with pytest.raises(UnknownJobError):
        await aq.wait(["nope"], timeout=1)
    everything = [e async for e in aq.events("0", block=0.1)]
    assert [(e.job_id, e.status) for e in everything] == [
        (ended.id, JobStatus.QUEUED),
        (pending.id, JobStatus.QUEUED),
        (ended.id, JobStatus.CANCELLED),
    ]
    # Resumed from an event id: what came after it; of one job only.
    assert [e async for e in aq.events(everything[0].id, job_ids=[ended.id], block=0.1)] == everything[2:]
    # The sync producer reads the same stream the same way.
    assert list(vq.events("0", block=0.1)) == everything
