"""The park/send decision and the park timer (videoqueue.parking): a step is a countdown
message only within the horizon and under the fleet's held bound; the timer sends parked
steps when due, in bounded batches, and re-arms for the next."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest

from tests.unit.test_pipeline import Env, make_settings
from videoqueue import keys
from videoqueue.job import TASK_POLL, TASK_SUBMIT, JobStatus
from videoqueue.limits import ModelLimits, ProviderLimits
from videoqueue.parking import Parking, eta_task_limit
from videoqueue.recovery import run_park_timer

NOW = 1_000_000.0


def parking(client: fakeredis.FakeRedis, **overrides: float) -> Parking:
    values: dict[str, float] = {"horizon_s": 60.0, "held_max": 3, "longest_countdown_s": 3000.0, "lead_s": 5.0}
    values.update(overrides)
    return Parking(
        client,
        horizon_s=values["horizon_s"],
        held_max=int(values["held_max"]),
        longest_countdown_s=values["longest_countdown_s"],
        lead_s=values["lead_s"],
        batch=int(values.get("batch", 500)),
    )


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


def active(client: fakeredis.FakeRedis, *job_ids: str, due: float = NOW - 1) -> None:
    """Jobs in the due index (as the job store puts every active job), due in the past."""
    client.zadd(keys.DUE_INDEX, {job_id: due for job_id in job_ids})


def timer(client: fakeredis.FakeRedis) -> float | None:
    value: str | None = client.get(keys.PARK_TIMER)  # type: ignore[assignment]
    return float(value) if value is not None else None


def test_a_step_within_the_horizon_and_under_the_bound_is_sent(client: fakeredis.FakeRedis) -> None:
    active(client, "a")
    client.zadd(keys.PARKED_INDEX, {"a": NOW - 5})  # parked before: a message now goes
    placed = parking(client).place("a", NOW + 30, now=NOW)
    assert placed.send and placed.timer_countdown is None
    assert client.zscore(keys.DUE_INDEX, "a") == NOW + 30
    assert client.zscore(keys.PARKED_INDEX, "a") is None
    assert timer(client) is None


def test_a_wait_beyond_the_horizon_is_parked_and_arms_the_timer_before_it_is_due(
    client: fakeredis.FakeRedis,
) -> None:
    active(client, "a", "b", "c")
    park = parking(client)
    placed = park.place("a", NOW + 600, now=NOW)
    assert not placed.send
    assert placed.timer_countdown == pytest.approx(595.0)  # the lead: sent with its last 5 s
    assert client.zscore(keys.PARKED_INDEX, "a") == client.zscore(keys.DUE_INDEX, "a") == NOW + 600
    assert timer(client) == pytest.approx(NOW + 595)
    # A later one: the timer already runs before it, no second message.
    assert park.place("b", NOW + 900, now=NOW).timer_countdown is None
    assert timer(client) == pytest.approx(NOW + 595)
    # An earlier one re-arms it (one more message; the later one's run finds nothing due).
    assert park.place("c", NOW + 100, now=NOW).timer_countdown == pytest.approx(95.0)
    assert timer(client) == pytest.approx(NOW + 95)


def test_the_timer_countdown_never_exceeds_the_brokers_bound(client: fakeredis.FakeRedis) -> None:
    active(client, "a")
    placed = parking(client, longest_countdown_s=300.0, horizon_s=60.0).place("a", NOW + 86_400, now=NOW)
    assert placed.timer_countdown == pytest.approx(300.0)


def test_at_the_held_bound_a_near_step_is_parked_but_a_step_due_now_is_sent(client: fakeredis.FakeRedis) -> None:
    active(client, "a", "b", "c", "d", "e")
    park = parking(client, held_max=2)
    assert park.place("a", NOW + 10, now=NOW).send
    assert park.place("b", NOW + 20, now=NOW).send
    assert park.held(now=NOW) == 2
    placed = park.place("c", NOW + 15, now=NOW)
    assert not placed.send and placed.timer_countdown == pytest.approx(10.0)
    assert client.zscore(keys.PARKED_INDEX, "c") == NOW + 15
    assert park.held(now=NOW) == 2  # a parked step is not held
    # Due now: not a held message (Celery runs it at once), so the bound does not apply.
    assert park.place("d", NOW, now=NOW).send
    # A job already counted (its own earlier due time) is not one more message.
    assert park.place("a", NOW + 12, now=NOW).send


def test_the_held_count_is_read_from_the_indexes_so_nothing_is_left_wrong_by_a_crash(
    client: fakeredis.FakeRedis,
) -> None:
    park = parking(client)
    active(client, "past")
    client.zadd(keys.DUE_INDEX, {"held1": NOW + 10, "held2": NOW + 50, "parked": NOW + 900})
    client.zadd(keys.PARKED_INDEX, {"parked": NOW + 900, "overdue": NOW - 3})
    assert park.held(now=NOW) == 2
    # Time passes: the held messages came due (delivered and run, or lost): none counts.
    assert park.held(now=NOW + 60) == 0


def test_a_timer_run_sends_what_is_due_and_the_near_ones_with_their_countdown(client: fakeredis.FakeRedis) -> None:
    park = parking(client, held_max=10)
    for job_id, due in {"due1": NOW - 2, "due2": NOW, "near": NOW + 3, "later": NOW + 40}.items():
        client.zadd(keys.DUE_INDEX, {job_id: due})
        client.zadd(keys.PARKED_INDEX, {job_id: due})
    run = park.take_due(now=NOW)
    assert [job for job, _ in run.steps] == ["due1", "due2", "near"]
    assert [countdown for _, countdown in run.steps] == pytest.approx([0.0, 0.0, 3.0])
    assert client.zrange(keys.PARKED_INDEX, 0, -1) == ["later"]
    assert run.timer_countdown == pytest.approx(35.0)  # later's due time less the lead
    assert timer(client) == pytest.approx(NOW + 35)
    # A second run (a duplicate message) takes nothing twice.
    again = park.take_due(now=NOW)
    assert again.steps == [] and again.timer_countdown == pytest.approx(35.0)


def test_a_timer_run_at_the_held_bound_leaves_near_ones_for_their_due_time(client: fakeredis.FakeRedis) -> None:
    park = parking(client, held_max=1)
    client.zadd(keys.DUE_INDEX, {"held": NOW + 30, "near": NOW + 3})
    client.zadd(keys.PARKED_INDEX, {"near": NOW + 3})
    run = park.take_due(now=NOW)
    assert run.steps == []
    assert run.timer_countdown == pytest.approx(3.0)  # at its due time, sent with no countdown
    assert park.take_due(now=NOW + 3).steps == [("near", 0.0)]


def test_a_timer_run_sends_at_most_a_batch_and_runs_again_at_once(client: fakeredis.FakeRedis) -> None:
    park = parking(client, batch=2)
    ids = {f"j{i}": NOW - 10 + i for i in range(5)}
    client.zadd(keys.DUE_INDEX, ids)
    client.zadd(keys.PARKED_INDEX, ids)
    first = park.take_due(now=NOW)
    assert [job for job, _ in first.steps] == ["j0", "j1"]
    assert first.timer_countdown == 0.0
    assert [job for job, _ in park.take_due(now=NOW).steps] == ["j2", "j3"]
    last = park.take_due(now=NOW)
    assert [job for job, _ in last.steps] == ["j4"] and last.timer_countdown is None
    assert timer(client) is None


def test_arm_repairs_a_lost_timer_and_leaves_a_live_one(client: fakeredis.FakeRedis) -> None:
    park = parking(client)
    assert park.arm(now=NOW) is None  # nothing parked
    client.zadd(keys.PARKED_INDEX, {"a": NOW + 100})
    assert park.arm(now=NOW) == pytest.approx(95.0)
    assert park.arm(now=NOW) is None  # armed: its message is on its way
    client.delete(keys.PARK_TIMER)  # its message lost, the key expired
    assert park.arm(now=NOW + 200) == 0.0  # overdue: at once


def test_the_horizon_and_lead_are_bounded_by_the_brokers_countdown() -> None:
    park = parking(fakeredis.FakeRedis(), horizon_s=1e9, longest_countdown_s=400.0, lead_s=5.0)
    assert park.horizon_s == 400.0
    assert parking(fakeredis.FakeRedis(), horizon_s=2.0).lead_s == 2.0


def test_celerys_eta_limit_is_above_the_held_bound_with_margin() -> None:
    for held_max in (1, 100, 2000, 100_000):
        assert eta_task_limit(held_max) >= held_max + 200
    assert eta_task_limit(2000) == 2500


def test_a_poll_beyond_the_horizon_is_parked_by_the_pipeline_and_sent_by_the_timer(tmp_path: Path) -> None:
    unparks: list[float] = []
    env = Env(tmp_path, make_settings(countdown_horizon_s=1.0, poll_initial_s=5))
    env.pipeline.dispatch.send_unpark = unparks.append
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    assert env.dispatch.take() == []  # the first poll (5 s) is beyond the 1 s horizon
    assert env.store.parked_at(job_id) is not None
    assert len(unparks) == 1 and 3.0 <= unparks[0] <= 4.5  # due in 5 s, less the 1 s lead

    sent: list[tuple[str, list[object], float]] = []
    parking_ = env.pipeline.dispatch.parking
    env.store.redis.zadd(keys.PARKED_INDEX, {job_id: 0}, xx=True)  # its time has come
    ids = run_park_timer(env.store, parking_, lambda n, a, c: sent.append((n, a, c)), unparks.append)
    assert ids == [job_id] and sent == [(TASK_POLL, [job_id, 1], 0.0)]
    assert env.store.parked_at(job_id) is None


def test_the_timer_skips_jobs_that_ended_and_sends_the_step_their_status_calls_for(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    queued, ended = env.new_job(), env.new_job()
    env.store.update(ended, lambda r: r.model_copy(update={"status": JobStatus.CANCELLED}))
    for job_id in (queued, ended):
        env.store.redis.zadd(keys.PARKED_INDEX, {job_id: 1.0})
    sent: list[tuple[str, list[object], float]] = []
    parking_ = env.pipeline.dispatch.parking
    assert run_park_timer(env.store, parking_, lambda n, a, c: sent.append((n, a, c)), lambda c: None) == [queued]
    assert sent == [(TASK_SUBMIT, [queued], 0.0)]


def test_a_job_the_waiting_room_parks_until_its_deadline_arms_the_timer(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(job_deadline_s=7200))
    limits = ProviderLimits(env.store.redis, ModelLimits(1, 1), {}, 60)
    env.use_room(limits)
    unparks: list[float] = []
    env.pipeline.dispatch.send_unpark = unparks.append
    job_id = env.new_job()
    job = env.job(job_id)
    limits.back_off(job.provider, job.model, 500.0)  # no quota: it waits in the room
    env.pipeline.submit(job_id)
    assert env.store.parked_at(job_id) == pytest.approx(job.deadline_at.timestamp())
    # One unpark message, by the deadline (bounded by the broker's countdown): at the
    # deadline the timer sends its submit, which ends it, not the next sweep.
    [countdown] = unparks
    assert 0 < countdown <= min(7200.0, env.pipeline.dispatch.max_countdown_s)
    env.pipeline.submit(job_id)  # its submit again (a duplicate): the timer is armed already
    assert len(unparks) == 1
