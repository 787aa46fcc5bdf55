"""The cost ledger: one entry per job that cost money, written in the same transaction
that moves the job to its final status (so never twice, whatever the redelivery), and
the reports built from it: what we spent by day, month, provider, model, tag or status.

Each entry is also in the job's manifest in storage, so `videoqueue costs rebuild` can
bring the ledger back after Redis loses it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict

from producer import namespace, stats
from producer.budget import to_micro
from producer.contract import JobRecord, Usd

KEY_PREFIX = namespace.keep(globals(), "KEY_PREFIX", lambda: namespace.key("ledger:"))
INDEX_KEY = namespace.keep(globals(), "INDEX_KEY", lambda: namespace.key("ledger:index"))
UNTAGGED = "(untagged)"
TOTAL = "total"

GroupBy = Literal["day", "month", "provider", "model", "tag", "status"]
GROUPS: tuple[str, ...] = ("day", "month", "provider", "model", "tag", "status")


def entry_key(job_id: str) -> str:
    """Redis key of one ledger entry."""
    return f"{KEY_PREFIX}entry:{job_id}"


class LedgerEntry(BaseModel):
    """What one job cost, settled."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    provider: str
    model: str
    status: str
    tags: tuple[str, ...]
    settled_at: datetime
    estimate_usd: Usd
    actual_usd: Usd
    billed_units: int | None
    unit: str
    # The part of actual_usd that is an estimate: tasks the job may have been billed for
    # but does not use (see JobRecord.uncertain_cost_usd).
    uncertain_usd: Usd = Decimal(0)

    @property
    def day(self) -> str:
        """UTC day of settlement, YYYY-MM-DD."""
        return self.settled_at.astimezone(UTC).date().isoformat()

    @classmethod
    def for_job(cls, record: JobRecord) -> LedgerEntry | None:
        """The entry of a finished job, or None when the provider charged nothing."""
        charged = record.charged_usd
        if charged is None or not record.status.is_final:
            return None
        return cls(
            job_id=record.id,
            provider=record.provider,
            model=record.model,
            status=record.status.value,
            tags=tuple(record.request.get("tags") or ()),
            settled_at=record.finished_at or record.updated_at,
            estimate_usd=record.cost_estimate_usd,
            actual_usd=charged,
            billed_units=record.billed_units,
            unit=record.billed_unit,
            uncertain_usd=record.uncertain_cost_usd or Decimal(0),
        )


def write_entry(pipe: Any, entry: LedgerEntry) -> None:
    """Queue the writes of an entry on a MULTI pipeline (idempotent: NX, same score)."""
    pipe.set(entry_key(entry.job_id), entry.model_dump_json(), nx=True)
    pipe.zadd(INDEX_KEY, {entry.job_id: entry.settled_at.timestamp()})


class CostRow(BaseModel):
    """One line of a cost report."""

    group: str
    jobs: int
    estimate_usd: Usd
    actual_usd: Usd
    difference_usd: Usd


class Ledger:
    """Reads and rebuilds the ledger in Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def entries(self, since: date | None = None, until: date | None = None) -> list[LedgerEntry]:
        """Entries settled from `since` through `until` (UTC days, both inclusive)."""
        low = str(datetime.combine(since, time.min, UTC).timestamp()) if since else "-inf"
        # "(" makes the bound exclusive: up to, not including, the day after `until`.
        high = f"({datetime.combine(until + timedelta(days=1), time.min, UTC).timestamp()}" if until else "+inf"
        ids: list[str] = self.redis.zrangebyscore(INDEX_KEY, low, high)  # type: ignore[assignment]
        entries: list[LedgerEntry] = []
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            raws: list[str | None] = self.redis.mget([entry_key(i) for i in batch])  # type: ignore[assignment]
            entries.extend(LedgerEntry.model_validate_json(r) for r in raws if r)
        return entries

    def entry(self, job_id: str) -> LedgerEntry | None:
        """The entry of one job, or None."""
        raw: str | None = self.redis.get(entry_key(job_id))  # type: ignore[assignment]
        return LedgerEntry.model_validate_json(raw) if raw else None

    def report(
        self,
        by: GroupBy,
        since: date | None = None,
        until: date | None = None,
        *,
        provider: str | None = None,
        model: str | None = None,
        tag: str | None = None,
        status: str | None = None,
    ) -> list[CostRow]:
        """Totals per group, with a final `total` row."""
        selected = [
            e
            for e in self.entries(since, until)
            if (provider is None or e.provider == provider)
            and (model is None or e.model == model)
            and (tag is None or tag in e.tags)
            and (status is None or e.status == status)
        ]
        return summarize(selected, by)

    def replace_all(self, entries: Iterable[LedgerEntry]) -> int:
        """Make the ledger hold exactly `entries` (used by rebuild). Returns how many."""
        entries = list(entries)
        old: list[str] = self.redis.zrange(INDEX_KEY, 0, -1)  # type: ignore[assignment]
        pipe = self.redis.pipeline(transaction=True)
        for job_id in old:
            pipe.delete(entry_key(job_id))
        pipe.delete(INDEX_KEY, stats.COST_KEY)
        for entry in entries:
            write_entry(pipe, entry)
            stats.add_cost(pipe, entry.provider, entry.model, to_micro(entry.estimate_usd), to_micro(entry.actual_usd))
        pipe.execute()
        return len(entries)


def _groups(entry: LedgerEntry, by: str) -> list[str]:
    if by == "day":
        return [entry.day]
    if by == "month":
        return [entry.day[:7]]
    if by == "tag":
        return list(entry.tags) or [UNTAGGED]
    return [str(getattr(entry, by))]


def summarize(entries: Iterable[LedgerEntry], by: str) -> list[CostRow]:
    """Group entries and total them; a job with several tags counts under each tag, but
    once in the `total` row."""
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}")
    counts: dict[str, int] = {}
    estimates: dict[str, Decimal] = {}
    actuals: dict[str, Decimal] = {}
    for entry in entries:
        for group in [*_groups(entry, by), TOTAL]:
            counts[group] = counts.get(group, 0) + 1
            estimates[group] = estimates.get(group, Decimal(0)) + entry.estimate_usd
            actuals[group] = actuals.get(group, Decimal(0)) + entry.actual_usd
    order = [*sorted(g for g in counts if g != TOTAL), TOTAL]
    return [
        CostRow(
            group=group,
            jobs=counts.get(group, 0),
            estimate_usd=estimates.get(group, Decimal(0)),
            actual_usd=actuals.get(group, Decimal(0)),
            difference_usd=actuals.get(group, Decimal(0)) - estimates.get(group, Decimal(0)),
        )
        for group in order
    ]
