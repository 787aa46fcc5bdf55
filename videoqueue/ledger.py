"""The cost ledger: one entry per job that cost money, written in the same transaction
that moves the job to its final status (so never twice, whatever the redelivery), and
the reports built from it: what we spent by day, month, provider, model, tag or status.

Each entry is also in the job's manifest in storage, so `videoqueue costs rebuild` can
bring the ledger back after Redis loses it. The per-job rows follow the job records'
retention (JOB_RETENTION_S); reports read the per-day aggregates, which stay
(videoqueue.ledger_days).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

import pydantic_core
import redis
from pydantic import BaseModel, ConfigDict, model_validator

from videoqueue import keys, ledger_days, retention, stats, storedform
from videoqueue.budget import to_micro
from videoqueue.job import JobRecord, Usd
from videoqueue.keys import ledger_entry_key

UNTAGGED = "(untagged)"
TOTAL = "total"

GroupBy = Literal["day", "month", "provider", "model", "tag", "status"]
GROUPS: tuple[str, ...] = ("day", "month", "provider", "model", "tag", "status")


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
    # When the job was enqueued: the day and month its budgets count it in. None in entries
    # written before it was recorded.
    submitted_at: datetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_stored_form(cls, data: Any) -> Any:
        """Rows in the compact stored form (`to_store_json`) read as the full ones."""
        if not storedform.is_compact(data):
            return data
        data = {name: value for name, value in data.items() if name != "v"}
        storedform.decode_times(data, "settled_at", _ROW_TIMES)
        for name, default in _ROW_DEFAULTS.items():
            data.setdefault(name, default)
        data.setdefault("actual_usd", data.get("estimate_usd"))
        return data

    def to_store_json(self) -> str:
        """The entry as the ledger holds it in Redis: compact JSON (videoqueue.storedform:
        times as integers, `status` "succeeded", `unit` "token", empty `tags`, no
        `billed_units`, no `uncertain_usd` and `actual_usd` equal to `estimate_usd` left
        out) that `model_validate_json` reads back into an equal entry. Manifests keep the
        full form (`model_dump`)."""
        data = self.model_dump(mode="json")
        storedform.drop_defaults(data, _ROW_DEFAULTS)
        if data["actual_usd"] == data["estimate_usd"]:
            del data["actual_usd"]
        storedform.encode_times(data, self.__dict__, "settled_at", _ROW_TIMES)
        return pydantic_core.to_json({"v": storedform.VERSION, **data}).decode()

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
            tags=record.request.tags,
            settled_at=record.finished_at or record.updated_at,
            estimate_usd=record.cost_estimate_usd,
            actual_usd=charged,
            billed_units=record.billed_units,
            unit=record.billed_unit,
            uncertain_usd=record.uncertain_cost_usd or Decimal(0),
            submitted_at=record.created_at,
        )


# What the compact stored form leaves out: a field absent there reads as this value.
_ROW_DEFAULTS: dict[str, Any] = {
    "status": "succeeded",
    "tags": [],
    "billed_units": None,
    "unit": "token",
    "uncertain_usd": 0,
    "submitted_at": None,
}
_ROW_TIMES = ("settled_at", "submitted_at")


def write_entry(pipe: Any, entry: LedgerEntry) -> None:
    """Queue the writes of an entry on a MULTI pipeline (idempotent: NX, same score)."""
    pipe.set(ledger_entry_key(entry.job_id), entry.to_store_json(), nx=True)
    pipe.zadd(keys.LEDGER_INDEX, {entry.job_id: entry.settled_at.timestamp()})


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
        """Entries settled from `since` through `until` (UTC days, both inclusive) whose
        per-job rows are still stored (they expire with their jobs: JOB_RETENTION_S)."""
        low = str(datetime.combine(since, time.min, UTC).timestamp()) if since else "-inf"
        # "(" makes the bound exclusive: up to, not including, the day after `until`.
        high = f"({datetime.combine(until + timedelta(days=1), time.min, UTC).timestamp()}" if until else "+inf"
        ids: list[str] = self.redis.zrangebyscore(keys.LEDGER_INDEX, low, high)  # type: ignore[assignment]
        entries: list[LedgerEntry] = []
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            raws: list[str | None] = self.redis.mget([ledger_entry_key(i) for i in batch])  # type: ignore[assignment]
            entries.extend(LedgerEntry.model_validate_json(r) for r in raws if r)
        return entries

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
        """Totals per group, with a final `total` row, from the per-day aggregates
        (videoqueue.ledger_days), so the answer stays the same after per-job rows expire.
        Raises ValueError for an unknown `by`."""
        if by not in GROUPS:
            raise ValueError(f"cannot group by {by!r}; choose one of {', '.join(GROUPS)}")
        ledger_days.ensure(self.redis, read_entries, retention.retention_s())
        rows = ledger_days.report_rows(self.redis, since, until, provider=provider, model=model, tag=tag, status=status)
        return [
            CostRow(group=group, jobs=jobs, estimate_usd=est, actual_usd=act, difference_usd=act - est)
            for group, jobs, est, act in ledger_days.summarize_days(rows, by, tag_filter=tag is not None)
        ]

    def merge(
        self,
        found: Iterable[LedgerEntry],
        *,
        prune: bool = False,
        dry_run: bool = False,
        retention_s: int | None = None,
    ) -> LedgerDiff:
        """Bring the entries `found` (in storage) into the ledger: add those it lacks and
        replace those that differ; keep every entry not found, unless `prune` removes them.
        With `dry_run` nothing is written. Returns what differed (or was changed).

        The day aggregates (videoqueue.ledger_days) change with every row added, changed or
        pruned. An entry without a row that was settled longer than `retention_s` ago
        (default JOB_RETENTION_S) and whose day has aggregates is counted there already (its
        row expired): it is `unchanged`, not added again (`ledger_days.counted_without_row`).
        A row added back expires when it would have; one past that is not written, its
        amounts go to the aggregates only."""
        by_id = {entry.job_id: entry for entry in found}
        keep_s = retention_s if retention_s is not None else retention.retention_s()
        ledger_days.ensure(self.redis, read_entries, keep_s)

        result: list[LedgerDiff] = []

        def write(pipe: Any) -> None:
            result.clear()
            now = time_now()
            ids: list[str] = pipe.zrange(keys.LEDGER_INDEX, 0, -1)
            current = {e.job_id: e for e in read_entries(pipe, ids)}
            # Rows expired with their jobs still count in the day aggregates: not added again.
            counted = ledger_days.counted_without_row(
                pipe, [e for i, e in by_id.items() if i not in current], keep_s, now
            )
            missing = [e for i, e in current.items() if i not in by_id]
            after = {**current, **by_id}
            if prune:
                for entry in missing:
                    del after[entry.job_id]
            diff = LedgerDiff(
                added=[e for i, e in by_id.items() if i not in current and i not in counted],
                changed=[(current[i], e) for i, e in by_id.items() if i in current and current[i] != e],
                unchanged=sum(1 for i, e in by_id.items() if current.get(i) == e or i in counted),
                missing=missing,
                pruned=prune and not dry_run,
                before_jobs=len(current),
                before_usd=sum((e.actual_usd for e in current.values()), Decimal(0)),
                after_jobs=len(after),
                after_usd=sum((e.actual_usd for e in after.values()), Decimal(0)),
            )
            result.append(diff)
            if dry_run:
                return
            pipe.multi()
            for entry in diff.added:
                # A row past its retention is not written back: its amounts go to the aggregates only.
                if ledger_days.row_alive(entry, keep_s, now):
                    write_entry(pipe, entry)
                    ledger_days.expire_row(pipe, entry, keep_s)
                ledger_days.add(pipe, entry)
                stats.add_cost(
                    pipe, entry.provider, entry.model, to_micro(entry.estimate_usd), to_micro(entry.actual_usd)
                )
            for old, new in diff.changed:
                _unindex(pipe, old)
                pipe.set(ledger_entry_key(new.job_id), new.to_store_json())
                pipe.zadd(keys.LEDGER_INDEX, {new.job_id: new.settled_at.timestamp()})
                ledger_days.expire_row(pipe, new, keep_s)
                ledger_days.add(pipe, new)
                stats.add_cost(pipe, new.provider, new.model, to_micro(new.estimate_usd), to_micro(new.actual_usd))
            if diff.pruned:
                for entry in diff.missing:
                    _unindex(pipe, entry)

        self.redis.transaction(write, keys.LEDGER_INDEX)
        return result[0]


class LedgerDiff(BaseModel):
    """How the entries found in storage differ from the ledger."""

    added: list[LedgerEntry]  # in storage only
    changed: list[tuple[LedgerEntry, LedgerEntry]]  # (ledger's, storage's)
    unchanged: int
    missing: list[LedgerEntry]  # in the ledger only: their manifests were not seen
    pruned: bool  # whether the missing entries were removed

    # The ledger before, and after (as written, or as it would be without dry run).
    before_jobs: int
    before_usd: Decimal
    after_jobs: int
    after_usd: Decimal


def read_entries(client: Any, ids: list[str]) -> list[LedgerEntry]:
    """The rows of `ids` still stored (a client, or a pipeline before MULTI), in batches."""
    entries: list[LedgerEntry] = []
    for start in range(0, len(ids), 500):
        raws: list[str | None] = client.mget([ledger_entry_key(i) for i in ids[start : start + 500]])
        entries.extend(LedgerEntry.model_validate_json(r) for r in raws if r)
    return entries


def time_now() -> float:
    """Epoch seconds now (a function, so tests can move the clock)."""
    return datetime.now(UTC).timestamp()


def _unindex(pipe: Any, entry: LedgerEntry) -> None:
    """Queue the removal of an entry and of its money from the cost statistics and the day
    aggregates."""
    ledger_days.add(pipe, entry, -1)
    pipe.delete(ledger_entry_key(entry.job_id))
    pipe.zrem(keys.LEDGER_INDEX, entry.job_id)
    stats.add_cost(
        pipe, entry.provider, entry.model, -to_micro(entry.estimate_usd), -to_micro(entry.actual_usd), jobs=-1
    )


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
