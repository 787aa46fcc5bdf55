"""`videoqueue budget rebuild` after ledger rows expired (JOB_RETENTION_S), on fakeredis:
tag counters from the day aggregates, day and month counters recounted from the rows only
where every job of the period still has its row, the others kept and reported."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
from typer.testing import CliRunner

from producer.cli import app
from videoqueue import keys, ledger_days
from videoqueue.budget import to_micro, usage
from videoqueue.budget_rebuild import MARGIN_S, rebuild_counters, recount_cutoff
from videoqueue.keys import budget_counter_key, ledger_entry_key
from videoqueue.ledger import LedgerEntry, write_entry

DAY_S = 86400
RETENTION = 30 * DAY_S
NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)  # cut-off: 2026-02-19 12:00 (29 days before)


@pytest.fixture
def redis_client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def _at(day: str) -> datetime:
    return datetime.fromisoformat(f"{day}T10:00:00+00:00")


def _entry(job_id: str, submitted: str, settled: str, tags: tuple[str, ...], act: str) -> LedgerEntry:
    return LedgerEntry(
        job_id=job_id,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        status="succeeded",
        tags=tags,
        settled_at=_at(settled),
        estimate_usd=Decimal("0.249163"),
        actual_usd=Decimal(act),
        billed_units=1,
        unit="token",
        submitted_at=_at(submitted),
    )


ENTRIES = [
    _entry("j1", "2026-01-10", "2026-01-10", ("ads",), "1.00"),  # row expired
    _entry("j2", "2026-02-05", "2026-02-25", ("ads",), "2.00"),  # ran 20 days: row kept
    _entry("j3", "2026-02-10", "2026-02-10", ("ads",), "0.50"),  # row expired
    _entry("j4", "2026-03-15", "2026-03-15", ("ads", "q4"), "0.25"),
    _entry("j5", "2026-03-18", "2026-03-18", (), "0.10"),
]
EXPIRED = {"j1", "j3"}


def _ledger_after_retention(client: Any) -> None:
    """What the final moves left 2026-03-20 with a 30-day retention: every entry in the day
    aggregates and the ledger index (the sweep has not trimmed it yet), rows of the jobs
    settled within the retention only."""
    pipe = client.pipeline(transaction=True)
    for entry in ENTRIES:
        ledger_days.add(pipe, entry)
        write_entry(pipe, entry)
    pipe.execute()
    client.delete(*(ledger_entry_key(i) for i in EXPIRED))


def _counters(client: Any, spent: dict[str, str], reserved: dict[str, str] | None = None) -> None:
    for budget, amount in spent.items():
        client.hset(
            budget_counter_key(budget),
            mapping={
                "spent": to_micro(Decimal(amount)),
                "reserved": to_micro(Decimal((reserved or {}).get(budget, "0"))),
            },
        )


# The counters as the final moves kept them (each job in its submission day and month).
RIGHT = {
    "tag:ads": "3.75",
    "tag:q4": "0.25",
    "month:2026-01": "1.00",
    "month:2026-02": "2.50",
    "month:2026-03": "0.35",
    "day:2026-02-05": "2.00",
    "day:2026-02-10": "0.50",
    "day:2026-03-15": "0.25",
    "day:2026-03-18": "0.10",
}


def _spent(client: Any, budget: str) -> Decimal:
    return usage(client, budget_counter_key(budget))[1]


def test_the_cutoff_is_the_retention_less_a_day_and_none_without_retention() -> None:
    assert recount_cutoff(NOW, RETENTION) == NOW - timedelta(seconds=RETENTION - MARGIN_S)
    assert recount_cutoff(NOW, RETENTION) == datetime(2026, 2, 19, 12, tzinfo=UTC)
    assert recount_cutoff(NOW, 0) is None


def test_rows_expired_tags_come_from_the_aggregates_and_old_periods_are_kept(redis_client: Any) -> None:
    _ledger_after_retention(redis_client)
    _counters(redis_client, RIGHT, reserved={"month:2026-01": "5"})  # a leaked reservation
    redis_client.delete(budget_counter_key("tag:ads"))  # lost
    _counters(redis_client, {"month:2026-03": "9.99"})  # wrong

    result = rebuild_counters(redis_client, retention_s=RETENTION, now=NOW)

    # All-time tag totals: every job ever settled under the tag, rows expired or not (the
    # rows alone would say 2.25 for ads).
    assert _spent(redis_client, "tag:ads") == Decimal("3.75") == sum(e.actual_usd for e in ENTRIES if "ads" in e.tags)
    assert _spent(redis_client, "tag:q4") == Decimal("0.25")
    # Periods that started after the cut-off: recounted from the rows, as before retention.
    assert _spent(redis_client, "month:2026-03") == Decimal("0.35")
    assert _spent(redis_client, "day:2026-03-15") == Decimal("0.25")
    # Older ones: spent as stored (the rows alone would say 2.00 and 0, and drop January),
    # reserved recounted (no active job: the leak goes).
    assert result.kept == ["day:2026-02-05", "day:2026-02-10", "month:2026-01", "month:2026-02"]
    assert result.cutoff == datetime(2026, 2, 19, 12, tzinfo=UTC)
    assert usage(redis_client, budget_counter_key("month:2026-01")) == (Decimal(0), Decimal("1.00"))
    assert _spent(redis_client, "month:2026-02") == Decimal("2.50")
    assert _spent(redis_client, "day:2026-02-10") == Decimal("0.50")
    changed = {c.budget: (c.spent_before, c.spent_after, c.reserved_after) for c in result.changes}
    assert changed == {
        "tag:ads": (Decimal(0), Decimal("3.75"), Decimal(0)),
        "month:2026-03": (Decimal("9.99"), Decimal("0.35"), Decimal(0)),
        "month:2026-01": (Decimal("1.00"), Decimal("1.00"), Decimal(0)),
    }
    assert (result.entries, result.unchanged) == (3, len(RIGHT) - 3)
    assert rebuild_counters(redis_client, retention_s=RETENTION, now=NOW).changes == []  # idempotent


def test_a_kept_counter_redis_lost_is_given_what_its_rows_still_show(redis_client: Any) -> None:
    _ledger_after_retention(redis_client)
    _counters(redis_client, {k: v for k, v in RIGHT.items() if k != "month:2026-02"})
    result = rebuild_counters(redis_client, retention_s=RETENTION, now=NOW)
    # j2's row is still stored: at least that much was spent in February (j3's is not).
    assert "month:2026-02" in result.kept
    assert _spent(redis_client, "month:2026-02") == Decimal("2.00")


def test_a_period_whose_settlement_days_lack_rows_is_kept_even_after_the_cutoff(redis_client: Any) -> None:
    # A retention shortened since (or rows lost): j4's row is gone though settled 5 days ago.
    _ledger_after_retention(redis_client)
    redis_client.delete(ledger_entry_key("j4"))
    _counters(redis_client, RIGHT)
    result = rebuild_counters(redis_client, retention_s=RETENTION, now=NOW)
    assert {"day:2026-03-15", "month:2026-03"} <= set(result.kept)
    assert "day:2026-03-18" not in result.kept
    assert _spent(redis_client, "month:2026-03") == Decimal("0.35")
    assert _spent(redis_client, "day:2026-03-15") == Decimal("0.25")
    assert _spent(redis_client, "tag:q4") == Decimal("0.25")  # from the aggregates
    assert result.changes == []


def test_without_retention_every_counter_is_recounted_from_the_rows(redis_client: Any) -> None:
    _ledger_after_retention(redis_client)
    _counters(redis_client, RIGHT)
    result = rebuild_counters(redis_client, retention_s=0, now=NOW)
    # Retention 0 says rows never expire: nothing is kept, the rows are the truth (here two
    # rows are missing, so the day and month counters drop; tags keep the aggregates').
    assert (result.kept, result.cutoff) == ([], None)
    assert _spent(redis_client, "month:2026-02") == Decimal("2.00")
    assert _spent(redis_client, "tag:ads") == Decimal("3.75")


def test_a_dry_run_writes_nothing(redis_client: Any) -> None:
    _ledger_after_retention(redis_client)
    _counters(redis_client, {"month:2026-03": "9.99", "day:2026-01-01": "1"})
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    dry = rebuild_counters(redis_client, dry_run=True, retention_s=RETENTION, now=NOW)
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before
    done = rebuild_counters(redis_client, retention_s=RETENTION, now=NOW)
    assert (dry.changes, dry.kept) == (done.changes, done.kept) and dry.changes


def test_the_command_names_the_kept_counters_and_why(redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Submitted 35 days ago, settled today: its day and month started before the cut-off of
    # the default retention (30 days), so they are kept. The command runs on the real clock.
    now = datetime.now(UTC)
    day = (now - timedelta(days=35)).date().isoformat()
    old = _entry("old", day, now.date().isoformat(), ("x",), "1")
    pipe = redis_client.pipeline(transaction=True)
    ledger_days.add(pipe, old)
    write_entry(pipe, old)
    pipe.execute()
    monkeypatch.setattr("producer.cli_budget._store", type("S", (), {"redis": redis_client}))
    output = CliRunner().invoke(app, ["budget", "rebuild", "--dry-run"]).output
    assert "kept 2 day/month counters, not recounted" in output
    assert f"day:{day}, month:{day[:7]}" in output and "spent not lowered" in output
    assert keys.BUDGET_PREFIX not in output
    assert redis_client.keys(f"{keys.BUDGET_PREFIX}*") == []
