"""Retention on fakeredis: final records expire with their ledger rows, the ledger's day
aggregates keep every report the same, the backfill of an upgraded deployment, the
sweep's bounded trim, and `costs rebuild` (Ledger.merge) with rows that expired."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from producer import Settings, VideoQueue, VideoRequest, cli, cli_archive
from tests.unit.helpers import walk_to
from videoqueue import archive, keys, ledger_days, namespace, retention
from videoqueue.errors import StorageError
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus
from videoqueue.jobids import UnknownJobError
from videoqueue.jobstore import JobStore
from videoqueue.keys import job_key, ledger_entry_key, status_index
from videoqueue.ledger import GROUPS, Ledger, LedgerEntry, read_entries, summarize, write_entry
from videoqueue.settings import get_settings
from worker.inputs import StorageInputs

DAY_S = 86400
RETENTION = 30 * DAY_S


@pytest.fixture
def redis_client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def _entry(job_id: str, days_ago: float, status: str, tags: tuple[str, ...], act: str, **more: Any) -> LedgerEntry:
    return LedgerEntry(
        job_id=job_id,
        provider=more.get("provider", "byteplus"),
        model=more.get("model", "seedance-1-5-pro-251215"),
        status=status,
        tags=tags,
        settled_at=datetime.now(UTC) - timedelta(days=days_ago),
        estimate_usd=Decimal("0.249163"),
        actual_usd=Decimal(act),
        billed_units=1,
        unit="token",
        uncertain_usd=Decimal(more.get("unc", "0")),
    )


ENTRIES = [
    _entry("a", 1, "succeeded", ("ads",), "0.25"),
    _entry("b", 1, "succeeded", ("ads", "q4"), "0.40", provider="veo", model="veo-3.1-fast-generate-001"),
    _entry("c", 2, "cancelled", (), "3.20", provider="veo", model="veo-3.1-generate-001"),
    _entry("d", 40, "failed", ("q4",), "0.20", unc="0.20"),
    _entry("e", 70, "succeeded", (), "0.123457"),
]


def _rows(rows: list[Any]) -> list[tuple[str, int, Decimal, Decimal]]:
    return [(r.group, r.jobs, r.estimate_usd, r.actual_usd) for r in rows]


def _expected(entries: list[LedgerEntry], by: str, **filters: Any) -> list[tuple[str, int, Decimal, Decimal]]:
    """What the report of the per-job rows said before aggregates (ledger.summarize)."""
    selected = [
        e
        for e in entries
        if all(
            (e.tags if name == "tag" else (getattr(e, name),)).__contains__(value)
            for name, value in filters.items()
            if value is not None
        )
    ]
    return _rows(summarize(selected, by))


FILTERS: list[dict[str, str]] = [
    {},
    {"provider": "veo"},
    {"model": "seedance-1-5-pro-251215"},
    {"status": "succeeded"},
    {"tag": "q4"},
    {"tag": "ads", "provider": "byteplus"},
]


@pytest.mark.parametrize("filters", FILTERS)
@pytest.mark.parametrize("by", GROUPS)
def test_reports_from_aggregates_equal_reports_of_the_rows_and_survive_their_expiry(
    redis_client: Any, by: str, filters: dict[str, str]
) -> None:
    ledger = Ledger(redis_client)
    ledger.merge(ENTRIES, retention_s=0)
    if by == "tag" and "tag" in filters:
        # Under a tag filter, by tag shows that tag only (co-tags are not kept per day).
        expected = [r for r in _expected(ENTRIES, by, **filters) if r[0] in {filters["tag"], "total"}]
    else:
        expected = _expected(ENTRIES, by, **filters)
    assert _rows(ledger.report(by, **filters)) == expected  # type: ignore[arg-type]
    redis_client.delete(*(ledger_entry_key(e.job_id) for e in ENTRIES))  # every row expired
    assert ledger.entries() == []
    assert _rows(ledger.report(by, **filters)) == expected  # type: ignore[arg-type]


def test_a_report_over_a_period_reads_only_its_days(redis_client: Any) -> None:
    ledger = Ledger(redis_client)
    ledger.merge(ENTRIES, retention_s=0)
    day = (datetime.now(UTC) - timedelta(days=40)).date()
    assert _rows(ledger.report("status", day, day)) == [
        ("failed", 1, Decimal("0.249163"), Decimal("0.20")),
        ("total", 1, Decimal("0.249163"), Decimal("0.20")),
    ]
    aggregate = redis_client.hgetall(keys.ledger_day_key(day.isoformat()))
    assert aggregate["t byteplus seedance-1-5-pro-251215 failed * unc"] == "200000"
    assert aggregate["g byteplus seedance-1-5-pro-251215 failed q4 jobs"] == "1"


def _old_rows(redis_client: Any, entries: list[LedgerEntry]) -> None:
    """Rows as the code before aggregates wrote them: write_entry alone, no TTL."""
    pipe = redis_client.pipeline()
    for entry in entries:
        write_entry(pipe, entry)
    pipe.execute()


def test_the_backfill_counts_an_upgraded_deployments_rows_once(redis_client: Any) -> None:
    _old_rows(redis_client, ENTRIES)
    assert redis_client.get(keys.LEDGER_DAYS_VERSION) is None
    # A new worker's final move writes its row, its aggregate and its TTL before any backfill ran.
    new = _entry("f", 0, "succeeded", ("ads",), "0.50")
    pipe = redis_client.pipeline()
    write_entry(pipe, new)
    ledger_days.add(pipe, new)
    ledger_days.expire_row(pipe, new, RETENTION)
    pipe.execute()

    assert ledger_days.ensure(redis_client, read_entries, RETENTION) is True
    assert redis_client.get(keys.LEDGER_DAYS_VERSION) == ledger_days.VERSION
    assert ledger_days.ensure(redis_client, read_entries, RETENTION) is False  # once
    # Counted rows follow the retention: d and e are past it and went, their amounts stay.
    assert redis_client.ttl(ledger_entry_key("a")) > 0
    assert redis_client.exists(ledger_entry_key("d"), ledger_entry_key("e")) == 0
    ledger = Ledger(redis_client)
    for by in GROUPS:
        assert _rows(ledger.report(by)) == _expected([*ENTRIES, new], by)  # type: ignore[arg-type]


def test_the_backfill_with_retention_zero_recomputes_from_the_rows(redis_client: Any) -> None:
    _old_rows(redis_client, ENTRIES[:3])
    pipe = redis_client.pipeline()
    ledger_days.add(pipe, ENTRIES[0])  # counted by a new worker meanwhile
    pipe.execute()
    assert ledger_days.ensure(redis_client, read_entries, 0) is True
    assert redis_client.ttl(ledger_entry_key("a")) == -1
    assert _rows(Ledger(redis_client).report("tag")) == _expected(ENTRIES[:3], "tag")


def test_a_row_an_old_worker_writes_after_the_backfill_is_counted_by_the_sweep(redis_client: Any) -> None:
    assert ledger_days.ensure(redis_client, read_entries, RETENTION) is True
    _old_rows(redis_client, [ENTRIES[3]])  # 40 days old: below the cut-off
    report = retention.trim(redis_client, RETENTION, time.time(), 100)
    assert report.expiring == 1
    assert _rows(Ledger(redis_client).report("day")) == _expected([ENTRIES[3]], "day")
    assert retention.trim(redis_client, RETENTION, time.time(), 100).expiring == 0  # once


def test_a_report_backfills_first(redis_client: Any) -> None:
    pipe = redis_client.pipeline()
    for entry in ENTRIES:
        write_entry(pipe, entry)
    pipe.execute()
    assert _rows(Ledger(redis_client).report("provider")) == _expected(ENTRIES, "provider")


def test_a_rebuild_does_not_count_again_an_entry_whose_row_expired(redis_client: Any) -> None:
    ledger = Ledger(redis_client)
    ledger.merge(ENTRIES, retention_s=RETENTION)
    # d (40 days) and e (70 days) are past the retention: their rows are not written back,
    # their amounts are in the aggregates.
    assert sorted(e.job_id for e in ledger.entries()) == ["a", "b", "c"]
    assert 0 < redis_client.ttl(ledger_entry_key("a")) <= RETENTION
    expected = _expected(ENTRIES, "day")
    assert _rows(ledger.report("day")) == expected

    again = ledger.merge(ENTRIES, retention_s=RETENTION)  # the same manifests, rows of d, e gone
    assert (again.added, again.changed, again.unchanged) == ([], [], 5)
    assert _rows(ledger.report("day")) == expected

    # A row lost within the retention (Redis lost it) was never counted... but its
    # aggregate is: the rule counts a row-less recent entry as new, so the aggregate must
    # have gone with it (a Redis that lost the row lost the aggregate written with it).
    redis_client.flushall()
    lost = ledger.merge(ENTRIES, retention_s=RETENTION)
    assert sorted(e.job_id for e in lost.added) == ["a", "b", "c", "d", "e"]
    assert _rows(ledger.report("day")) == expected


def test_a_rebuild_keeps_aggregates_consistent_with_changes_and_prunes(redis_client: Any) -> None:
    ledger = Ledger(redis_client)
    ledger.merge(ENTRIES[:3], retention_s=RETENTION)
    changed = ENTRIES[0].model_copy(update={"actual_usd": Decimal("0.30"), "status": "cancelled"})
    ledger.merge([changed, ENTRIES[1]], prune=True, retention_s=RETENTION)  # a changed, c pruned
    assert _rows(ledger.report("status")) == _expected([changed, ENTRIES[1]], "status")
    assert _rows(ledger.report("tag")) == _expected([changed, ENTRIES[1]], "tag")
    assert 0 < redis_client.ttl(ledger_entry_key("a")) <= RETENTION  # a changed row keeps expiring


def _queue(redis_client: Any, **settings: Any) -> VideoQueue:
    return VideoQueue(Settings(**settings), store=JobStore(redis_client))


def _stored(vq: VideoQueue, request: VideoRequest) -> JobRecord:
    job = vq.prepare(request)
    vq.store.create_many([job.record], budget=vq.budget)
    return job.record


def _charged(store: JobStore, job_id: str, status: JobStatus) -> JobRecord | None:
    return walk_to(store, job_id, status, cost_usd=Decimal("0.249163"), billed_units=103818)


def test_a_final_move_sets_the_retention_on_the_record_which_holds_its_ledger_entry(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job = _stored(vq, VideoRequest(prompt="fox", tags=("ads",)))
    assert redis_client.ttl(job_key(job.id)) == -1  # active: kept
    _charged(vq.store, job.id, JobStatus.SUCCEEDED)
    assert RETENTION - 5 <= redis_client.ttl(job_key(job.id)) <= RETENTION
    assert redis_client.exists(ledger_entry_key(job.id)) == 0  # no row: the record gives the entry
    assert [e.job_id for e in Ledger(redis_client).entries()] == [job.id]
    assert [r.jobs for r in Ledger(redis_client).report("tag")] == [1, 1]


def test_retention_zero_keeps_final_records_and_a_negative_one_is_refused(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_RETENTION_S", "0")
    get_settings.cache_clear()
    vq = _queue(redis_client)
    job = _stored(vq, VideoRequest(prompt="fox"))
    _charged(vq.store, job.id, JobStatus.SUCCEEDED)
    assert redis_client.ttl(job_key(job.id)) == -1
    assert retention.trim(redis_client, 0, time.time() + 10 * RETENTION, 100).looked_at == 0
    with pytest.raises(ValidationError, match="JOB_RETENTION_S must be 0"):
        Settings(job_retention_s=-1)


def test_nothing_of_a_job_outlives_a_short_retention_but_what_a_lookup_still_needs(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_RETENTION_S", "600")
    get_settings.cache_clear()
    vq = _queue(redis_client)
    job = _stored(vq, VideoRequest(prompt="fox", client_job_id="order-1"))
    walk_to(vq.store, job.id, JobStatus.RUNNING, provider_task_id="task-1")
    claim, client = keys.task_claim_key(job.provider, "task-1"), keys.client_key("order-1")
    assert redis_client.ttl(claim) > 6 * DAY_S and redis_client.ttl(client) > 80 * DAY_S
    _charged(vq.store, job.id, JobStatus.SUCCEEDED)
    assert 590 <= redis_client.ttl(job_key(job.id)) <= 600
    assert 590 <= redis_client.ttl(client) <= 600  # the client job id: with the record
    # The task claim: until no other job's lookup can see the task (a deadline span, then
    # FOLLOW_PAST_DEADLINE_S for a last lookup by a worker of that job's endpoint).
    kept = retention.claim_after_end_s(job)
    assert kept == 7200 + 172800 + retention.CLAIM_MARGIN_S
    assert kept - 10 <= redis_client.ttl(claim) <= kept


@pytest.mark.parametrize(
    ("env", "deadline_s", "expected"),
    [
        ({}, 7200, 7200 + 172800),  # the defaults: JOB_RETENTION_S 30 days
        ({"JOB_DEADLINE_S": "600", "FOLLOW_PAST_DEADLINE_S": "3600"}, 600, 600 + 3600),
        # This process's JOB_DEADLINE_S is longer than the job's own span: another job's
        # lookup may last that long.
        ({"JOB_DEADLINE_S": "9000", "FOLLOW_PAST_DEADLINE_S": "3600"}, 600, 9000 + 3600),
        # The job's own span is longer (a movie's scene, released late): its own.
        ({"JOB_DEADLINE_S": "600", "FOLLOW_PAST_DEADLINE_S": "3600"}, 5000, 5000 + 3600),
    ],
)
def test_a_task_claim_is_kept_after_the_end_as_long_as_a_lookup_may_see_it_whatever_the_retention(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], deadline_s: float, expected: int
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    vq = _queue(redis_client, job_deadline_s=deadline_s)
    job = _stored(vq, VideoRequest(prompt="fox"))
    walk_to(vq.store, job.id, JobStatus.RUNNING, provider_task_id="task-9")
    claim = keys.task_claim_key(job.provider, "task-9")
    assert redis_client.ttl(claim) > 6 * DAY_S  # while the job runs: 7 days from the create
    _charged(vq.store, job.id, JobStatus.DOWNLOADING)
    vq.store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.FAILED)
    kept = expected + retention.CLAIM_MARGIN_S
    assert retention.claim_after_end_s(job) == kept
    assert kept - 10 <= redis_client.ttl(claim) <= kept
    assert redis_client.ttl(job_key(job.id)) > kept  # the record stays for its retention
    # A second end (`store retry`) never lengthens it.
    redis_client.expire(claim, 100)
    vq.store.transition(job.id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    vq.store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)
    assert 90 <= redis_client.ttl(claim) <= 100


def test_a_retry_keeps_its_client_job_id_when_the_job_it_retries_ends_again(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job = _stored(vq, VideoRequest(prompt="fox", client_job_id="order-2"))
    _charged(vq.store, job.id, JobStatus.DOWNLOADING)
    vq.store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.FAILED)
    client = keys.client_key("order-2")
    assert RETENTION - 5 <= redis_client.ttl(client) <= RETENTION
    redis_client.set(client, "the-retry", ex=90 * DAY_S)  # `videoqueue retry` points it at the new job
    vq.store.transition(job.id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    vq.store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)  # a second end
    assert redis_client.ttl(client) > 89 * DAY_S


def test_a_second_end_renews_the_retention_and_moves_the_aggregates(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job = _stored(vq, VideoRequest(prompt="fox", tags=("ads",)))
    _charged(vq.store, job.id, JobStatus.DOWNLOADING)
    failure = JobFailure(code=ErrorCode.STORAGE, message="bucket refused")
    vq.store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.FAILED, error=failure)
    redis_client.expire(job_key(job.id), 100)
    redis_client.delete(ledger_entry_key(job.id))  # the row expired while the job waited
    assert [r.group for r in Ledger(redis_client).report("status")] == ["failed", "total"]

    vq.store.transition(job.id, {JobStatus.FAILED}, JobStatus.DOWNLOADING, error=None, finished_at=None)
    assert redis_client.ttl(job_key(job.id)) == -1  # active again: kept
    vq.store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)
    assert redis_client.ttl(job_key(job.id)) > RETENTION - 5
    assert _rows(Ledger(redis_client).report("status"))[0][:2] == ("succeeded", 1)
    assert Ledger(redis_client).report("status")[-1].jobs == 1


def _ended_jobs(vq: VideoQueue, count: int) -> list[JobRecord]:
    jobs = [_stored(vq, VideoRequest(prompt=f"fox {n}")) for n in range(count)]
    for job in jobs:
        _charged(vq.store, job.id, JobStatus.SUCCEEDED)
    return jobs


def test_the_sweep_trims_expired_records_in_bounded_batches(redis_client: Any) -> None:
    vq = _queue(redis_client)
    jobs = _ended_jobs(vq, 12)
    # Rows and index members as the version before issue 18's item 2 wrote them with the move.
    pipe = redis_client.pipeline()
    for job in jobs:
        entry = LedgerEntry.of_record(vq.store.get(job.id))  # type: ignore[arg-type]
        assert entry is not None
        write_entry(pipe, entry)
        ledger_days.expire_row(pipe, entry, RETENTION)
    pipe.execute()
    for job in jobs:  # expired
        redis_client.delete(job_key(job.id), ledger_entry_key(job.id))
    later = time.time() + RETENTION + 10
    indexes = len(retention.final_indexes()) + 1
    batch = 3 * indexes  # 3 a tick per index
    looked: list[int] = []
    while any(redis_client.zcard(i) for i in [*retention.final_indexes(), keys.LEDGER_INDEX]):
        report = retention.trim(redis_client, RETENTION, later, batch)
        assert report.looked_at <= batch
        looked.append(report.trimmed)
        assert len(looked) < 20
    # A whole batch a tick while there is a backlog: the three empty indexes' shares go to
    # the succeeded and ledger indexes (12 members each).
    assert looked == [15, 9]
    assert redis_client.zcard(status_index(JobStatus.SUCCEEDED)) == 0
    # The totals stayed.
    assert Ledger(redis_client).report("day")[-1].jobs == 12


def test_one_busy_index_gets_the_batch_the_others_leave(redis_client: Any) -> None:
    # Most jobs end succeeded: an even share (batch / 5 indexes a tick) trimmed that index
    # slower than a busy host's jobs ended, and it grew for ever (bench day).
    vq = _queue(redis_client)
    jobs = _ended_jobs(vq, 40)
    failed = _stored(vq, VideoRequest(prompt="fails"))
    _charged(vq.store, failed.id, JobStatus.FAILED)
    for job in [*jobs, failed]:
        redis_client.delete(job_key(job.id))
    alive = _ended_jobs(vq, 1)[0]  # ended too, its record not yet expired
    report = retention.trim(redis_client, RETENTION, time.time() + RETENTION + 10, 50)
    assert report.trimmed == 41 and report.looked_at == 42
    assert report.by_index[status_index(JobStatus.SUCCEEDED)] == 40
    assert report.by_index[status_index(JobStatus.FAILED)] == 1
    assert list(redis_client.zrange(status_index(JobStatus.SUCCEEDED), 0, -1)) == [alive.id]
    # Bounded all the same: a batch smaller than the backlog is never exceeded, and the
    # next tick goes on from where this one stopped.
    more = _ended_jobs(vq, 30)
    for job in more:
        redis_client.delete(job_key(job.id))
    first = retention.trim(redis_client, RETENTION, time.time() + RETENTION + 10, 20)
    assert first.looked_at == 20 and first.trimmed == 19  # the live record looked at, kept
    second = retention.trim(redis_client, RETENTION, time.time() + RETENTION + 10, 20)
    assert second.trimmed == 11
    assert list(redis_client.zrange(status_index(JobStatus.SUCCEEDED), 0, -1)) == [alive.id]


@pytest.mark.parametrize("batch", [1, 2, 5, 7, 60])
def test_members_of_one_score_are_all_walked_whatever_the_batch(redis_client: Any, batch: int) -> None:
    # Ledger rows are indexed by their settle time, to the millisecond: many jobs settle in
    # one. A walk that stops inside such a group goes on after it next tick, skipping none
    # (a cursor of the score alone skipped the rest of the group until the next round).
    index = keys.LEDGER_INDEX
    ids = [f"job-{i:02d}" for i in range(25)]
    alive = {"job-03", "job-04", "job-11", "job-24"}  # rows still stored: looked at, kept
    scores = {job: 1_000.0 + (0 if i < 12 else 0.001 if i < 20 else 0.002) for i, job in enumerate(ids)}
    redis_client.zadd(index, scores)
    for job in alive:
        redis_client.set(ledger_entry_key(job), "{}", ex=3600)
    gone: list[str] = []
    seen = 0
    for _tick in range(40):
        before = set(redis_client.zrange(index, 0, -1))
        report = retention.trim(redis_client, 60, 1_000.0 + 60 + 1, batch)
        gone += sorted(before - set(redis_client.zrange(index, 0, -1)))
        seen += report.looked_at
        if not redis_client.hexists(keys.RETENTION_CURSOR, index):
            break  # the cut-off reached: one whole round
    assert sorted(gone) == sorted(set(ids) - alive)
    assert seen == len(ids)  # each member looked at once in the round
    assert set(redis_client.zrange(index, 0, -1)) == alive


def test_a_cursor_written_before_reads_as_after_its_score(redis_client: Any) -> None:
    index = keys.LEDGER_INDEX
    redis_client.zadd(index, {"a": 1_000.0, "b": 1_000.0, "c": 1_001.0})
    redis_client.hset(keys.RETENTION_CURSOR, index, repr(1_000.0))
    report = retention.trim(redis_client, 60, 2_000.0, 10)
    assert report.looked_at == 1 and list(redis_client.zrange(index, 0, -1)) == ["a", "b"]


def test_the_sweep_leaves_live_records_and_gives_a_ttl_to_those_stored_without_one(redis_client: Any) -> None:
    vq = _queue(redis_client)
    kept, forever = _ended_jobs(vq, 2)
    redis_client.persist(job_key(forever.id))  # as before retention, or after a retry's claim
    old = _entry("old", 0, "succeeded", (), "0.50")
    _old_rows(redis_client, [old])  # a row an old worker wrote, not in the aggregates yet
    active = _stored(vq, VideoRequest(prompt="still running"))
    report = retention.trim(redis_client, 3600, time.time() + 7200, 100)
    assert report.trimmed == 0 and report.expiring == 2  # the record and the old row
    assert 0 < redis_client.ttl(job_key(forever.id)) <= 3601  # whole seconds, rounded up
    assert 0 < redis_client.ttl(ledger_entry_key("old")) <= 3601
    assert Ledger(redis_client).report("status")[-1].jobs == 3  # the old row counted once
    assert retention.trim(redis_client, 3600, time.time() + 7200, 100).expiring == 0
    assert redis_client.ttl(job_key(kept.id)) > 3600  # its own TTL
    assert redis_client.ttl(job_key(active.id)) == -1
    assert redis_client.zscore(status_index(JobStatus.QUEUED), active.id) is not None


def test_a_retry_of_a_job_whose_record_expired_is_unknown_and_its_client_id_is_free(redis_client: Any) -> None:
    vq = _queue(redis_client)
    job = _stored(vq, VideoRequest(prompt="fox", client_job_id="order-1"))
    _charged(vq.store, job.id, JobStatus.SUCCEEDED)
    redis_client.delete(job_key(job.id))  # expired; client:order-1 still names it (90 days)
    again = _stored(vq, VideoRequest(prompt="another fox", client_job_id="order-1"))
    assert vq.store.get(again.id) is not None


def test_an_id_prefix_finds_the_archived_jobs_it_starts(tmp_path: Path) -> None:
    def manifest(job_id: str, space: str = namespace.DEFAULT) -> str:
        return json.dumps({"job_id": job_id, "namespace": space, "job": {"status": "succeeded"}})

    for job_id in ("0c1c0196-aaaa", "0c1c0196-bbbb", "0c1d0000-cccc"):
        (tmp_path / f"{job_id}.json").write_text(manifest(job_id))
    (tmp_path / "0c1c0196-aaaa.mp4").write_text("video")
    (tmp_path / "0c1c0196-1111.json").write_text(manifest("0c1c0196-1111", "another-deployment"))
    (tmp_path / "0c1c0196-2222.json").write_text('{"movie_id": "0c1c0196-2222"}')  # a movie's manifest
    (tmp_path / "0c1c0196-dddd.json").mkdir()  # not a manifest: a folder
    (tmp_path / "0c1c0196-eeee").mkdir()
    (tmp_path / "0c1c0196-eeee" / "0c1c0196-ffff.json").write_text(manifest("0c1c0196-ffff"))  # not at the root
    inputs = StorageInputs(Settings(_env_file=None, storage_url=f"file://{tmp_path}"))
    url = f"file://{tmp_path}"
    assert archive.archived_ids(inputs, url, "0c1c0196") == ["0c1c0196-aaaa", "0c1c0196-bbbb"]
    assert archive.archived_ids(inputs, url, "0C1C0196-B") == ["0c1c0196-bbbb"]
    assert archive.archived_ids(inputs, url, "0c1c0196-1") == []  # another deployment's job
    assert archive.archived_ids(inputs, url, "0c1e") == []
    assert archive.archived_ids(inputs, url, "../0c1c") == []  # not an id's start: nothing listed
    assert archive.archived_ids(inputs, f"file://{tmp_path / 'gone'}", "0c1c") == []
    for n in range(archive.LOOKUP_READS):  # past what a lookup reads: too short to name one
        (tmp_path / f"0c1c0196-9{n:03}.json").write_text("{}")
    assert len(archive.archived_ids(inputs, url, "0c1c")) > archive.LOOKUP_READS


def test_archive_get_of_a_job_not_ended_names_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(_env_file=None, storage_url=f"file://{tmp_path}")
    vq = VideoQueue(settings, store=JobStore(fakeredis.FakeRedis(decode_responses=True)))
    monkeypatch.setattr(vq, "_send", lambda records: None)
    monkeypatch.setattr(cli_archive, "VideoQueue", lambda: vq)
    job = vq.submit(VideoRequest(prompt="still queued"))
    for ref in (job.id, job.id[:8]):
        shown = CliRunner().invoke(cli.app, ["archive", "get", ref])
        assert shown.exit_code == 1, shown.output
        assert f"still in Redis: videoqueue status {job.id}" in shown.stderr, shown.stderr


def test_status_of_a_prefix_whose_record_just_expired_names_its_manifest_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The record expired but the sweep has not yet trimmed it from the indexes: the prefix
    # still resolves to the whole id, whose record is gone (the trial: `status` called
    # itself with the same prefix until the sweep came, then said "unknown").
    settings = Settings(_env_file=None, storage_url=f"file://{tmp_path}")
    vq = VideoQueue(settings, store=JobStore(fakeredis.FakeRedis(decode_responses=True)))
    monkeypatch.setattr(vq, "_send", lambda records: None)
    monkeypatch.setattr(cli_archive, "VideoQueue", lambda: vq)
    monkeypatch.setattr(cli, "VideoQueue", lambda: vq)
    gone, live = vq.submit(VideoRequest(prompt="expired")), vq.submit(VideoRequest(prompt="live"))
    document = {"job_id": gone.id, "namespace": namespace.DEFAULT, "job": {"status": "succeeded"}}
    (tmp_path / f"{gone.id}.json").write_text(json.dumps(document))
    vq.store.redis.delete(job_key(gone.id))
    shown = CliRunner().invoke(cli.app, ["status", gone.id[:8], live.id[:8]])
    assert shown.exit_code == 1, shown.output
    assert live.id[:8] in shown.stdout and "queued" in shown.stdout
    assert f"expired {gone.id}: succeeded; its record expired" in shown.stderr, shown.stderr
    alone = CliRunner().invoke(cli.app, ["status", gone.id])
    assert alone.exit_code == 1 and alone.stdout == "", alone.output  # no empty table
    # A storage that cannot be read is said to be that, not a listing refused.
    monkeypatch.setattr(vq, "archived", lambda job_id: (_ for _ in ()).throw(StorageError("S3 read refused")))
    refused = CliRunner().invoke(cli.app, ["status", gone.id])
    assert isinstance(refused.exception, UnknownJobError)
    assert "storage cannot be read here (S3 read refused)" in refused.stderr, refused.output


def test_an_expired_job_is_read_back_from_its_manifest(tmp_path: Path) -> None:
    document = {
        "manifest_version": 1,
        "job_id": "0c1c0196-aaaa",
        "namespace": namespace.DEFAULT,
        "job": {"status": "succeeded"},
    }
    (tmp_path / "0c1c0196-aaaa.json").write_text(json.dumps(document))

    class Folder:
        def read(self, uri: str) -> bytes | None:
            path = Path(uri.removeprefix("file://"))
            return path.read_bytes() if path.is_file() else None

    url = f"file://{tmp_path}"
    found = archive.read_archived(Folder(), url, "0c1c0196-aaaa")  # type: ignore[arg-type]
    assert found is not None and found.record == {"status": "succeeded"}
    assert found.uri == (tmp_path / "0c1c0196-aaaa.json").as_uri()
    assert archive.read_archived(Folder(), url, "0c1c0196-bbbb") is None  # type: ignore[arg-type]
    assert archive.manifest_uri(url, "../etc/passwd") is None
    assert archive.manifest_uri("s3://bucket/videos/", "abc") == "s3://bucket/videos/abc.json"
    assert archive.manifest_uri("s3://bucket", "abc") == "s3://bucket/abc.json"
    with namespace.using("other"):
        assert archive.read_archived(Folder(), url, "0c1c0196-aaaa") is None  # type: ignore[arg-type]


def test_a_final_move_after_a_rebuild_took_its_manifest_counts_the_job_once(redis_client: Any) -> None:
    # The store step writes the manifest, then moves the job: a `costs rebuild` in between
    # adds the entry (and its aggregate) first.
    vq = _queue(redis_client)
    job = _stored(vq, VideoRequest(prompt="fox"))
    downloading = _charged(vq.store, job.id, JobStatus.DOWNLOADING)
    assert downloading is not None
    ended = downloading.model_copy(update={"status": JobStatus.SUCCEEDED, "finished_at": datetime.now(UTC)})
    entry = LedgerEntry.for_job(ended)
    assert entry is not None
    Ledger(redis_client).merge([entry])
    vq.store.transition(job.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)
    assert [(r.group, r.jobs) for r in Ledger(redis_client).report("status")] == [("succeeded", 1), ("total", 1)]
