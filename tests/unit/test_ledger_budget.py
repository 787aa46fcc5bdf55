"""The cost ledger and budgets on fakeredis: one entry per job, reports, caps."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest.mock import patch

import fakeredis
import pytest
from typer.testing import CliRunner

from producer import BudgetExceededError, Settings, VideoQueue, VideoRequest
from producer.cli import app
from producer.cli_budget import parse_changes
from tests.unit.helpers import seedance_request, walk_to
from videoqueue import budget as budget_module
from videoqueue import keys, namespace
from videoqueue.budget import BudgetPolicy, Cap, Caps, exceeded, load_caps, parse_usd, set_caps, states, usage
from videoqueue.budget_rebuild import rebuild_counters
from videoqueue.catalog import load_catalog
from videoqueue.job import JobRecord, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.keys import status_index
from videoqueue.ledger import Ledger, LedgerEntry, summarize
from videoqueue.settings import InvalidSettingsError, load_settings
from worker.ledger_rebuild import describe_skipped, manifest_namespace
from worker.manifest import build_manifest

RULE = "must be an amount of US dollars from 0.01 to 1000000000 with at most 2 decimals"
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
    return walk_to(store, job_id, status, cost_usd=cost, billed_units=103818 if cost else None)


def test_a_final_move_counts_one_ledger_entry_whatever_the_redelivery(redis_client: Any) -> None:
    vq = queue(redis_client)
    (job,) = stored(vq, VideoRequest(prompt="fox", tags=("ads", "q4")))
    assert finish(vq.store, job.id, JobStatus.SUCCEEDED, EST) is not None
    assert finish(vq.store, job.id, JobStatus.SUCCEEDED, EST) is None  # the redelivered settle
    vq.store.update(job.id, lambda r: r)  # any later write of the record
    ledger = Ledger(redis_client)
    entries = ledger.entries()
    assert len(entries) == 1 and [r.jobs for r in ledger.report("status")] == [1, 1]
    # The entry is the record's: no per-job row, no index member (issue 18).
    assert redis_client.keys("*ledger:entry:*") == [] and redis_client.zcard(keys.LEDGER_INDEX) == 0
    entry = entries[0]
    assert (entry.job_id, entry.status, entry.tags, entry.actual_usd, entry.unit) == (
        job.id,
        "succeeded",
        ("ads", "q4"),
        EST,
        "token",
    )
    assert entry == LedgerEntry.for_job(vq.get(job.id)) == LedgerEntry.of_record(vq.get(job.id))


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
    assert ledger.merge(ENTRIES).after_jobs == 4
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


def test_a_merge_never_drops_an_entry_whose_manifest_it_did_not_see(redis_client: Any) -> None:
    # Seen: `costs rebuild` replaced a ledger of 33 jobs / $9.29 with the 24 / $7.08 whose
    # manifests the storage named by its own shell held.
    ledger = Ledger(redis_client)
    ledger.merge(ENTRIES)
    diff = ledger.merge(ENTRIES[:1])
    assert (len(diff.added), len(diff.changed), diff.unchanged, [e.job_id for e in diff.missing]) == (
        0,
        0,
        1,
        ["b", "c", "d"],
    )
    assert not diff.pruned and (diff.before_jobs, diff.after_jobs) == (4, 4)
    assert diff.before_usd == diff.after_usd == Decimal("4.05")
    assert sorted(e.job_id for e in ledger.entries()) == ["a", "b", "c", "d"]


def test_a_merge_adds_and_replaces_and_prunes_only_when_asked(redis_client: Any) -> None:
    ledger = Ledger(redis_client)
    ledger.merge(ENTRIES[:3])
    restated = ENTRIES[0].model_copy(update={"actual_usd": Decimal("0.30")})
    found = [restated, ENTRIES[1], ENTRIES[3]]  # a changed, b same, c missing, d new
    before = redis_client.hgetall(keys.STATS_COST)

    dry = ledger.merge(found, prune=True, dry_run=True)
    assert [e.job_id for e in dry.added] == ["d"] and [n.job_id for _, n in dry.changed] == ["a"]
    assert [e.job_id for e in dry.missing] == ["c"] and dry.unchanged == 1 and not dry.pruned
    assert (dry.before_jobs, dry.before_usd, dry.after_jobs, dry.after_usd) == (
        3,
        Decimal("3.85"),
        3,
        Decimal("0.90"),
    )
    assert sorted(e.job_id for e in ledger.entries()) == ["a", "b", "c"]  # dry run: nothing written
    assert redis_client.hgetall(keys.STATS_COST) == before

    kept = ledger.merge(found)
    assert (kept.after_jobs, kept.after_usd) == (4, Decimal("4.10"))
    assert {e.job_id: e.actual_usd for e in ledger.entries()} == {
        "a": Decimal("0.30"),
        "b": Decimal("0.40"),
        "c": Decimal("3.20"),
        "d": Decimal("0.20"),
    }
    pruned = ledger.merge(found, prune=True)
    assert pruned.pruned and [e.job_id for e in pruned.missing] == ["c"]
    assert sorted(e.job_id for e in ledger.entries()) == ["a", "b", "d"]
    assert redis_client.keys(keys.ledger_entry_key("c")) == []
    # The cost statistics follow: what is left is a, b and d, each once.
    cost = redis_client.hgetall(keys.STATS_COST)
    assert cost["jobs|veo|veo-3.1-generate-001"] == "0"
    assert cost["jobs|byteplus|seedance-1-5-pro-251215"] == "2"
    assert cost["actual|byteplus|seedance-1-5-pro-251215"] == "500000"


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
    assert "spent $0.0000, reserved $0.9967" in str(info.value) and "requested $0.2492" in str(info.value)
    assert sorted(redis_client.keys("*")) == before
    day_key = keys.budget_counter_key(f"day:{datetime.now(UTC).date().isoformat()}")
    assert usage(redis_client, day_key) == (EST * 4, Decimal(0))


def test_settling_releases_the_reservation_and_adds_the_actual_cost(redis_client: Any) -> None:
    vq = queue(redis_client, budget_monthly_usd=Decimal("100"), budget_tags_usd={"ads": Decimal("5")})
    ok, failed, cancelled = stored(vq, *[VideoRequest(prompt=p, tags=("ads",)) for p in ("ok", "failed", "cancelled")])
    today = datetime.now(UTC).date().isoformat()
    month_key = keys.budget_counter_key(f"month:{today[:7]}")
    assert ok.budget_keys == [keys.budget_counter_key(f"day:{today}"), month_key, keys.budget_counter_key("tag:ads")]
    assert usage(redis_client, keys.budget_counter_key("tag:ads")) == (EST * 3, Decimal(0))
    finish(vq.store, ok.id, JobStatus.SUCCEEDED, Decimal("0.2"))
    finish(vq.store, failed.id, JobStatus.FAILED, None)
    finish(vq.store, cancelled.id, JobStatus.CANCELLED, None)
    finish(vq.store, ok.id, JobStatus.SUCCEEDED, Decimal("0.2"))  # twice: no double count
    for key in (month_key, keys.budget_counter_key("tag:ads")):
        assert usage(redis_client, key) == (Decimal(0), Decimal("0.2"))


def test_a_withdrawn_enqueue_releases_its_reservation(redis_client: Any) -> None:
    vq = queue(redis_client, budget_tags_usd={"t": Decimal("1")})
    (job,) = stored(vq, VideoRequest(prompt="x", tags=("t",)))
    vq.store.delete(job.id)
    assert usage(redis_client, keys.budget_counter_key("tag:t")) == (Decimal(0), Decimal(0))


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


def test_every_job_counts_whether_a_cap_exists_or_not(redis_client: Any) -> None:
    vq = queue(redis_client)
    (job,) = stored(vq, VideoRequest(prompt="no cap anywhere", tags=("ads", "q4")))
    today = datetime.now(UTC).date().isoformat()
    counters = [keys.budget_counter_key(name) for name in (f"day:{today}", f"month:{today[:7]}", "tag:ads", "tag:q4")]
    assert job.budget_keys == counters
    for key in counters:
        assert usage(redis_client, key) == (EST, Decimal(0))
    finish(vq.store, job.id, JobStatus.SUCCEEDED, Decimal("0.2"))
    for key in counters:
        assert usage(redis_client, key) == (Decimal(0), Decimal("0.2"))


def spend(vq: VideoQueue, amount: str) -> None:
    """A job that ended having cost `amount`, submitted while no cap was set."""
    (job,) = stored(vq, VideoRequest(prompt=f"spend {amount}"))
    finish(vq.store, job.id, JobStatus.SUCCEEDED, Decimal(amount))


def test_money_spent_before_a_cap_was_set_counts_against_it(redis_client: Any) -> None:
    # Seen: $2.41 spent today, then BUDGET_DAILY_USD=1 said "already reserved or spent
    # $0.0000", and BUDGET_DAILY_USD=2 accepted $1.47 of new jobs.
    spend(queue(redis_client), "2.41")
    with pytest.raises(BudgetExceededError) as info:
        stored(queue(redis_client, budget_daily_usd=Decimal("1")), VideoRequest(prompt="over"))
    message = str(info.value)
    assert "cap $1.00" in message and "spent $2.4100" in message and "reserved $0.0000" in message
    assert "requested $0.2492" in message and "nothing was enqueued" in message
    with pytest.raises(BudgetExceededError):
        stored(queue(redis_client, budget_daily_usd=Decimal("2")), *[VideoRequest(prompt=f"{i}") for i in range(6)])
    assert Ledger(redis_client).report("day")[-1].jobs == 1


def test_a_cap_in_redis_binds_a_producer_whose_settings_have_none(redis_client: Any) -> None:
    set_caps(redis_client, {"day": Decimal("0.5")})
    uncapped = queue(redis_client)  # no BUDGET_* setting at all
    stored(uncapped, VideoRequest(prompt="1"), VideoRequest(prompt="2"))
    with pytest.raises(BudgetExceededError, match=r"budget day:.* cap \$0.50"):
        stored(uncapped, VideoRequest(prompt="3"))


def test_caps_precedence_redis_amount_then_redis_none_then_setting(redis_client: Any) -> None:
    defaults = BudgetPolicy(Decimal("10"), None, {"ads": Decimal("3")})
    assert load_caps(redis_client, defaults).cap("day") == Cap(Decimal("10"), "shell-settings")
    assert load_caps(redis_client, defaults).cap("month") == Cap(None, "none")
    set_caps(redis_client, {"day": Decimal("4"), "tag:ads": None, "tag:new": Decimal("1.5")})
    caps = load_caps(redis_client, defaults)
    assert (caps.cap("day"), caps.cap("tag:ads"), caps.cap("tag:new")) == (
        Cap(Decimal("4"), "redis"),
        Cap(None, "redis"),  # "none" in Redis: no cap, whatever the setting says
        Cap(Decimal("1.5"), "redis"),
    )
    assert caps.tag_names() == {"new"}
    set_caps(redis_client, {"day": "clear", "tag:ads": "clear"})
    caps = load_caps(redis_client, defaults)
    assert (caps.cap("day"), caps.cap("tag:ads")) == (
        Cap(Decimal("10"), "shell-settings"),
        Cap(Decimal("3"), "shell-settings"),
    )


def test_a_cap_set_while_a_producer_reads_the_counters_restarts_its_transaction(redis_client: Any) -> None:
    vq = queue(redis_client)
    jobs = [vq.prepare(VideoRequest(prompt="x"))]
    real_load = budget_module.load_caps
    calls: list[int] = []

    def load_and_race(client: Any, defaults: BudgetPolicy) -> Caps:
        caps = real_load(client, defaults)
        if not calls:  # another operator sets a cap after this producer read the caps
            set_caps(redis_client, {"day": Decimal("0.1")})
        calls.append(1)
        return caps

    with patch.object(budget_module, "load_caps", load_and_race), pytest.raises(BudgetExceededError):
        vq.store.create_many([j.record for j in jobs], budget=vq.budget)
    assert len(calls) == 2 and sum(redis_client.zcard(status_index(s)) for s in JobStatus) == 0


def test_budget_show_gives_cap_spent_reserved_and_left(redis_client: Any) -> None:
    vq = queue(redis_client, budget_tags_usd={"ads": Decimal("5")})
    spend(vq, "2.41")
    stored(vq, VideoRequest(prompt="pending", tags=("ads",)))
    set_caps(redis_client, {"day": Decimal("2")})
    today = datetime.now(UTC).date()
    rows = {s.budget: s.as_dict() for s in states(redis_client, vq.budget, today)}
    assert list(rows) == [f"day:{today}", f"month:{today.isoformat()[:7]}", "tag:ads"]
    day = rows[f"day:{today}"]
    assert day == {
        "budget": f"day:{today}",
        "kind": "day",
        "name": today.isoformat(),
        "cap_usd": 2.0,
        "cap_source": "redis",
        "spent_usd": 2.41,
        "reserved_usd": float(EST),
        "left_usd": float(Decimal(2) - Decimal("2.41") - EST),
    }
    assert rows[f"month:{today.isoformat()[:7]}"]["cap_usd"] is None
    assert rows[f"month:{today.isoformat()[:7]}"]["left_usd"] is None
    assert (rows["tag:ads"]["cap_source"], rows["tag:ads"]["left_usd"]) == ("shell-settings", float(5 - EST))


def test_the_worker_check_finds_a_budget_exceeded_after_a_cap_was_lowered(redis_client: Any) -> None:
    vq = queue(redis_client)
    first, second, third = stored(vq, *[VideoRequest(prompt=f"{i}") for i in range(3)])
    assert exceeded(redis_client, first, vq.budget) is None
    set_caps(redis_client, {"day": Decimal("0.5")})  # room for 2 of the 3 reserved
    over = exceeded(redis_client, first, vq.budget)
    assert over is not None and "cap $0.50" in str(over) and "reserved $0.7475" in str(over)
    assert "not created" in str(over)
    vq.store.transition(first.id, {JobStatus.QUEUED}, JobStatus.FAILED)  # what the worker does
    assert exceeded(redis_client, second, vq.budget) is None
    assert exceeded(redis_client, third, vq.budget) is None


def test_budget_rebuild_counts_every_job_from_the_ledger_and_the_job_store(redis_client: Any) -> None:
    vq = queue(redis_client)
    done, active = stored(vq, VideoRequest(prompt="done", tags=("ads",)), VideoRequest(prompt="active"))
    finish(vq.store, done.id, JobStatus.SUCCEEDED, Decimal("2.41"))
    # Counters as the old code kept them: only budgets with a cap, here none at all.
    for key in redis_client.keys(f"{keys.BUDGET_PREFIX}*"):
        redis_client.delete(key)
    vq.store.update(active.id, lambda r: r.model_copy(update={"budget_keys": []}))
    redis_client.hset(keys.budget_counter_key("tag:stale"), mapping={"reserved": 5, "spent": 7})
    today = datetime.now(UTC).date().isoformat()

    dry = rebuild_counters(redis_client, dry_run=True)
    assert redis_client.keys(keys.budget_counter_key("day:*")) == [] and dry.rekeyed_jobs == 1
    result = rebuild_counters(redis_client)
    assert (result.entries, result.active_jobs, result.rekeyed_jobs, result.day_from_settlement) == (1, 1, 1, 0)
    changed = {c.budget: (c.reserved_after, c.spent_after) for c in result.changes}
    assert changed == {
        f"day:{today}": (EST, Decimal("2.41")),
        f"month:{today[:7]}": (EST, Decimal("2.41")),
        "tag:ads": (Decimal(0), Decimal("2.41")),
        "tag:stale": (Decimal(0), Decimal(0)),
    }
    assert usage(redis_client, keys.budget_counter_key(f"day:{today}")) == (EST, Decimal("2.41"))
    assert redis_client.exists(keys.budget_counter_key("tag:stale")) == 0
    assert rebuild_counters(redis_client).changes == []  # idempotent
    # The active job now settles what the rebuild reserved for it.
    finish(vq.store, active.id, JobStatus.SUCCEEDED, Decimal("0.2"))
    assert usage(redis_client, keys.budget_counter_key(f"day:{today}")) == (Decimal(0), Decimal("2.61"))


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "BUDGET_DAILY_USD",
            "-5",
            f"invalid setting BUDGET_DAILY_USD: {RULE}",
        ),
        (
            "BUDGET_DAILY_USD",
            "lots",
            f"invalid setting BUDGET_DAILY_USD: {RULE}",
        ),
        (
            "BUDGET_MONTHLY_USD",
            "Infinity",
            f"invalid setting BUDGET_MONTHLY_USD: {RULE}",
        ),
        (
            "BUDGET_MONTHLY_USD",
            "0",
            f"invalid setting BUDGET_MONTHLY_USD: {RULE}",
        ),
        # Seen: 1e309 became a cap of Infinity, and `budget show --json` printed it (not JSON).
        (
            "BUDGET_MONTHLY_USD",
            "1e309",
            f"invalid setting BUDGET_MONTHLY_USD: {RULE}",
        ),
        (
            "BUDGET_DAILY_USD",
            "0.001",
            f"invalid setting BUDGET_DAILY_USD: {RULE}",
        ),
        (
            "BUDGET_TAGS_USD",
            '{"a": -1}',
            f"invalid setting BUDGET_TAGS_USD: tag 'a': {RULE}",
        ),
        (
            "BUDGET_TAGS_USD",
            '{"a": "lots"}',
            f"invalid setting BUDGET_TAGS_USD: tag 'a': {RULE}",
        ),
        (
            "BUDGET_TAGS_USD",
            '{"a": 1e309}',
            f"invalid setting BUDGET_TAGS_USD: tag 'a': {RULE}",
        ),
        (
            "BUDGET_TAGS_USD",
            '{"a": true}',
            f"invalid setting BUDGET_TAGS_USD: tag 'a': {RULE}",
        ),
        ("BUDGET_TAGS_USD", "[1]", "invalid setting BUDGET_TAGS_USD: must be a JSON object of tag to USD"),
    ],
)
def test_budget_settings_must_be_positive_amounts(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidSettingsError) as info:
        load_settings()
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_budget_settings_accept_amounts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGET_DAILY_USD", "12.50")
    monkeypatch.setenv("BUDGET_TAGS_USD", '{"a": 0.25, "b": "3"}')
    assert load_settings().budget_policy() == BudgetPolicy(
        Decimal("12.50"), None, {"a": Decimal("0.25"), "b": Decimal(3)}
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--daily", "-1"],
            f"error: --daily -1: {RULE}",
        ),
        (
            ["--monthly", "lots"],
            f"error: --monthly lots: {RULE}",
        ),
        (
            ["--tag", "a=0"],
            f"error: --tag a 0: {RULE}",
        ),
        # Seen: 1e309 was stored and printed as a 300-digit cap; 0.001 was stored and shown as $0.00.
        (
            ["--daily", "1e309"],
            f"error: --daily 1e309: {RULE}",
        ),
        (
            ["--monthly", "0.001"],
            f"error: --monthly 0.001: {RULE}",
        ),
        (
            ["--monthly", "1000000000.01"],
            f"error: --monthly 1000000000.01: {RULE}",
        ),
        (
            ["--daily", "NaN"],
            f"error: --daily NaN: {RULE}",
        ),
        (["--tag", "a"], "error: --tag a: give NAME=USD"),
        (["--daily", "5", "--clear-daily"], "error: give --daily or --clear-daily, not both"),
        ([], "error: nothing to set"),
    ],
)
def test_budget_set_refuses_what_is_not_a_cap_in_one_line(args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, ["budget", "set", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1


def test_budget_set_parses_amounts_none_and_clears() -> None:
    assert parse_changes(
        daily="5", monthly="none", tags=["a=1.5", "b=None"], clear_daily=False, clear_monthly=False, clear_tags=["c"]
    ) == {"day": Decimal(5), "month": None, "tag:a": Decimal("1.5"), "tag:b": None, "tag:c": "clear"}


def test_a_manifest_names_the_namespace_that_wrote_it_or_its_budget_keys_do() -> None:
    # Seen: `costs rebuild` in namespace dev took the manifests of demo, default and bq,
    # which share the default ./videos storage.
    now = datetime.now(UTC)
    record = JobRecord(
        id="j1",
        status=JobStatus.SUCCEEDED,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request=seedance_request("p"),
        cost_estimate_usd=Decimal("0.25"),
        cost_usd=Decimal("0.25"),
        created_at=now,
        updated_at=now,
        deadline_at=now,
    )
    with namespace.using("dev"):
        written = build_manifest(record, None)
    assert written["namespace"] == "dev" and manifest_namespace(written) == "dev"
    # Manifests written before the `namespace` field: their budget keys, as those versions wrote them.
    old = {"manifest_version": 1, "job": {"budget_keys": ["vq@bq:budget:day:2026-11-29"]}}
    assert manifest_namespace(old) == "bq"
    assert manifest_namespace({"job": {"budget_keys": ["vq:budget:month:2026-11"]}}) == "default"
    assert manifest_namespace({"job": {"budget_keys": []}}) == "default"
    assert manifest_namespace({"namespace": "Not valid!", "job": None}) == "default"
    assert describe_skipped({"demo": 4, "bq": 2}) == "skipped 6 manifests of other deployments: bq 2, demo 4"
    assert describe_skipped({}) == ""


def test_budget_show_says_a_cap_from_settings_binds_only_this_shell_not_the_fleet(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen: a cap from the shell's BUDGET_DAILY_USD was labelled "setting", as if it bound the fleet.
    import io

    from rich.console import Console

    from producer import cli_budget

    monkeypatch.setenv("BUDGET_DAILY_USD", "10")
    monkeypatch.setattr(cli_budget, "_store", lambda: JobStore(redis_client))
    set_caps(redis_client, {"month": Decimal("100")})
    note = "binds only the producers and workers whose settings have it; `videoqueue budget set` makes it fleet-wide"

    shown = CliRunner().invoke(app, ["budget", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    sources = {row["kind"]: row["cap_source"] for row in json.loads(shown.stdout)}
    assert sources == {"day": "shell-settings", "month": "redis"}

    tsv = CliRunner().invoke(app, ["budget", "show"])
    assert "\tshell-settings\t" in tsv.stdout and note not in tsv.stdout and note in tsv.stderr

    screen = io.StringIO()
    monkeypatch.setattr(cli_budget, "out", Console(file=screen, force_terminal=True, width=250))
    assert CliRunner().invoke(app, ["budget", "show"]).exit_code == 0
    assert "this shell's settings" in screen.getvalue() and "redis, fleet-wide" in screen.getvalue()
    assert note in screen.getvalue()


def test_cap_amounts_are_whole_cents_up_to_a_billion_and_older_stored_caps_still_bind(redis_client: Any) -> None:
    assert [parse_usd(v) for v in ("0.01", "12.5", "1e3", "1000000000", 7)] == [
        Decimal("0.01"),
        Decimal("12.50"),
        Decimal(1000),
        Decimal(1_000_000_000),
        Decimal(7),
    ]
    assert str(parse_usd("1e3")) == "1000.00"
    # Caps stored before the rule: a finer one keeps binding; one past any JSON number does not count.
    redis_client.hset(keys.BUDGET_CAPS, mapping={"day": "0.001", "month": "1e309"})
    caps = load_caps(redis_client, BudgetPolicy())
    assert (caps.cap("day"), caps.cap("month")) == (Cap(Decimal("0.001"), "redis"), Cap(None, "none"))
    rows = [s.as_dict() for s in states(redis_client, BudgetPolicy(), datetime.now(UTC).date())]
    json.dumps(rows, allow_nan=False)


def test_the_readme_documents_what_a_budget_refusal_carries() -> None:
    # Seen: the README's Python API and budgets sections never named BudgetExceededError.
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme[readme.index("## Costs and budgets") :]
    section = section[: section.index("\n## ", 1)]
    assert "`producer.BudgetExceededError`" in section
    refusal = BudgetExceededError("day:2026-11-29", Decimal(1), Decimal("0.5"), Decimal("0.25"), Decimal("0.5"))
    for attribute in ("budget", "cap", "spent", "reserved", "requested", "used"):
        assert hasattr(refusal, attribute) and f"`{attribute}`" in section, attribute
