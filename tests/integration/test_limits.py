"""Fleet-wide provider limits against a real Redis, and through real workers."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from producer import JobStatus, VideoRequest
from tests.integration.conftest import REDIS_URL, Stack
from videoqueue import keys
from videoqueue.limits import ModelLimits, ProviderLimits
from videoqueue.room import WaitingReason, WaitingRoom

pytestmark = pytest.mark.integration

MODEL = "seedance-1-5-pro-251215"


@pytest.fixture
def client() -> Any:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    client.flushdb()
    return client


def room(client: Any, in_flight: int = 3, rpm: int = 1000, lease_s: float = 60) -> WaitingRoom:
    return WaitingRoom(client, ProviderLimits(client, ModelLimits(in_flight, rpm), {}, lease_s))


def waiting_jobs(client: Any, model: str, n: int, prefix: str = "j") -> None:
    """`n` jobs of `model` waiting in its room (as an enqueue leaves them)."""
    pipe = client.pipeline()
    for i in range(n):
        pipe.zadd(keys.room_queue_key("byteplus", model, 5, "default"), {f"{prefix}{i}": i})
    pipe.zadd(f"{keys.room_prefix('byteplus', model)}:t:5", {"default": 0})
    pipe.sadd(keys.ROOMS, f"byteplus|{model}")
    pipe.execute()


def test_slots_cap_jobs_in_flight_and_the_slot_of_a_job_nobody_polls_expires(client: Any) -> None:
    waiting = room(client, in_flight=1, lease_s=0.5)
    waiting_jobs(client, MODEL, 3)
    assert waiting.admit("byteplus", MODEL).admitted == ["j0"]
    assert waiting.admit("byteplus", MODEL).admitted == []
    time.sleep(0.6)
    assert waiting.admit("byteplus", MODEL).admitted == ["j1"]  # j0 died without renewing
    for _ in range(3):
        time.sleep(0.3)
        waiting.limits.renew("byteplus", MODEL, "j1")
    assert waiting.admit("byteplus", MODEL).admitted == []  # a renewed slot stays taken


def test_a_429_backs_off_the_whole_fleet_for_that_model_only(client: Any) -> None:
    waiting = room(client, in_flight=100)
    other = "seedance-1-0-pro-250528"
    waiting_jobs(client, MODEL, 1)
    waiting_jobs(client, other, 1, prefix="o")
    waiting.limits.back_off("byteplus", MODEL, 7)
    waiting.limits.back_off("byteplus", MODEL, 2)  # a shorter back-off never shortens a longer one
    held = waiting.admit("byteplus", MODEL)
    assert held.admitted == [] and held.reason is WaitingReason.PROVIDER_BACKOFF
    assert held.wake_at is not None and 6 < held.wake_at - time.time() <= 7
    assert waiting.admit("byteplus", other).admitted == ["o0"]


def test_concurrent_workers_never_take_more_slots_than_the_cap(client: Any) -> None:
    waiting_jobs(client, MODEL, 100)
    granted: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def worker(n: int) -> None:
        mine = room(redis.Redis.from_url(REDIS_URL, decode_responses=True), in_flight=5)
        start.wait()
        for _ in range(5):
            admitted = mine.admit("byteplus", MODEL).admitted
            with lock:
                granted.extend(admitted)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(granted) == sorted(f"j{i}" for i in range(5))


def test_workers_keep_at_most_the_cap_in_flight_and_finish_everything(local_stack: Stack) -> None:
    local_stack.simulator.configure(latency=1.0, concurrency_per_model=1000)
    # The cap under test, small enough for 20 jobs to queue behind it (default 100 in
    # flight); the create rate (default 120/min) is raised so that it never binds here.
    local_stack.start_worker(concurrency=2, MAX_IN_FLIGHT_PER_MODEL="4", CREATES_PER_MINUTE_PER_MODEL="600")
    local_stack.start_worker(concurrency=2, MAX_IN_FLIGHT_PER_MODEL="4", CREATES_PER_MINUTE_PER_MODEL="600")
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"capped {i}") for i in range(20)])

    done = vq.wait([j.id for j in jobs], timeout=180)

    stats = local_stack.simulator.stats()
    print(f"limits: max_in_flight={stats['max_in_flight']} creates={stats['creates_total']}")
    assert all(j.status is JobStatus.SUCCEEDED for j in done)
    assert stats["max_in_flight"] <= 4
    assert stats["creates_total"] == 20
    assert (
        local_stack.keys(keys.slot_key("*", "*")) == []
        or local_stack.redis.zcard(keys.slot_key("byteplus", MODEL)) == 0
    )  # every final job gave its slot back


def test_provider_429s_slow_the_fleet_down_without_failing_a_job(local_stack: Stack) -> None:
    local_stack.simulator.configure(latency=0.5, create_429_rate=0.3, seed=7)
    local_stack.start_worker(concurrency=4)
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"busy provider {i}") for i in range(20)])

    done = vq.wait([j.id for j in jobs], timeout=180)

    stats = local_stack.simulator.stats()
    rate_limited = sum(j.submit_rate_limits for j in done)
    print(f"429s: {stats['create_attempts_total'] - stats['creates_total']} answered, {rate_limited} recorded")
    assert all(j.status is JobStatus.SUCCEEDED for j in done)
    assert set(stats["creates_by_prompt"].values()) == {1}
    assert rate_limited > 0
