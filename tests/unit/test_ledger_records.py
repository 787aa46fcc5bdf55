"""The ledger without per-job rows beside the records (issue 18, item 2), on fakeredis: a
finished job leaves no `ledger:entry:*` key and no `ledger:index` member, its entry is
derived from its record, and the costs by day, tag and status stay equal to the manifests'
across the records' expiry, `costs rebuild` run twice, Redis losing everything, a second
end, a prune, and rows an earlier version wrote."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from producer import Settings, VideoQueue, VideoRequest
from tests.unit.helpers import walk_to
from tests.unit.test_stored_form import OLD_FAILED_IN_STORAGE
from videoqueue import keys, ledger, ledger_days
from videoqueue.budget_rebuild import rebuild_counters
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.keys import job_key, ledger_entry_key
from videoqueue.ledger import GROUPS, REMOVED, Ledger, LedgerEntry, summarize, write_entry
from videoqueue.settings import get_settings

RETENTION = 30 * 86400
COST = Decimal("0.249163")


@pytest.fixture
def redis_client() -> Iterator[Any]:
    get_settings.cache_clear()
    yield fakeredis.FakeRedis(decode_responses=True)
    get_settings.cache_clear()


def _queue(client: Any) -> VideoQueue:
    return VideoQueue(Settings(), store=JobStore(client))


def _ended(vq: VideoQueue, prompt: str, tags: tuple[str, ...], status: JobStatus, cost: str = "0.249163") -> str:
    job = vq.prepare(VideoRequest(prompt=prompt, tags=tags))
    vq.store.create_many([job.record], budget=vq.budget)
    walk_to(vq.store, job.record.id, JobStatus.DOWNLOADING, cost_usd=Decimal(cost), billed_units=103818)
    error = JobFailure(code=ErrorCode.STORAGE, message="bucket refused") if status is JobStatus.FAILED else None
    assert vq.store.transition(job.record.id, {JobStatus.DOWNLOADING}, status, error=error) is not None
    return job.record.id


def _manifest(vq: VideoQueue, job_id: str) -> LedgerEntry:
    """The ledger entry the job's manifest holds (worker/manifest.py: `for_job`)."""
    record = vq.store.get(job_id)
    assert record is not None
    entry = LedgerEntry.for_job(record)
    assert entry is not None
    return entry


def _report(client: Any, by: str, **filters: Any) -> list[tuple[str, int, Decimal]]:
    return [(r.group, r.jobs, r.actual_usd) for r in Ledger(client).report(by, **filters)]  # type: ignore[arg-type]


def _expected(entries: list[LedgerEntry], by: str) -> list[tuple[str, int, Decimal]]:
    return [(r.group, r.jobs, r.actual_usd) for r in summarize(entries, by)]


def _no_rows(client: Any) -> bool:
    return bool(client.keys("*ledger:entry:*") == [] and client.zcard(keys.LEDGER_INDEX) == 0)


def _three(vq: VideoQueue) -> list[str]:
    return [
        _ended(vq, "fox", ("ads",), JobStatus.SUCCEEDED),
        _ended(vq, "owl", ("ads", "q4"), JobStatus.SUCCEEDED, "0.40"),
        _ended(vq, "cat", (), JobStatus.FAILED, "1.20"),
    ]


def test_a_finished_job_leaves_no_ledger_row_and_its_costs_are_right_by_day_tag_and_status(
    redis_client: Any,
) -> None:
    vq = _queue(redis_client)
    ids = _three(vq)
    manifests = [_manifest(vq, i) for i in ids]
    assert _no_rows(redis_client)
    assert redis_client.ttl(job_key(ids[0])) > RETENTION - 10  # the record holds the entry, as long
    assert sorted(Ledger(redis_client).entries(), key=lambda e: e.job_id) == sorted(manifests, key=lambda e: e.job_id)
    for by in GROUPS:
        assert _report(redis_client, by) == _expected(manifests, by)
    assert _report(redis_client, "status", tag="q4") == [
        ("succeeded", 1, Decimal("0.40")),
        ("total", 1, Decimal("0.40")),
    ]
    day = manifests[0].settled_at.date()
    assert [e.job_id for e in Ledger(redis_client).entries(day, day)] == [e.job_id for e in manifests]
    before = day - timedelta(days=1)
    assert Ledger(redis_client).entries(before, before) == []
    # Budget counters recount from the entries the records give.
    rebuilt = rebuild_counters(redis_client, dry_run=True)
    assert rebuilt.entries == 3 and rebuilt.changes == []


def test_costs_stay_right_across_expiry_and_a_rebuild_run_twice(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq = _queue(redis_client)
    ids = _three(vq)
    manifests = [_manifest(vq, i) for i in ids]
    expected = {by: _expected(manifests, by) for by in ("day", "tag", "status")}

    while_alive = Ledger(redis_client).merge(manifests)  # records live: nothing to add
    assert (while_alive.added, while_alive.changed, while_alive.unchanged, while_alive.pending) == ([], [], 3, [])
    assert _no_rows(redis_client)

    redis_client.delete(*(job_key(i) for i in ids))  # the records expired...
    later = datetime.now(UTC).timestamp() + RETENTION + 60
    monkeypatch.setattr(ledger, "time_now", lambda: later)  # ...JOB_RETENTION_S after the end
    assert Ledger(redis_client).entries() == []
    for by, rows in expected.items():
        assert _report(redis_client, by) == rows
    for _ in range(2):
        again = Ledger(redis_client).merge(manifests)
        assert (again.added, again.changed, again.unchanged) == ([], [], 3)
        for by, rows in expected.items():
            assert _report(redis_client, by) == rows
    assert _no_rows(redis_client)


def test_a_rebuild_after_redis_lost_everything_counts_each_job_once(redis_client: Any) -> None:
    vq = _queue(redis_client)
    manifests = [_manifest(vq, i) for i in _three(vq)]
    redis_client.flushall()
    for run in range(2):
        diff = Ledger(redis_client).merge(manifests)
        assert len(diff.added) == (3 if run == 0 else 0)
        for by in ("day", "tag", "status"):
            assert _report(redis_client, by) == _expected(manifests, by)
    # Rows for jobs whose record is gone: they follow the retention from the settlement.
    assert 0 < redis_client.ttl(ledger_entry_key(manifests[0].job_id)) <= RETENTION + 1
    assert sorted(Ledger(redis_client).entries(), key=lambda e: e.job_id) == sorted(manifests, key=lambda e: e.job_id)


def test_a_rebuild_leaves_a_running_job_to_its_final_move(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job = vq.prepare(VideoRequest(prompt="fox"))
    vq.store.create_many([job.record], budget=vq.budget)
    running = walk_to(vq.store, job.record.id, JobStatus.DOWNLOADING, cost_usd=COST, billed_units=1)
    assert running is not None
    ending = running.model_copy(update={"status": JobStatus.SUCCEEDED, "finished_at": datetime.now(UTC)})
    entry = LedgerEntry.for_job(ending)  # its manifest, written before the move
    assert entry is not None
    diff = Ledger(redis_client).merge([entry])
    assert (diff.added, diff.pending, diff.after_jobs) == ([], [entry], 0)
    assert _no_rows(redis_client)
    vq.store.transition(job.record.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)
    assert _report(redis_client, "status") == [("succeeded", 1, COST), ("total", 1, COST)]


def test_a_second_end_and_its_manifest_are_counted_once(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job_id = _ended(vq, "fox", ("ads",), JobStatus.FAILED)
    first = _manifest(vq, job_id)
    vq.store.transition(job_id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    # Reopened (`store retry`): still counted, as it failed.
    assert [(e.status, e.settled_at) for e in Ledger(redis_client).entries()] == [("failed", first.settled_at)]
    assert Ledger(redis_client).merge([first]).unchanged == 1
    vq.store.transition(job_id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)
    [entry] = Ledger(redis_client).entries()
    assert (entry.status, entry.settled_at, entry.actual_usd) == ("succeeded", first.settled_at, COST)
    assert _report(redis_client, "status") == [("succeeded", 1, COST), ("total", 1, COST)]
    assert _no_rows(redis_client)

    # The manifest of the second end says it settled then: the rebuild moves it there, in a
    # row that outlives the record (else the record's entry would show again).
    second = _manifest(vq, job_id)
    assert second.settled_at != first.settled_at
    changed = Ledger(redis_client).merge([second])
    assert changed.changed == [(entry, second)]
    assert redis_client.ttl(ledger_entry_key(job_id)) >= redis_client.ttl(job_key(job_id))
    assert Ledger(redis_client).entries() == [second]
    assert Ledger(redis_client).merge([second]).unchanged == 1  # twice: no change
    assert _report(redis_client, "status") == [("succeeded", 1, COST), ("total", 1, COST)]
    assert _report(redis_client, "day") == _expected([second], "day")


def test_a_prune_removes_a_live_jobs_entry_once(redis_client: Any) -> None:
    vq = _queue(redis_client)
    ids = _three(vq)
    kept = [_manifest(vq, i) for i in ids[:2]]
    for _ in range(2):
        Ledger(redis_client).merge(kept, prune=True)
        assert _report(redis_client, "status") == _expected(kept, "status")
        assert sorted(e.job_id for e in Ledger(redis_client).entries()) == sorted(ids[:2])
    assert redis_client.get(ledger_entry_key(ids[2])) == REMOVED
    assert redis_client.ttl(ledger_entry_key(ids[2])) >= redis_client.ttl(job_key(ids[2]))
    # Its manifest seen again (another storage read): back, once.
    back = _manifest(vq, ids[2])
    assert [e.job_id for e in Ledger(redis_client).merge([*kept, back]).added] == [ids[2]]
    assert _report(redis_client, "status") == _expected([*kept, back], "status")


def test_a_pruned_job_that_ends_again_is_counted_again_once(redis_client: Any) -> None:
    # A job that failed in storage has no manifest, so a prune removes its charge; `store
    # retry` then stores it: its second end puts the charge back (new-user trial, issue 18).
    vq = _queue(redis_client)
    job_id = _ended(vq, "fox", ("ads",), JobStatus.FAILED)
    Ledger(redis_client).merge([], prune=True)
    assert Ledger(redis_client).entries() == [] and _report(redis_client, "status") == [("total", 0, Decimal(0))]
    vq.store.transition(job_id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    vq.store.transition(job_id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)
    assert redis_client.get(ledger_entry_key(job_id)) is None
    manifest = _manifest(vq, job_id)
    assert _report(redis_client, "status") == [("succeeded", 1, COST), ("total", 1, COST)]
    assert [e.job_id for e in Ledger(redis_client).entries()] == [job_id]
    assert Ledger(redis_client).merge([manifest]).added == []  # its manifest: not again


def test_a_dry_run_writes_nothing(redis_client: Any) -> None:
    vq = _queue(redis_client)
    ids = _three(vq)
    manifests = [_manifest(vq, i) for i in ids]
    redis_client.delete(job_key(ids[0]))  # lost (recent): to add
    diff = Ledger(redis_client).merge(manifests[1:2], prune=True, dry_run=True)
    assert (diff.before_jobs, diff.after_jobs, len(diff.missing), diff.pruned) == (2, 1, 1, False)
    diff = Ledger(redis_client).merge(manifests, dry_run=True)
    assert [e.job_id for e in diff.added] == [ids[0]]
    assert _no_rows(redis_client)
    assert _report(redis_client, "status")[-1][1] == 3


def test_rows_of_an_earlier_version_still_read_count_once_and_restate(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job_id = _ended(vq, "fox", ("ads",), JobStatus.FAILED)
    entry = _manifest(vq, job_id)
    # The version before wrote a row and its index member with the move (and the aggregate,
    # already written here by the move); the record it wrote is the same.
    pipe = redis_client.pipeline()
    write_entry(pipe, entry)
    ledger_days.expire_row(pipe, entry, RETENTION)
    pipe.execute()
    assert Ledger(redis_client).entries() == [entry]
    assert Ledger(redis_client).merge([entry]).unchanged == 1
    vq.store.transition(job_id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    vq.store.transition(job_id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)  # the row is restated
    restated = LedgerEntry.model_validate_json(redis_client.get(ledger_entry_key(job_id)))
    assert (restated.status, restated.settled_at) == ("succeeded", entry.settled_at)
    assert _report(redis_client, "status") == [("succeeded", 1, COST), ("total", 1, COST)]
    assert rebuild_counters(redis_client, dry_run=True).entries == 1


def test_the_recount_with_retention_zero_counts_the_records_entries(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_RETENTION_S", "0")
    get_settings.cache_clear()
    vq = _queue(redis_client)
    manifests = [_manifest(vq, i) for i in _three(vq)]
    redis_client.delete(keys.LEDGER_DAYS_VERSION)  # as a deployment upgraded from before the aggregates
    assert ledger.ensure_days(redis_client, 0) is True
    assert _report(redis_client, "status") == _expected(manifests, "status")


def test_an_active_job_has_no_entry_and_an_unsettled_record_gives_none(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job = vq.prepare(VideoRequest(prompt="fox"))
    vq.store.create_many([job.record], budget=vq.budget)
    record = walk_to(vq.store, job.record.id, JobStatus.DOWNLOADING, cost_usd=COST, billed_units=1)
    assert isinstance(record, JobRecord) and LedgerEntry.of_record(record) is None
    assert Ledger(redis_client).entries() == []


def test_a_row_a_rebuild_writes_for_a_live_record_outlives_it(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job_id = _ended(vq, "fox", ("ads",), JobStatus.SUCCEEDED)
    # A manifest that says the job settled a day earlier than its record does.
    earlier = _manifest(vq, job_id).model_copy(update={"settled_at": datetime.now(UTC) - timedelta(days=1)})
    assert Ledger(redis_client).merge([earlier]).changed != []
    assert redis_client.ttl(ledger_entry_key(job_id)) >= redis_client.ttl(job_key(job_id)) > RETENTION - 10
    assert Ledger(redis_client).entries() == [earlier]
    assert _report(redis_client, "day") == _expected([earlier], "day")


def test_a_rebuild_runs_again_when_a_job_it_writes_for_moves_meanwhile(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq = _queue(redis_client)
    job_id = _ended(vq, "fox", ("ads",), JobStatus.FAILED)
    vq.store.transition(job_id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    read = ledger._job_states
    calls: list[int] = []

    def moving(client: Any, ids: list[str]) -> list[ledger.JobState]:
        calls.append(len(ids))
        if len(calls) == 3:  # after the merge read the ledger, before it checks what it read
            vq.store.transition(job_id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)  # the second end
        return read(client, ids)

    monkeypatch.setattr(ledger, "_job_states", moving)
    diff = Ledger(redis_client).merge([], prune=True)  # its manifest not seen: pruned
    assert len(calls) > 3  # ran again
    assert [e.status for e in diff.missing] == ["succeeded"]  # what it removed: the entry after the move
    assert _report(redis_client, "status") == [("total", 0, Decimal(0))]
    assert Ledger(redis_client).entries() == []


def test_a_record_and_row_an_earlier_version_wrote_still_work(redis_client: Any) -> None:
    record = JobRecord.model_validate_json(OLD_FAILED_IN_STORAGE)
    entry = LedgerEntry.of_record(record)
    assert entry is not None and entry == LedgerEntry.for_job(record)
    # As the version before wrote them: the record, its index, its row and its aggregate.
    redis_client.set(job_key(record.id), OLD_FAILED_IN_STORAGE)
    redis_client.zadd(keys.status_index("failed"), {record.id: record.created_at.timestamp()})
    pipe = redis_client.pipeline()
    write_entry(pipe, entry)
    ledger_days.add(pipe, entry)
    ledger_days.expire_row(pipe, entry, RETENTION)
    pipe.set(keys.LEDGER_DAYS_VERSION, ledger_days.VERSION)
    pipe.execute()
    assert Ledger(redis_client).entries() == [entry]
    assert Ledger(redis_client).merge([entry]).unchanged == 1
    store = JobStore(redis_client)
    store.transition(record.id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    store.transition(record.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)
    assert [(e.status, e.settled_at) for e in Ledger(redis_client).entries()] == [("succeeded", entry.settled_at)]
    assert _report(redis_client, "status") == [("succeeded", 1, COST), ("total", 1, COST)]
