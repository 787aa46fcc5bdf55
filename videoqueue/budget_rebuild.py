"""Recount the budget counters from the truth: spent from the cost ledger, reserved from
the jobs not yet ended in the job store (`videoqueue budget rebuild`).

For counters kept before every job counted (only budgets with a cap were counted), or
after Redis lost them, or after `videoqueue costs rebuild` changed the ledger. Active jobs
are also given every counter key, so that their end settles what the rebuild reserved.

A job's ledger entry is kept per job only while its record (or a per-job row) lives
(`ledger.read_ledger`): JOB_RETENTION_S after its end (videoqueue.retention).
"Rows" below are these per-job entries. So spent is never lowered below what the ledger
still knows:

- **Tag counters** (all time): spent from the ledger's day aggregates (videoqueue.ledger_days,
  part `g`, metric `act`, every day, provider, model and status), which outlive the rows; or
  from the rows still stored when they sum to more (rows an old worker wrote that the
  aggregates do not count yet, aggregates not backfilled).
- **Day and month counters** count a job in the period it was submitted, the aggregates by
  the day it settled, so only the rows can recount them. A job settles after it was
  submitted and its row expires JOB_RETENTION_S after it settled, so every job submitted in
  a period still has its row while the period started less than JOB_RETENTION_S ago. The
  cut-off (`recount_cutoff`): a period is recounted from the rows when it started after
  now - JOB_RETENTION_S + MARGIN_S (a day: clocks of workers and Redis apart, TTLs set a
  moment after the settlement time) and no day of settlement from its start on has fewer
  rows stored than its aggregates count jobs (rows gone early: a retention shortened since).
  An older period is `kept`: its spent stays as stored, raised only to what its rows still
  stored add up to (never more than it spent); its reserved is recounted (active jobs'
  records do not expire). With JOB_RETENTION_S 0 rows never expire and everything is
  recounted from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import redis

from videoqueue import keys, retention
from videoqueue.budget import (
    DAY,
    DAY_TTL_S,
    MONTH,
    MONTH_TTL_S,
    counter_ttl,
    from_micro,
    keys_for,
    to_micro,
)
from videoqueue.job import JobRecord, utcnow
from videoqueue.jobstore import active_index_keys
from videoqueue.keys import budget_counter_key, job_key, ledger_day_key
from videoqueue.ledger import LedgerEntry, read_ledger

# Slack on the recount cut-off: clocks of hosts and Redis apart, a TTL set a moment after
# the settlement time it is counted from.
MARGIN_S = 86400


@dataclass(frozen=True)
class CounterChange:
    """One counter whose amounts the rebuild changed (USD)."""

    budget: str  # day:YYYY-MM-DD, month:YYYY-MM or tag:NAME
    reserved_before: Decimal
    spent_before: Decimal
    reserved_after: Decimal
    spent_after: Decimal


@dataclass(frozen=True)
class CounterRebuild:
    """What a rebuild found and changed (or, in a dry run, would change)."""

    changes: list[CounterChange]
    unchanged: int  # counters already right
    entries: int  # ledger entries counted as spent
    active_jobs: int  # jobs counted as reserved
    rekeyed_jobs: int  # active jobs given their full list of counters
    day_from_settlement: int  # entries of unknown submission day, counted on the day they were settled
    # Day and month counters (day:YYYY-MM-DD, month:YYYY-MM) not recounted from the rows,
    # their jobs' rows possibly expired: spent kept as stored (or raised to the rows left).
    kept: list[str] = field(default_factory=list)
    cutoff: datetime | None = None  # periods starting after it were recounted; None: all


def _period_keys(day: date, tags: tuple[str, ...] | list[str]) -> list[str]:
    iso = day.isoformat()
    return [
        budget_counter_key(f"{DAY}:{iso}"),
        budget_counter_key(f"{MONTH}:{iso[:7]}"),
        *(budget_counter_key(f"tag:{t}") for t in dict.fromkeys(tags)),
    ]


def _kept(key: str, today: date) -> bool:
    """Whether a counter of that period would still exist (day and month counters expire)."""
    budget = key.removeprefix(keys.BUDGET_PREFIX)
    if budget.startswith(f"{DAY}:"):
        return date.fromisoformat(budget[4:]) >= today - timedelta(seconds=DAY_TTL_S)
    if budget.startswith(f"{MONTH}:"):
        return date.fromisoformat(budget[6:] + "-01") >= today - timedelta(seconds=MONTH_TTL_S)
    return True


def _period_start(budget: str) -> datetime | None:
    """The UTC start of a `day:` or `month:` budget's period; None for a tag."""
    if budget.startswith(f"{DAY}:"):
        start = date.fromisoformat(budget[4:])
    elif budget.startswith(f"{MONTH}:"):
        start = date.fromisoformat(budget[6:] + "-01")
    else:
        return None
    return datetime.combine(start, time.min, UTC)


def recount_cutoff(now: datetime, retention_s: int) -> datetime | None:
    """The instant after which a day or month must have started for all its jobs' ledger
    rows to be stored still: now - retention + MARGIN_S; None when rows never expire
    (retention 0)."""
    return None if retention_s <= 0 else now - timedelta(seconds=retention_s - MARGIN_S)


def _aggregates(pipe: Any) -> tuple[dict[str, int], dict[str, int]]:
    """From the ledger's day aggregates: spent per tag over all days (micro-USD) and jobs
    counted per day of settlement. WATCHes the day hashes it reads."""
    days: list[str] = pipe.zrange(keys.LEDGER_DAYS, 0, -1)
    if days:
        pipe.watch(*(ledger_day_key(d) for d in days))
    tags: dict[str, int] = {}
    jobs: dict[str, int] = {}
    for day in days:
        values: dict[str, str] = pipe.hgetall(ledger_day_key(day))
        for name, value in values.items():
            part, _prov, _mod, _stat, tag, metric = name.split(" ")
            if part == "g" and metric == "act":
                tags[tag] = tags.get(tag, 0) + int(value)
            elif part == "t" and metric == "jobs":
                jobs[day] = jobs.get(day, 0) + int(value)
    return tags, jobs


def _spent_from_rows(entries: list[LedgerEntry], created: dict[str, datetime]) -> tuple[dict[str, list[int]], int]:
    """Counter key -> [reserved 0, spent] from the rows still stored, each on the day and
    month its job was submitted (`created`: the records' times for entries without one; else
    the day of settlement) and on its tags; and how many took the day of settlement."""
    target: dict[str, list[int]] = {}
    from_settlement = 0
    for entry in entries:
        submitted = entry.submitted_at or created.get(entry.job_id)
        if submitted is None:
            from_settlement += 1
        for key in _period_keys((submitted or entry.settled_at).date(), entry.tags):
            target.setdefault(key, [0, 0])[1] += to_micro(entry.actual_usd)
    return target, from_settlement


def _last_gap(entries: list[LedgerEntry], jobs_per_day: dict[str, int]) -> datetime | None:
    """The start of the last day of settlement with fewer rows stored than its aggregates
    count jobs (rows gone: expired, or lost), None if none."""
    rows: dict[str, int] = {}
    for entry in entries:
        rows[entry.day] = rows.get(entry.day, 0) + 1
    gaps = [day for day, jobs in jobs_per_day.items() if rows.get(day, 0) < jobs]
    return datetime.combine(date.fromisoformat(max(gaps)), time.min, UTC) if gaps else None


def _keep_old_periods(
    target: dict[str, list[int]],
    before: dict[str, list[int]],
    cutoff: datetime | None,
    last_gap: datetime | None,
) -> list[str]:
    """Give each day and month counter whose jobs may have lost rows (its period started at
    or before `cutoff`, or on or before `last_gap`: a job settles after it was submitted)
    the greater of its stored spent and its rows' in `target`; the names of those kept."""
    if cutoff is None:
        return []
    kept: list[str] = []
    for key in sorted(set(before) | set(target)):
        start = _period_start(key.removeprefix(keys.BUDGET_PREFIX))
        if start is None or (start > cutoff and (last_gap is None or start > last_gap)):
            continue
        kept.append(key.removeprefix(keys.BUDGET_PREFIX))
        counter = target.setdefault(key, [0, 0])
        counter[1] = max(counter[1], before.get(key, [0, 0])[1])
    return kept


def _read_all(pipe: Any, names: list[str]) -> list[str | None]:
    values: list[str | None] = []
    for start in range(0, len(names), 500):
        values.extend(pipe.mget(names[start : start + 500]))
    return values


def rebuild_counters(
    client: redis.Redis,
    *,
    dry_run: bool = False,
    retention_s: int | None = None,
    now: datetime | None = None,
) -> CounterRebuild:
    """Recount every budget counter in one transaction (retried if a job is created or ends,
    or the ledger changes, meanwhile). Spent: each ledger entry's actual cost, on the UTC day
    and month its job was submitted and on each of its tags; tags from the day aggregates
    when they know more, day and month counters older than the cut-off kept (module
    docstring). Reserved: each active job's estimate likewise. `retention_s` defaults to
    JOB_RETENTION_S, `now` to the clock. With `dry_run` nothing is written."""
    result: list[CounterRebuild] = []
    at = now or utcnow()
    today = at.date()
    cutoff = recount_cutoff(at, retention.retention_s() if retention_s is None else retention_s)

    def write(pipe: Any) -> None:
        result.clear()
        active_ids = sorted({i for index in active_index_keys() for i in pipe.zrange(index, 0, -1)})
        if active_ids:
            pipe.watch(*[job_key(i) for i in active_ids])  # rewritten below with their keys
        raws = _read_all(pipe, [job_key(i) for i in active_ids])
        records = [JobRecord.from_store_json(r, i) for i, r in zip(active_ids, raws, strict=True) if r]
        # First, so that the WATCH on the day hashes also covers a row changed in place
        # (`costs rebuild` restates its day's aggregates with it) while the rows are read.
        tag_spent, jobs_per_day = _aggregates(pipe)
        entries = list(read_ledger(pipe).values())

        # Entries written before they recorded their submission: the job's record, if kept.
        undated = [e.job_id for e in entries if e.submitted_at is None]
        created: dict[str, datetime] = {}
        for job_id, raw in zip(undated, _read_all(pipe, [job_key(i) for i in undated]), strict=True):
            if raw:
                created[job_id] = JobRecord.from_store_json(raw, job_id).created_at
        target, from_settlement = _spent_from_rows(entries, created)
        for tag, spent in tag_spent.items():
            counter = target.setdefault(budget_counter_key(f"tag:{tag}"), [0, 0])
            counter[1] = max(counter[1], spent)
        rekeyed: list[JobRecord] = []
        for record in records:
            counters = keys_for(record)
            for key in counters:
                target.setdefault(key, [0, 0])[0] += to_micro(record.cost_estimate_usd)
            if record.budget_keys != counters:
                rekeyed.append(record.model_copy(update={"budget_keys": counters}))
        target = {k: v for k, v in target.items() if _kept(k, today)}

        existing = sorted(str(k) for k in pipe.scan_iter(f"{keys.BUDGET_PREFIX}*", count=500))
        before = {k: [int(v or 0) for v in pipe.hmget(k, "reserved", "spent")] for k in existing}
        kept = _keep_old_periods(target, before, cutoff, _last_gap(entries, jobs_per_day))
        changes = [
            CounterChange(
                key.removeprefix(keys.BUDGET_PREFIX),
                *(from_micro(v) for v in before.get(key, [0, 0])),
                *(from_micro(v) for v in target.get(key, [0, 0])),
            )
            for key in sorted(set(before) | set(target))
            if before.get(key, [0, 0]) != target.get(key, [0, 0])
        ]
        result.append(
            CounterRebuild(
                changes,
                len(set(before) | set(target)) - len(changes),
                len(entries),
                len(records),
                len(rekeyed),
                from_settlement,
                kept,
                cutoff,
            )
        )
        if dry_run:
            return
        pipe.multi()
        for change in changes:
            key = budget_counter_key(change.budget)
            pipe.delete(key)
            reserved, spent = target.get(key, [0, 0])
            if reserved or spent:
                pipe.hset(key, mapping={"reserved": reserved, "spent": spent})
                ttl = counter_ttl(key)
                if ttl:
                    pipe.expire(key, ttl)
        for record in rekeyed:
            pipe.set(job_key(record.id), record.to_store_json())

    client.transaction(write, keys.LEDGER_INDEX, keys.LEDGER_DAYS, *active_index_keys())
    return result[0]
