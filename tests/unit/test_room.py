"""The waiting room's Lua scripts (videoqueue.room) on fakeredis, which runs them with lupa:
order (priority, weighted fair share, first in first out), quota, positions, live limits,
leaving. The same scripts run against a real Redis and real workers in
tests/integration/test_overload.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from tests.unit.helpers import seedance_request
from videoqueue import keys, stats
from videoqueue.job import JobRecord, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.limits import ModelLimits, ProviderLimits
from videoqueue.room import WaitingReason, WaitingRoom

PROVIDER, MODEL = "byteplus", "seedance-1-5-pro-251215"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW = T0.timestamp() + 10


def record(job_id: str, seq: int, *, priority: int = 5, tenant: str = "default") -> JobRecord:
    created = T0 + timedelta(microseconds=seq)
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        provider=PROVIDER,
        model=MODEL,
        request=seedance_request(priority=priority, tenant=tenant),
        cost_estimate_usd=Decimal("0.1"),
        created_at=created,
        updated_at=created,
        deadline_at=created + timedelta(hours=2),
    )


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def room(client: Any, slots: int = 2, rpm: int = 1000, weights: dict[str, float] | None = None) -> WaitingRoom:
    return WaitingRoom(client, ProviderLimits(client, ModelLimits(slots, rpm), {}, 900.0), weights)


def enqueue(client: Any, jobs: list[JobRecord]) -> None:
    """Store the jobs and put them in their room, as their first submit does."""
    JobStore(client).create_many(jobs)
    for job in jobs:
        assert room(client).enter(job)
    assert not room(client).enter(jobs[0])  # once


def drain(waiting: WaitingRoom, n: int) -> list[str]:
    """Admit one job at a time, freeing its slot after, `n` times: the admission order."""
    order: list[str] = []
    for _ in range(n):
        admission = waiting.admit(PROVIDER, MODEL, now=NOW)
        assert len(admission.admitted) <= 1
        order.extend(admission.admitted)
        for job_id in admission.admitted:
            waiting.redis.zrem(keys.slot_key(PROVIDER, MODEL), job_id)
    return order


def test_jobs_are_admitted_by_priority_then_in_enqueue_order(client: Any) -> None:
    jobs = [record("a", 1), record("b", 2, priority=9), record("c", 3), record("d", 4, priority=0), record("e", 5)]
    enqueue(client, jobs)
    assert drain(room(client, slots=1), 5) == ["b", "a", "c", "e", "d"]
    assert room(client).rooms() == []  # an empty room leaves the set of rooms


def test_admission_stops_at_the_in_flight_cap_and_says_why(client: Any) -> None:
    enqueue(client, [record(f"j{i}", i) for i in range(5)])
    waiting = room(client, slots=2)
    first = waiting.admit(PROVIDER, MODEL, now=NOW)
    assert first.admitted == ["j0", "j1"]
    assert first.reason is WaitingReason.IN_FLIGHT_LIMIT and first.wake_at is None
    assert waiting.admit(PROVIDER, MODEL, now=NOW).admitted == []
    # Admitted jobs hold their slots; their due time is now (the sweep's safety net).
    assert client.zscore(keys.slot_key(PROVIDER, MODEL), "j0") == pytest.approx(NOW + 900)
    assert client.zscore(keys.DUE_INDEX, "j0") == pytest.approx(NOW)


def test_the_rate_window_admits_no_more_and_names_when_it_opens(client: Any) -> None:
    enqueue(client, [record(f"j{i}", i) for i in range(4)])
    waiting = room(client, slots=10, rpm=2)
    admission = waiting.admit(PROVIDER, MODEL, now=NOW)
    assert admission.admitted == ["j0", "j1"]
    assert admission.reason is WaitingReason.RATE_LIMIT
    assert admission.wake_at == pytest.approx(NOW + 60, abs=0.01)
    assert waiting.admit(PROVIDER, MODEL, now=NOW + 59).admitted == []
    assert waiting.admit(PROVIDER, MODEL, now=NOW + 60.5).admitted == ["j2", "j3"]


def test_a_back_off_holds_everyone_until_it_ends(client: Any) -> None:
    enqueue(client, [record("j0", 0)])
    waiting = room(client)
    client.set(keys.backoff_key(PROVIDER, MODEL), NOW + 30)
    admission = waiting.admit(PROVIDER, MODEL, now=NOW)
    assert admission.admitted == [] and admission.reason is WaitingReason.PROVIDER_BACKOFF
    assert admission.wake_at == pytest.approx(NOW + 30)
    assert waiting.admit(PROVIDER, MODEL, now=NOW + 31).admitted == ["j0"]


def test_expired_slots_are_reclaimed(client: Any) -> None:
    enqueue(client, [record("j0", 0)])
    client.zadd(keys.slot_key(PROVIDER, MODEL), {"dead": NOW - 1})
    assert room(client, slots=1).admit(PROVIDER, MODEL, now=NOW).admitted == ["j0"]


@pytest.mark.parametrize(("weights", "share_a"), [({}, 0.5), ({"A": 3.0}, 0.75)])
def test_tenants_share_by_weight_over_every_window(client: Any, weights: dict[str, float], share_a: float) -> None:
    enqueue(client, [record(f"A{i:03}", i, tenant="A") for i in range(400)])
    enqueue(client, [record(f"B{i:03}", 1000 + i, tenant="B") for i in range(400)])
    order = drain(room(client, slots=1, weights=weights), 400)
    for start in range(0, 400 - 40 + 1, 10):
        window = order[start : start + 40]
        assert abs(sum(j.startswith("A") for j in window) / 40 - share_a) <= 0.05
    # Within a tenant: first in, first out.
    a_jobs = [j for j in order if j.startswith("A")]
    assert a_jobs == sorted(a_jobs)


def test_a_tenant_that_was_idle_earns_no_credit(client: Any) -> None:
    enqueue(client, [record(f"A{i:02}", i, tenant="A") for i in range(20)])
    waiting = room(client, slots=1)
    assert drain(waiting, 10) == [f"A{i:02}" for i in range(10)]
    enqueue(client, [record(f"B{i:02}", 100 + i, tenant="B") for i in range(10)])
    # B joins at the room's clock: from now on the two alternate, B is not owed 10 creates.
    order = drain(waiting, 6)
    assert sorted(order) == ["A10", "A11", "A12", "B00", "B01", "B02"]


def test_positions_follow_the_admission_order(client: Any) -> None:
    jobs = [record(f"A{i}", i, tenant="A") for i in range(6)]
    jobs += [record(f"B{i}", 10 + i, tenant="B") for i in range(3)]
    jobs += [record("urgent", 20, priority=9, tenant="B")]
    enqueue(client, jobs)
    waiting = room(client, slots=1, weights={"A": 2.0})
    stored = {j.id: j for j in jobs}
    positions = {j.id: waiting.standing(j, now=NOW).queue_position for j in jobs}
    expected = drain(room(client, slots=1, weights={"A": 2.0}), len(jobs))
    assert sorted(positions, key=lambda j: positions[j] or 0) == expected
    assert sorted(p or 0 for p in positions.values()) == list(range(1, len(jobs) + 1))
    assert waiting.standing(stored["A0"], now=NOW).queue_position is None  # admitted: no longer waits


def test_standing_says_why_and_estimates_from_render_times(client: Any) -> None:
    enqueue(client, [record(f"j{i}", i) for i in range(5)])
    waiting = room(client, slots=2)
    waiting.admit(PROVIDER, MODEL, now=NOW)
    last = record("j4", 4)
    standing = waiting.standing(last, now=NOW)
    assert standing.queue_position == 3
    assert standing.waiting_reason is WaitingReason.IN_FLIGHT_LIMIT
    assert standing.estimated_start_at is None  # no render time known yet
    client.hset(keys.STATS_RENDER_SECONDS, mapping={f"sum|{PROVIDER}|{MODEL}": 60.0, f"le=+Inf|{PROVIDER}|{MODEL}": 2})
    standing = waiting.standing(last, now=NOW)
    # 3rd in line, 0 slots free, 2 slots of 30 s each: 1.5 renders' time.
    assert standing.estimated_start_at == datetime.fromtimestamp(NOW + 45, UTC)


def test_the_estimate_reads_the_per_bucket_histogram_and_the_cumulative_one_of_earlier_versions(client: Any) -> None:
    waiting = room(client, slots=2)
    assert waiting.mean_render_s(PROVIDER, MODEL) is None
    # What the final move writes now (stats.on_end: one bucket per render): 20 s and 100 s.
    pipe = client.pipeline()
    for seconds in (20, 100):
        start = datetime.fromtimestamp(NOW, UTC)
        done = record(f"done{seconds}", 0).model_copy(
            update={"submitted_at": start, "provider_done_at": start + timedelta(seconds=seconds)}
        )
        stats.on_end(pipe, done)
    pipe.execute()
    assert waiting.mean_render_s(PROVIDER, MODEL) == pytest.approx(60.0)
    # Plus what an earlier version counted cumulatively: two renders, 30 s in all.
    client.hincrby(keys.STATS_RENDER_SECONDS, f"le=+Inf|{PROVIDER}|{MODEL}", 2)
    client.hincrbyfloat(keys.STATS_RENDER_SECONDS, f"sum|{PROVIDER}|{MODEL}", 30)
    assert waiting.mean_render_s(PROVIDER, MODEL) == pytest.approx(150 / 4)


def test_limits_stored_in_redis_apply_at_once_and_fall_back_to_the_settings(client: Any) -> None:
    enqueue(client, [record(f"j{i}", i) for i in range(6)])
    waiting = room(client, slots=1)
    assert waiting.admit(PROVIDER, MODEL, now=NOW).admitted == ["j0"]
    waiting.limits.store_limits(MODEL, max_in_flight=4)
    assert waiting.limits.limits_for(MODEL) == ModelLimits(4, 1000)
    assert waiting.admit(PROVIDER, MODEL, now=NOW).admitted == ["j1", "j2", "j3"]
    with pytest.raises(ValueError, match="from 1 to 1,000,000"):
        waiting.limits.store_limits(MODEL, creates_per_minute=0)
    assert waiting.limits.limits_and_sources(MODEL)[1] == {"max_in_flight": "redis", "creates_per_minute": "workers"}
    assert waiting.limits.clear_limits(MODEL)
    # What the workers applied held the stored limit: forgotten with it, this process's
    # settings show until the workers' next admission records theirs.
    assert waiting.limits.limits_and_sources(MODEL) == (
        ModelLimits(1, 1000),
        {"max_in_flight": "shell-settings", "creates_per_minute": "shell-settings"},
    )
    waiting.admit(PROVIDER, MODEL, now=NOW)
    assert waiting.limits.limits_for(MODEL) == ModelLimits(1, 1000)


def test_a_shell_without_the_workers_weights_shows_their_order(client: Any) -> None:
    jobs = [record(f"B{i}", i, tenant="B") for i in range(3)] + [record(f"A{i}", 10 + i, tenant="A") for i in range(3)]
    enqueue(client, jobs)
    worker = room(client, slots=1, weights={"A": 3.0})
    [first] = worker.admit(PROVIDER, MODEL, now=NOW).admitted  # the workers' weights are recorded
    shell = room(client, slots=1)  # TENANT_WEIGHTS unset here
    positions = {j.id: shell.standing(j, now=NOW).queue_position for j in jobs if j.id != first}
    order = sorted(positions, key=lambda j: positions[j] or 0)
    client.zrem(keys.slot_key(PROVIDER, MODEL), first)
    assert order == drain(worker, 5) == ["B0", "A1", "A2", "B1", "B2"]  # unweighted: B0 A1 B1 A2 B2


def test_a_shell_with_other_settings_shows_the_limits_the_workers_apply(client: Any) -> None:
    enqueue(client, [record(f"j{i}", i) for i in range(4)])
    room(client, slots=2).admit(PROVIDER, MODEL, now=NOW)  # a worker with MAX_IN_FLIGHT_PER_MODEL=2
    shell = room(client, slots=100)  # a shell on the defaults
    assert shell.limits.limits_and_sources(MODEL)[1]["max_in_flight"] == "workers"
    assert shell.snapshot(PROVIDER, MODEL, now=NOW).max_in_flight == 2
    standing = shell.standing(record("j3", 3), now=NOW)
    assert (standing.queue_position, standing.waiting_reason) == (2, WaitingReason.IN_FLIGHT_LIMIT)


def test_a_job_that_ends_while_waiting_leaves_the_room(client: Any) -> None:
    enqueue(client, [record("j0", 0), record("j1", 1)])
    store = JobStore(client)
    store.transition("j0", {JobStatus.QUEUED}, JobStatus.CANCELLED)
    assert room(client).admit(PROVIDER, MODEL, now=NOW).admitted == ["j1"]


def test_take_parks_a_waiting_job_until_its_deadline_and_lets_a_slot_holder_go(client: Any) -> None:
    jobs = [record("j0", 0), record("j1", 1)]
    enqueue(client, jobs)
    waiting = room(client, slots=1)
    first = waiting.take(jobs[0], now=NOW)
    assert first.go and first.admission.admitted == ["j0"]
    second = waiting.take(jobs[1], now=NOW)
    assert not second.go
    assert client.zscore(keys.PARKED_INDEX, "j1") == pytest.approx(jobs[1].deadline_at.timestamp())
    again = waiting.take(jobs[0], now=NOW + 5)  # a redelivered submit of the slot holder
    assert again.go and again.admission.admitted == []
    assert client.zscore(keys.slot_key(PROVIDER, MODEL), "j0") == pytest.approx(NOW + 905)


def test_one_timer_per_model(client: Any) -> None:
    waiting = room(client)
    assert waiting.arm_timer(PROVIDER, MODEL, NOW + 30, now=NOW)
    assert not waiting.arm_timer(PROVIDER, MODEL, NOW + 40, now=NOW)  # one is due earlier
    assert waiting.arm_timer(PROVIDER, MODEL, NOW + 20, now=NOW)  # an earlier opening
    assert waiting.arm_timer(PROVIDER, MODEL, NOW + 90, now=NOW + 31)  # the last one went off


def test_snapshot_counts_waiting_jobs_by_priority_and_tenant(client: Any) -> None:
    enqueue(client, [record("a", 0, tenant="A"), record("b", 1, tenant="B"), record("c", 2, priority=7, tenant="B")])
    waiting = room(client, slots=1)
    waiting.admit(PROVIDER, MODEL, now=NOW)
    snap = waiting.snapshot(PROVIDER, MODEL, now=NOW + 5)
    assert snap.waiting == {(5, "A"): 1, (5, "B"): 1}
    assert snap.total_waiting == 2 and snap.in_flight == 1 and snap.max_in_flight == 1
    assert snap.creates_last_minute == 1
    assert snap.oldest_wait_s == pytest.approx(NOW + 5 - T0.timestamp(), abs=0.01)


def test_a_job_held_by_the_rate_starts_when_a_create_token_frees(client: Any) -> None:
    enqueue(client, [record(f"j{i}", i) for i in range(5)])
    waiting = room(client, slots=10, rpm=2)
    waiting.admit(PROVIDER, MODEL, now=NOW)  # j0, j1 at NOW: the window is full
    client.hset(keys.STATS_RENDER_SECONDS, mapping={f"sum|{PROVIDER}|{MODEL}": 30.0, f"le=+Inf|{PROVIDER}|{MODEL}": 1})
    starts = [waiting.standing(record(f"j{i}", i), now=NOW + 10) for i in (2, 3, 4)]
    assert [s.waiting_reason for s in starts] == [WaitingReason.RATE_LIMIT] * 3
    # j2 and j3 take the two tokens that free a minute after j0's and j1's creates; j4 the
    # next minute's.
    assert [s.estimated_start_at for s in starts] == [
        datetime.fromtimestamp(NOW + 60, UTC),
        datetime.fromtimestamp(NOW + 60, UTC),
        datetime.fromtimestamp(NOW + 10 + 120, UTC),
    ]
