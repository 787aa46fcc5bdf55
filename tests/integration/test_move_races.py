"""Status moves as server-side scripts, raced on real Redis: two workers (threads, each
with its own connection) move the same job at the same moment, many rounds over. Exactly
one wins every race, no update is lost, a task is claimed by one job, and a final move's
side effects (ledger entry, settled cost, counters) happen once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
import redis

from tests.integration.conftest import REDIS_URL
from tests.unit.helpers import seedance_request
from videoqueue import keys, stats
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore, TaskClaimedError
from videoqueue.ledger import Ledger

pytestmark = pytest.mark.integration

ROUNDS = 150


@pytest.fixture
def stores(redis_client: redis.Redis) -> Iterator[tuple[JobStore, JobStore]]:
    redis_client.flushdb()
    yield JobStore.from_url(REDIS_URL), JobStore.from_url(REDIS_URL)
    redis_client.flushdb()


def new_job(job_id: str) -> JobRecord:
    now = utcnow()
    return JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request=seedance_request(f"prompt {job_id}", audio=True),
        cost_estimate_usd=Decimal("0.25"),
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=2),
    )


def race(first: Callable[[], Any], second: Callable[[], Any]) -> list[Any]:
    """Run both at once (released by one barrier); their results or raised exceptions."""
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(slot: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[slot] = call()
        except Exception as exc:  # the race's outcome, checked by the test
            results[slot] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_workers_moving_one_job_at_once_one_wins_every_round(stores: tuple[JobStore, JobStore]) -> None:
    one, two = stores
    one.create_many([new_job(f"race-{i}") for i in range(ROUNDS)])
    for i in range(ROUNDS):
        job_id = f"race-{i}"
        results = race(
            partial(one.transition, job_id, {JobStatus.QUEUED}, JobStatus.SUBMITTING, attempts=1),
            partial(two.transition, job_id, {JobStatus.QUEUED}, JobStatus.SUBMITTING, attempts=2),
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        assert one.get(job_id) == winners[0]
        assert [(h["from"], h["to"]) for h in winners[0].history] == [("queued", "submitting")]
    assert one.count_by_status()["submitting"] == ROUNDS and one.count_by_status()["queued"] == 0


def test_two_workers_updating_one_job_lose_no_update(stores: tuple[JobStore, JobStore]) -> None:
    one, two = stores
    one.create_many([new_job("counted")])

    def bump(record: JobRecord) -> JobRecord:
        record.attempts += 1
        return record

    def many(store: JobStore) -> int:
        for _ in range(ROUNDS):
            assert store.update("counted", bump) is not None
        return ROUNDS

    assert race(lambda: many(one), lambda: many(two)) == [ROUNDS, ROUNDS]
    record = one.get("counted")
    assert record is not None and record.attempts == 2 * ROUNDS


def test_two_jobs_racing_for_one_task_one_claims_it_and_the_other_stores_nothing(
    stores: tuple[JobStore, JobStore],
) -> None:
    one, two = stores
    for i in range(ROUNDS):
        a, b = f"claim-a-{i}", f"claim-b-{i}"
        one.create_many([new_job(a), new_job(b)])
        for job_id in (a, b):
            one.transition(job_id, {JobStatus.QUEUED}, JobStatus.SUBMITTING)
        task = f"task-{i}"
        results = race(
            partial(one.transition, a, {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id=task),
            partial(two.transition, b, {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id=task),
        )
        claimed = [r for r in results if isinstance(r, JobRecord)]
        refused = [r for r in results if isinstance(r, TaskClaimedError)]
        assert len(claimed) == 1 and len(refused) == 1, results
        winner = claimed[0].id
        loser = b if winner == a else a
        assert one.task_owners("byteplus", [task]) == {task: winner}
        record = one.get(loser)
        assert record is not None and record.status is JobStatus.SUBMITTING and record.provider_task_id is None


def test_racing_final_moves_settle_and_count_the_job_once(
    stores: tuple[JobStore, JobStore], redis_client: redis.Redis
) -> None:
    one, two = stores
    ids = [f"end-{i}" for i in range(ROUNDS)]
    one.create_many([new_job(j) for j in ids])
    for job_id in ids:
        one.transition(job_id, {JobStatus.QUEUED}, JobStatus.SUBMITTING)
        one.transition(job_id, {JobStatus.SUBMITTING}, JobStatus.RUNNING, provider_task_id=f"t-{job_id}")
        one.transition(job_id, {JobStatus.RUNNING}, JobStatus.DOWNLOADING, cost_usd=Decimal("0.2"), billed_units=1)
    for job_id in ids:
        results = race(
            partial(one.transition, job_id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED, output_uri="file:///v"),
            partial(two.transition, job_id, {JobStatus.DOWNLOADING}, JobStatus.FAILED),
        )
        assert len([r for r in results if r is not None]) == 1, results
    entries = Ledger(redis_client).entries()
    assert sorted(e.job_id for e in entries) == sorted(ids)
    model = ("byteplus", "seedance-1-5-pro-251215")

    def counter(key: str, field: str) -> int:
        value: Any = redis_client.hget(key, field)
        return int(value or 0)

    assert counter(keys.STATS_COST, "jobs|{}|{}".format(*model)) == ROUNDS
    assert counter(keys.STATS_COST, "actual|{}|{}".format(*model)) == ROUNDS * 200_000
    ended = [counter(keys.STATS_JOBS, stats.jobs_field(s, *model)) for s in ("succeeded", "failed")]
    assert sum(ended) == ROUNDS
    assert counter(keys.STATS_JOBS, stats.jobs_field("downloading", *model)) == 0
