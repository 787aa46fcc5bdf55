"""The cost ledger and budgets on fakeredis: one entry per job, reports, caps."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from producer import BudgetExceededError, Settings, VideoQueue, VideoRequest
from producer.budget import usage
from producer.catalog import load_catalog
from producer.contract import JobRecord, JobStatus
from producer.jobstore import JobStore
from producer.ledger import Ledger, LedgerEntry, summarize

EST = Decimal("0.249163")  # Seedance 1.5 Pro, 720p 16:9, 5 s, audio


@pytest.fixture
def redis_client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def queue(redis_client: Any, **settings: Any) -> VideoQueue:
    return VideoQueue(Settings(**settings), store=JobStore(redis_client))


def stored(vq: VideoQueue, *requests: VideoRequest) -> list[JobRecord]:
    """Store jobs as submit_many does, without sending Celery messages."""
    jobs = [vq.prepare(r) for r in requests]
    vq.store.create_many([j.record for j in jobs], budget=vq.budget)
    return [j.record for j in jobs]


def finish(store: JobStore, job_id: str, status: JobStatus, cost: Decimal | None) -> JobRecord | None:
    return store.transition(
        job_id, {JobStatus.QUEUED, JobStatus.DOWNLOADING}, status, cost_usd=cost, billed_units=103818 if cost else None
    )


def test_a_final_move_writes_one_ledger_entry_whatever_the_redelivery(redis_client: Any) -> None:
    vq = queue(redis_client)
    (job,) = stored(vq, VideoRequest(prompt="fox", tags=("ads", "q4")))
    assert finish(vq.store, job.id, JobStatus.SUCCEEDED, EST) is not None
    assert finish(vq.store, job.id, JobStatus.SUCCEEDED, EST) is None  # the redelivered settle
    vq.store.update(job.id, lambda r: r)  # any later write of the record
    ledger = Ledger(redis_client)
    entries = ledger.entries()
    assert len(entries) == 1 and redis_client.zcard("vq:ledger:index") == 1
    entry = entries[0]
    assert (entry.job_id, entry.status, entry.tags, entry.actual_usd, entry.unit) == (
        job.id,
        "succeeded",
        ("ads", "q4"),
        EST,
        "token",
    )
    assert entry == LedgerEntry.for_job(vq.get(job.id))


def test_a_job_that_cost_nothing_has_no_entry(redis_client: Any) -> None:
    vq = queue(redis_client)
    (job,) = stored(vq, VideoRequest(prompt="fox"))
    finish(vq.store, job.id, JobStatus.FAILED, None)
    assert Ledger(redis_client).entries() == []


def _entry(
    job_id: str, day: str, provider: str, model: str, status: str, tags: tuple[str, ...], est: str, act: str
) -> LedgerEntry:
    return LedgerEntry(
        job_id=job_id,
        provider=provider,
        model=model,
        status=status,
        tags=tags,
        settled_at=datetime.fromisoformat(f"{day}T12:00:00+00:00"),
        estimate_usd=Decimal(est),
        actual_usd=Decimal(act),
        billed_units=1,
        unit="token",
    )


ENTRIES = [
    _entry("a", "2026-11-20", "byteplus", "seedance-1-5-pro-251215", "succeeded", ("ads",), "0.25", "0.25"),
    _entry("b", "2026-11-20", "veo", "veo-3.1-fast-generate-001", "succeeded", ("ads", "q4"), "0.40", "0.40"),
    _entry("c", "2026-11-21", "veo", "veo-3.1-generate-001", "cancelled", (), "3.20", "3.20"),
    _entry("d", "2026-12-01", "byteplus", "seedance-1-5-pro-251215", "succeeded", ("q4",), "0.25", "0.20"),
]


def test_reports_group_filter_and_total(redis_client: Any) -> None:
    ledger = Ledger(redis_client)
    assert ledger.replace_all(ENTRIES) == 4
    by_day = ledger.report("day")
    assert [(r.group, r.jobs, r.actual_usd) for r in by_day] == [
        ("2026-11-20", 2, Decimal("0.65")),
        ("2026-11-21", 1, Decimal("3.20")),
        ("2026-12-01", 1, Decimal("0.20")),
        ("total", 4, Decimal("4.05")),
    ]
    by_tag = {r.group: r for r in ledger.report("tag")}
    assert (by_tag["ads"].jobs, by_tag["q4"].jobs, by_tag["(untagged)"].jobs, by_tag["total"].jobs) == (2, 2, 1, 4)
    model = {r.group: r for r in ledger.report("model")}["seedance-1-5-pro-251215"]
    assert (model.estimate_usd, model.actual_usd, model.difference_usd) == (
        Decimal("0.50"),
        Decimal("0.45"),
        Decimal("-0.05"),
    )
    assert [r.group for r in ledger.report("month")] == ["2026-11", "2026-12", "total"]
    november = ledger.report("provider", date(2026, 11, 20), date(2026, 11, 21))
    assert [(r.group, r.jobs) for r in november] == [("byteplus", 1), ("veo", 2), ("total", 3)]
    one_day = ledger.report("status", date(2026, 11, 21), date(2026, 11, 21))
    assert [(r.group, r.jobs) for r in one_day] == [("cancelled", 1), ("total", 1)]
    assert ledger.report("day", provider="veo", tag="q4")[-1].jobs == 1
    assert ledger.report("day", status="failed")[-1].jobs == 0


def test_replace_all_drops_what_is_not_given(redis_client: Any) -> None:
    ledger = Ledger(redis_client)
    ledger.replace_all(ENTRIES)
    ledger.replace_all(ENTRIES[:1])
    assert [e.job_id for e in ledger.entries()] == ["a"]
    assert redis_client.keys("vq:ledger:entry:*") == ["vq:ledger:entry:a"]


def test_summarize_refuses_an_unknown_grouping() -> None:
    with pytest.raises(ValueError, match="cannot group by 'colour'"):
        summarize(ENTRIES, "colour")


def test_a_daily_cap_refuses_a_batch_that_would_cross_it_and_stores_nothing(redis_client: Any) -> None:
    vq = queue(redis_client, budget_daily_usd=Decimal("1.00"))
    stored(vq, *[VideoRequest(prompt=f"ok {i}") for i in range(4)])  # 4 x 0.249163 = 0.996652
    before = sorted(redis_client.keys("*"))
    with pytest.raises(BudgetExceededError) as info:
        stored(vq, VideoRequest(prompt="one too many"))
    assert "budget day:" in str(info.value) and "cap $1.00" in str(info.value)
    assert sorted(redis_client.keys("*")) == before
    day_key = f"vq:budget:day:{datetime.now(UTC).date().isoformat()}"
    assert usage(redis_client, day_key) == (EST * 4, Decimal(0))


def test_settling_releases_the_reservation_and_adds_the_actual_cost(redis_client: Any) -> None:
    vq = queue(redis_client, budget_monthly_usd=Decimal("100"), budget_tags_usd={"ads": Decimal("5")})
    ok, failed, cancelled = stored(vq, *[VideoRequest(prompt=p, tags=("ads",)) for p in ("ok", "failed", "cancelled")])
    month_key = f"vq:budget:month:{datetime.now(UTC).date().isoformat()[:7]}"
    assert ok.budget_keys == [month_key, "vq:budget:tag:ads"]
    assert usage(redis_client, "vq:budget:tag:ads") == (EST * 3, Decimal(0))
    finish(vq.store, ok.id, JobStatus.SUCCEEDED, Decimal("0.2"))
    finish(vq.store, failed.id, JobStatus.FAILED, None)
    finish(vq.store, cancelled.id, JobStatus.CANCELLED, None)
    finish(vq.store, ok.id, JobStatus.SUCCEEDED, Decimal("0.2"))  # twice: no double count
    for key in (month_key, "vq:budget:tag:ads"):
        assert usage(redis_client, key) == (Decimal(0), Decimal("0.2"))


def test_a_withdrawn_enqueue_releases_its_reservation(redis_client: Any) -> None:
    vq = queue(redis_client, budget_tags_usd={"t": Decimal("1")})
    (job,) = stored(vq, VideoRequest(prompt="x", tags=("t",)))
    vq.store.delete(job.id)
    assert usage(redis_client, "vq:budget:tag:t") == (Decimal(0), Decimal(0))


def test_budgets_only_apply_to_the_tags_that_have_one(redis_client: Any) -> None:
    vq = queue(redis_client, budget_tags_usd={"capped": Decimal("0.3")})
    stored(vq, VideoRequest(prompt="a", tags=("free",)), VideoRequest(prompt="b", tags=("free",)))
    stored(vq, VideoRequest(prompt="c", tags=("capped",)))
    with pytest.raises(BudgetExceededError):
        stored(vq, VideoRequest(prompt="d", tags=("capped", "free")))


def test_a_pricing_file_overrides_prices_and_adds_models(tmp_path: Path) -> None:
    override = tmp_path / "prices.toml"
    override.write_text(
        """
[models."seedance-1-5-pro-251215".price]
unit = "token"
usd_per_million_audio = 2.0
usd_per_million_silent = 1.0
flex_multiplier = 0.5
source = "contract #42"
as_of = "2026-11-01"
"""
    )
    catalog = load_catalog(str(override))
    spec = catalog.models["seedance-1-5-pro-251215"]
    assert spec.price.source == "contract #42"
    assert spec.usd_for_tokens(1_000_000, audio=True, service_tier="default") == Decimal("2.0")
    assert spec.durations == load_catalog().models["seedance-1-5-pro-251215"].durations
    with pytest.raises(ValueError, match="cannot read PRICING_FILE"):
        load_catalog(str(tmp_path / "missing.toml"))


def test_estimates_use_the_overridden_prices(redis_client: Any, tmp_path: Path) -> None:
    override = tmp_path / "prices.toml"
    override.write_text(
        '[models."veo-3.1-fast-generate-001".price]\nunit = "second"\nsource = "deal"\nas_of = "2026-11-01"\n'
        'usd_per_second = { "720p" = { audio = 0.05, silent = 0.04 }, "1080p" = { audio = 0.06, silent = 0.05 },'
        ' "4k" = { audio = 0.2, silent = 0.1 } }\n'
    )
    vq = queue(redis_client, pricing_file=str(override))
    job = vq.prepare(VideoRequest(prompt="x", provider="veo", duration=8)).record
    assert job.cost_estimate_usd == Decimal("0.40")
    assert job.deadline_at - job.created_at == timedelta(seconds=7200)
