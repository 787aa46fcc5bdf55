"""WAIT for a replica after the writes that must survive a failover: when it is sent, how
often the replicas are counted, and which job-store writes ask for it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import fakeredis
import pytest
import redis

from tests.unit.helpers import walk_to
from tests.unit.test_jobstore import make_record
from videoqueue import keys
from videoqueue.job import JobStatus, utcnow
from videoqueue.jobstore import JobStore, durable_write
from videoqueue.replicawait import ReplicaWait


@dataclass
class FakePrimary:
    """The commands ReplicaWait sends, and the answers a primary with `replicas` replicas
    (`acks` of which confirm in time) gives."""

    replicas: int
    acks: int = 1
    refuse_wait: bool = False
    info_calls: int = 0
    sent: list[tuple[Any, ...]] = field(default_factory=list)

    def info(self, section: str) -> dict[str, Any]:
        assert section == "replication"
        self.info_calls += 1
        return {"role": "master", "connected_slaves": self.replicas}

    def pipeline(self, transaction: bool = True) -> FakePipeline:
        assert not transaction, "the mark and the WAIT go out on one connection, not in MULTI"
        return FakePipeline(self)


@dataclass
class FakePipeline:
    primary: FakePrimary
    queued: list[tuple[Any, ...]] = field(default_factory=list)

    def set(self, key: str, value: str, ex: int) -> None:
        self.queued.append(("SET", key, value, ex))

    def execute_command(self, *args: Any) -> None:
        self.queued.append(args)

    def execute(self) -> list[Any]:
        self.primary.sent += self.queued
        if self.primary.refuse_wait:
            raise redis.ResponseError("unknown command 'WAIT'")
        return [True if c[0] == "SET" else self.primary.acks for c in self.queued]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _waiter(primary: FakePrimary, timeout_ms: int = 500, clock: Clock | None = None) -> ReplicaWait:
    return ReplicaWait(primary, timeout_ms, cache_s=5.0, clock=clock or Clock())  # type: ignore[arg-type]


def test_with_a_replica_a_marked_write_then_wait_1_is_sent() -> None:
    primary = FakePrimary(replicas=1)
    assert _waiter(primary, timeout_ms=250).after_write("task id", "job-1") == 1
    assert primary.sent == [("SET", keys.REPLICA_WAIT_MARK, "job-1", 60), ("WAIT", 1, 250)]


def test_without_replicas_nothing_is_sent() -> None:
    primary = FakePrimary(replicas=0)
    assert _waiter(primary).after_write("final move", "job-1") is None
    assert primary.sent == []


def test_a_timeout_of_zero_never_waits_nor_asks() -> None:
    primary = FakePrimary(replicas=2)
    assert _waiter(primary, timeout_ms=0).after_write("create", "job-1") is None
    assert primary.sent == [] and primary.info_calls == 0


def test_the_replicas_are_counted_once_per_cache_period() -> None:
    primary, clock = FakePrimary(replicas=1), Clock()
    waiter = _waiter(primary, clock=clock)
    for _ in range(3):
        waiter.after_write("create", "job-1")
    assert primary.info_calls == 1
    primary.replicas = 0  # the replica left
    clock.now += 4.9
    waiter.after_write("create", "job-2")
    assert primary.info_calls == 1 and primary.sent.count(("WAIT", 1, 500)) == 4
    clock.now += 0.2
    assert waiter.after_write("create", "job-3") is None
    assert primary.info_calls == 2 and primary.sent.count(("WAIT", 1, 500)) == 4


def test_an_unconfirmed_wait_is_logged_not_raised_and_the_replicas_are_counted_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary = FakePrimary(replicas=1, acks=0)
    waiter = _waiter(primary)
    with caplog.at_level(logging.WARNING, logger="videoqueue.replicawait"):
        assert waiter.after_write("final move", "job-7") == 0
    [line] = caplog.records
    assert line.getMessage() == "no replica confirmed a write within the timeout"
    assert (line.job_id, line.write, line.timeout_ms) == ("job-7", "final move", 500)  # type: ignore[attr-defined]
    waiter.after_write("final move", "job-8")
    assert primary.info_calls == 2


def test_a_server_that_refuses_wait_is_not_asked_again(caplog: pytest.LogCaptureFixture) -> None:
    primary = FakePrimary(replicas=1, refuse_wait=True)
    waiter = _waiter(primary)
    with caplog.at_level(logging.WARNING, logger="videoqueue.replicawait"):
        assert waiter.after_write("create", "job-1") is None
        assert waiter.after_write("create", "job-2") is None
    assert [r.getMessage() for r in caplog.records] == ["the server refuses WAIT: not waiting for replicas"]
    assert primary.sent.count(("WAIT", 1, 500)) == 1


def test_a_server_without_info_counts_as_no_replica() -> None:
    waiter = ReplicaWait(fakeredis.FakeRedis(), 500)  # fakeredis knows no INFO
    assert waiter.replicas() == 0
    assert waiter.after_write("create", "job-1") is None


# -- which job-store writes ask for a replica ----------------------------------------------------


class Recorder(ReplicaWait):
    def __init__(self) -> None:
        super().__init__(fakeredis.FakeRedis(), 500)
        self.calls: list[tuple[str, str]] = []

    def after_write(self, what: str, job_id: str) -> int | None:
        self.calls.append((what, job_id))
        return 1


@pytest.fixture
def recorded() -> tuple[JobStore, Recorder]:
    recorder = Recorder()
    return JobStore(fakeredis.FakeRedis(decode_responses=True), recorder), recorder


def test_a_create_waits_once_per_batch_and_a_repeated_client_id_not_at_all(
    recorded: tuple[JobStore, Recorder],
) -> None:
    store, recorder = recorded
    store.create_many([make_record("a"), make_record("b")])
    assert recorder.calls == [("create", "a")]
    store.create_many([])
    assert recorder.calls == [("create", "a")]


def test_intent_task_id_and_final_move_wait_other_writes_do_not(recorded: tuple[JobStore, Recorder]) -> None:
    store, recorder = recorded
    store.create_many([make_record("a")])
    recorder.calls.clear()

    def count_attempt(record: Any) -> Any:
        record.attempts += 1
        return record

    store.update("a", count_attempt)
    assert recorder.calls == []
    store.transition("a", {JobStatus.QUEUED}, JobStatus.SUBMITTING, submit_intent_at=utcnow())
    store.transition("a", {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id="cgt-1", submit_intent_at=None)
    store.update("a", count_attempt)
    walk_to(store, "a", JobStatus.SUCCEEDED)
    assert [what for what, _ in recorder.calls] == ["create intent", "task id", "final move"]
    assert {job for _, job in recorder.calls} == {"a"}


def test_a_declined_change_waits_for_nothing(recorded: tuple[JobStore, Recorder]) -> None:
    store, recorder = recorded
    store.create_many([make_record("a")])
    recorder.calls.clear()
    assert store.transition("a", {JobStatus.RUNNING}, JobStatus.FAILED) is None  # it is queued
    assert recorder.calls == []


def test_durable_write_labels() -> None:
    queued = make_record("a")
    intent = queued.model_copy(update={"status": JobStatus.SUBMITTING, "submit_intent_at": utcnow()})
    later = intent.model_copy(update={"submit_intent_at": intent.submit_intent_at + timedelta(seconds=1)})  # type: ignore[operator]
    running = intent.model_copy(update={"status": JobStatus.RUNNING, "provider_task_id": "cgt-1"})
    done = running.model_copy(update={"status": JobStatus.SUCCEEDED})
    assert durable_write(queued, intent) == "create intent"
    assert durable_write(intent, later) == "create intent"
    assert durable_write(intent, intent) is None
    assert durable_write(intent, running) == "task id"
    assert durable_write(running, running.model_copy(update={"poll_seq": 2})) is None
    assert durable_write(running, done) == "final move"
    assert durable_write(done, done.model_copy(update={"error": None})) is None
