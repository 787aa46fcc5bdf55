"""Every countdown the product schedules is bounded by the broker's visibility timeout
(less the longest task and a margin) and, before the provider has the task, by the job's
deadline; a longer wait is parked in the job store and the sweep sends it when due."""

from __future__ import annotations

import importlib
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_pipeline import Env, error, make_settings
from videoqueue.job import TASK_POLL, TASK_SUBMIT, ErrorCode, JobStatus, utcnow
from videoqueue.limits import ModelLimits, ProviderLimits
from videoqueue.queues import VISIBILITY_MARGIN_S, broker_timing
from videoqueue.recovery import recover_stranded
from videoqueue.settings import Settings, get_settings
from videoqueue.stalled import StallRule
from worker.pipeline import StoreRetry
from worker.schedule import RenderWindow, poll_delay, retry_delay, window_poll_delay

# Defaults, the shortened settings of the field report (a 366 s visibility timeout), and
# settings where one source of countdowns is much longer than the others.
CASES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "shortened": {"retry_max_s": 4, "poll_max_s": 2, "submit_lease_s": 5, "store_busy_s": 5},
    "long polls": {"poll_max_s": 900},
    "long retries": {"retry_max_s": 1200},
    "long lease": {"submit_lease_s": 600, "store_busy_s": 60},
}


def settings_for(case: str, **more: Any) -> Settings:
    # The bound tested here is the broker's own: no nearer horizon (test_parking.py has it).
    base = {
        "countdown_horizon_s": 1e9,
        "retry_max_s": 300,
        "poll_max_s": 60,
        "submit_lease_s": 180,
        "store_busy_s": 1500,
    }
    return make_settings(**{**base, **CASES[case], **more})


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, make_settings())


def sent_countdowns(env: Env) -> list[float]:
    return [countdown for *_, countdown in env.dispatch.take()]


def test_celeryconfig_takes_its_limits_and_visibility_timeout_from_broker_timing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {"RETRY_MAX_S": "4", "POLL_MAX_S": "2", "SUBMIT_LEASE_S": "5", "STORE_BUSY_S": "5"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    from videoqueue import celeryconfig

    config = importlib.reload(celeryconfig)
    timing = broker_timing(get_settings())
    assert config.broker_transport_options["visibility_timeout"] == timing.visibility_timeout_s == 371
    assert (config.task_soft_time_limit, config.task_time_limit) == (5, 305)
    assert timing.max_countdown_s == 6.0
    monkeypatch.undo()
    get_settings.cache_clear()
    importlib.reload(celeryconfig)


@pytest.mark.parametrize("case", list(CASES))
def test_a_countdown_and_its_task_end_within_the_visibility_timeout(case: str) -> None:
    timing = broker_timing(settings_for(case))
    assert timing.max_countdown_s + timing.time_limit_s + VISIBILITY_MARGIN_S <= timing.visibility_timeout_s
    assert timing.max_countdown_s > 0


@pytest.mark.parametrize("case", list(CASES))
def test_a_huge_retry_after_is_parked_until_the_deadline_not_sent(case: str, tmp_path: Path) -> None:
    env = Env(tmp_path, settings_for(case, job_deadline_s=3600))
    limit = env.pipeline.dispatch.max_countdown_s
    job_id = env.new_job()
    env.provider.create_results.append(error(ErrorCode.RATE_LIMITED, "slow down", retry_after=1_000_000))
    env.pipeline.submit(job_id)
    assert all(c <= limit for c in sent_countdowns(env))
    job = env.job(job_id)
    parked = env.store.parked_at(job_id)
    # Past the deadline there is nothing to wait for: the submit runs at the deadline
    # (every case's bound is below the hour left, so it waits parked, not as a message).
    assert parked is not None
    assert abs(parked - job.deadline_at.timestamp()) < 2
    assert env.store.due_at(job_id) == parked
    # retry_delay alone never exceeds RETRY_MAX_S, which the bound covers.
    assert retry_delay(3, env.settings, random.Random(1), retry_after=1_000_000) <= limit


@pytest.mark.parametrize("case", list(CASES))
def test_a_retry_after_shorter_than_the_bound_is_sent_as_it_is(case: str, tmp_path: Path) -> None:
    env = Env(tmp_path, settings_for(case, job_deadline_s=3600))
    limit = env.pipeline.dispatch.max_countdown_s
    job_id = env.new_job()
    env.provider.create_results.append(error(ErrorCode.RATE_LIMITED, "slow down", retry_after=limit - 1))
    env.pipeline.submit(job_id)
    [countdown] = sent_countdowns(env)
    assert limit - 1 <= countdown <= limit
    assert env.store.parked_at(job_id) is None


@pytest.mark.parametrize("case", list(CASES))
def test_poll_delays_stay_within_the_bound(case: str, tmp_path: Path) -> None:
    settings = settings_for(case)
    limit = broker_timing(settings).max_countdown_s
    rng = random.Random(3)
    window = RenderWindow(10.0, 60.0)
    for n in range(1, 80):
        assert poll_delay(n * 1000.0, settings, rng) <= limit
        assert poll_delay(0, settings, rng, first=True) <= limit
        assert window_poll_delay(n * 1000.0, window, settings, rng) <= limit
    # A long POLL_INITIAL_S: the first poll stays within the bound too (POLL_MAX_S caps it).
    env = Env(tmp_path, settings_for(case, poll_initial_s=5000, job_deadline_s=7200))
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    assert sent_countdowns(env) and all(c <= min(limit, settings.poll_max_s) for c in sent_countdowns(env))


@pytest.mark.parametrize("case", list(CASES))
def test_store_retry_countdowns_stay_within_the_bound(case: str, tmp_path: Path) -> None:
    env = Env(tmp_path, settings_for(case, store_max_attempts=40))
    limit = env.pipeline.dispatch.max_countdown_s
    job_id = env.downloading_job()

    def broken() -> Any:
        raise ValueError("no storage")

    env.pipeline.storage = broken
    for _ in range(39):
        with pytest.raises(StoreRetry) as raised:
            env.pipeline.store_video(job_id)
        assert raised.value.countdown <= limit


@pytest.mark.parametrize("case", list(CASES))
def test_a_job_waiting_for_quota_sends_nothing_and_is_parked_until_its_deadline(case: str, tmp_path: Path) -> None:
    env = Env(tmp_path, settings_for(case, job_deadline_s=7200))
    limits = ProviderLimits(env.store.redis, ModelLimits(1, 1), {}, 60)
    env.use_room(limits)
    job_id = env.new_job()
    job = env.job(job_id)
    # The fleet-wide back-off a 429 with a long Retry-After leaves.
    limits.back_off(job.provider, job.model, 500.0)
    env.pipeline.submit(job_id)
    assert sent_countdowns(env) == []  # no message while it waits, whatever the bound
    assert env.provider.calls == []
    assert env.store.parked_at(job_id) == pytest.approx(job.deadline_at.timestamp())


def test_the_sweep_sends_a_parked_step_when_due_and_not_before(env: Env) -> None:
    job_id = env.new_job()
    due = utcnow() + timedelta(seconds=100)
    env.store.park(job_id, due.timestamp())
    sent: list[tuple[str, list[Any]]] = []

    def send(name: str, args: list[Any]) -> None:
        sent.append((name, args))

    early = recover_stranded(
        env.store, send, StallRule(floor_s=300, max_interval_s=300), now=due - timedelta(seconds=1)
    )
    assert sent == [] and early.total == 0 and early.unparked == []
    # Due: sent at once, not RECOVER_AFTER_S later, and not counted as a lost message.
    report = recover_stranded(
        env.store, send, StallRule(floor_s=300, max_interval_s=300), now=due + timedelta(seconds=1)
    )
    assert sent == [(TASK_SUBMIT, [job_id])]
    assert report.unparked == [job_id] and report.total == 0
    assert env.store.parked_at(job_id) is None
    again = recover_stranded(
        env.store, send, StallRule(floor_s=300, max_interval_s=300), now=due + timedelta(seconds=2)
    )
    assert len(sent) == 1 and again.unparked == []
    # Should that message be lost, the due index still has it: recovered like any other.
    late = recover_stranded(
        env.store, send, StallRule(floor_s=300, max_interval_s=300), now=due + timedelta(seconds=301)
    )
    assert late.total == 1 and sent[-1] == (TASK_SUBMIT, [job_id])


def test_a_parked_poll_is_sent_with_its_sequence_number(env: Env) -> None:
    job_id = env.running_job()
    env.store.park(job_id, utcnow().timestamp())
    sent: list[tuple[str, list[Any]]] = []
    recover_stranded(
        env.store, lambda name, args: sent.append((name, args)), StallRule(floor_s=300, max_interval_s=300)
    )
    assert sent == [(TASK_POLL, [job_id, 1])]


def test_sending_a_step_or_ending_the_job_clears_its_parked_wait(env: Env) -> None:
    job_id = env.new_job()
    env.store.park(job_id, utcnow().timestamp() + 50)
    env.pipeline.dispatch.submit(job_id, countdown=1.0)
    assert env.store.parked_at(job_id) is None
    env.store.park(job_id, utcnow().timestamp() + 50)
    env.store.transition(job_id, {JobStatus.QUEUED}, JobStatus.CANCELLED)
    assert env.store.parked_at(job_id) is None
