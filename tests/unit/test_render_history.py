"""Render-time history and the learned poll window, through the pipeline with a fake Redis."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import fakeredis
import pytest

from tests.unit.helpers import seedance_request
from tests.unit.test_pipeline import Env, make_settings, state, succeeded
from videoqueue import keys
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.limits import ModelLimits, ProviderLimits
from worker.providers.base import TaskState, TaskStatus
from worker.render_history import RenderHistory, history_key


def _with_history(env: Env, client: fakeredis.FakeRedis | None = None, size: int = 200) -> RenderHistory:
    history = RenderHistory(client or env.store.redis, size=size, cache_s=30, min_samples=10)
    env.pipeline.history = history
    return history


def _raw(env: Env, job_id: str) -> list[str]:
    values: list[str] = env.store.redis.lrange(history_key(env.job(job_id)), 0, -1)  # type: ignore[assignment]
    return values


def _stored(env: Env, job_id: str) -> list[float]:
    return [float(v.removeprefix("~")) for v in _raw(env, job_id)]


def _age(env: Env, job_id: str, submitted_ago: float, last_change_ago: float) -> None:
    """Rewrite the record as if submitted and last changed that many seconds ago."""
    now = utcnow()
    record = env.job(job_id).model_copy(
        update={
            "submitted_at": now - timedelta(seconds=submitted_ago),
            "updated_at": now - timedelta(seconds=last_change_ago),
        }
    )
    env.store.redis.set(keys.job_key(job_id), record.model_dump_json())


def test_history_key_is_the_kind_of_job(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    job = env.job(env.new_job())
    assert history_key(job) == keys.render_history_key("byteplus", "seedance-1-5-pro-251215", "720p", 5, "default")


def test_a_success_adds_one_render_time_and_a_redelivery_none(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    _with_history(env)
    job_id = env.running_job()
    _age(env, job_id, submitted_ago=40, last_change_ago=20)
    env.provider.get_results.append(succeeded())
    env.pipeline.poll(job_id, 1)
    assert env.job(job_id).status is JobStatus.DOWNLOADING
    # No finish time from the provider: midway between the last poll and now, approximate
    # since that poll was long ago.
    assert _raw(env, job_id)[0].startswith("~")
    assert _stored(env, job_id) == [pytest.approx(30, abs=0.5)]
    env.pipeline.poll(job_id, 1)  # the same poll, delivered again
    assert len(_stored(env, job_id)) == 1


def test_a_provider_finish_time_is_used_when_it_is_plausible(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    _with_history(env)
    first, second = env.running_job(), env.running_job()
    _age(env, first, submitted_ago=40, last_change_ago=20)
    _age(env, second, submitted_ago=40, last_change_ago=20)
    env.provider.get_results.append(succeeded_at(utcnow() - timedelta(seconds=5)))
    env.pipeline.poll(first, 1)
    assert float(_raw(env, first)[0]) == pytest.approx(35, abs=0.5)  # precise: no "~"
    # Before the last poll that saw the task running: a clock that is off, not believed.
    env.provider.get_results.append(succeeded_at(utcnow() - timedelta(seconds=30)))
    env.pipeline.poll(second, 1)
    assert _stored(env, second)[0] == pytest.approx(30, abs=0.5)


def succeeded_at(moment: datetime) -> TaskState:
    return replace(succeeded(), finished_at=moment)


def test_history_is_capped(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    history = _with_history(env, size=3)
    job = env.job(env.new_job())
    for seconds in (1.0, 2.0, 3.0, 4.0):
        history.add(job, seconds)
    assert [float(v) for v in env.store.redis.lrange(history_key(job), 0, -1)] == [4.0, 3.0, 2.0]  # type: ignore[union-attr]


def test_reads_are_cached_per_process() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    now = [100.0]
    history = RenderHistory(client, size=10, cache_s=30, min_samples=1, clock=lambda: now[0])
    key = keys.render_history_key("byteplus", "m", "720p", 5, "default")
    job = _job_of_key()
    assert history_key(job) == key
    client.lpush(key, "40")
    assert history.render_times(job) == [40.0]
    client.lpush(key, "41")
    now[0] += 29
    assert history.render_times(job) == [40.0]  # still the cached read
    now[0] += 2
    assert history.render_times(job) == [41.0, 40.0]


def _job_of_key() -> JobRecord:
    now = utcnow()
    return JobRecord(
        id="j",
        status=JobStatus.RUNNING,
        provider="byteplus",
        model="m",
        request=seedance_request("p", model="m"),
        cost_estimate_usd=0,
        created_at=now,
        updated_at=now,
        deadline_at=now,
    )


def test_enough_history_puts_the_first_poll_at_the_window(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(poll_interval_s=3, poll_window_low_q=0.1, poll_window_high_q=0.9))
    history = _with_history(env)
    job_id = env.new_job()
    for seconds in range(40, 51):
        history.add(env.job(job_id), float(seconds))
    env.pipeline.submit(job_id)
    [(kind, _, seq, countdown)] = env.dispatch.take()
    assert (kind, seq) == ("poll", 1)
    assert countdown == pytest.approx(41.0, abs=0.2)  # q10 of 40..50
    _age(env, job_id, submitted_ago=44, last_change_ago=3)
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.poll(job_id, 1)
    assert env.dispatch.take() == [("poll", job_id, 2, 3.0)]  # inside: every POLL_INTERVAL_S


def test_while_jobs_wait_for_the_model_it_is_polled_at_the_backlog_interval(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(poll_interval_s=3, poll_window_low_q=0.1, poll_window_high_q=0.9))
    env.use_room(ProviderLimits(env.store.redis, ModelLimits(1, 100), {}, 900.0))
    history = _with_history(env)
    job_id, waiting_id = env.new_job(), env.new_job()
    for seconds in range(40, 51):
        history.add(env.job(job_id), float(seconds))
    env.pipeline.submit(job_id)
    env.pipeline.submit(waiting_id)  # no slot left: it waits in the room
    assert [kind for kind, *_ in env.dispatch.take()] == ["poll"]
    _age(env, job_id, submitted_ago=44, last_change_ago=1)
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.poll(job_id, 1)
    assert env.dispatch.take() == [("poll", job_id, 2, 1.0)]  # POLL_INTERVAL_BACKLOG_S, not 3 s


def test_too_little_history_keeps_the_backoff_schedule(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    history = _with_history(env)
    job_id = env.new_job()
    for seconds in range(40, 45):
        history.add(env.job(job_id), float(seconds))
    env.pipeline.submit(job_id)
    assert env.dispatch.take() == [("poll", job_id, 1, 5.0)]  # POLL_INITIAL_S


def test_an_unreachable_history_never_fails_a_step(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    server = fakeredis.FakeServer()
    server.connected = False
    _with_history(env, fakeredis.FakeRedis(server=server))
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    assert env.dispatch.take() == [("poll", job_id, 1, 5.0)]  # the backoff schedule
    env.provider.get_results.append(succeeded())
    env.pipeline.poll(job_id, 1)
    assert env.job(job_id).status is JobStatus.DOWNLOADING
    assert env.dispatch.take() == [("store", job_id, None, 0)]


def test_precise_render_times_push_out_approximate_ones() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    history = RenderHistory(client, size=50, cache_s=0, min_samples=3)
    job = _job_of_key()
    for seconds in (20.0, 21.0, 22.0):
        history.add(job, seconds, precise=False)
    history.add(job, 40.0)
    assert sorted(history.render_times(job)) == [20.0, 21.0, 22.0, 40.0]  # too few precise: all
    history.add(job, 41.0)
    history.add(job, 42.0)
    assert sorted(history.render_times(job)) == [40.0, 41.0, 42.0]


def test_a_success_seen_soon_after_the_last_poll_is_precise(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(poll_interval_s=3))
    _with_history(env)
    job_id = env.running_job()
    _age(env, job_id, submitted_ago=40, last_change_ago=3)
    env.provider.get_results.append(succeeded())
    env.pipeline.poll(job_id, 1)
    assert float(_raw(env, job_id)[0]) == pytest.approx(38.5, abs=0.5)
