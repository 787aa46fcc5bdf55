"""Recount the budget counters from the truth: spent from the cost ledger, reserved from
the jobs not yet ended in the job store (`videoqueue budget rebuild`).

For counters kept before every job counted (only budgets with a cap were counted), or
after Redis lost them, or after `videoqueue costs rebuild` changed the ledger. Active jobs
are also given every counter key, so that their end settles what the rebuild reserved.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis

from videoqueue import keys
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
from videoqueue.keys import budget_counter_key, job_key, ledger_entry_key
from videoqueue.ledger import LedgerEntry


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


def _read_all(pipe: Any, names: list[str]) -> list[str | None]:
    values: list[str | None] = []
    for start in range(0, len(names), 500):
        values.extend(pipe.mget(names[start : start + 500]))
    return values


def rebuild_counters(client: redis.Redis, *, dry_run: bool = False) -> CounterRebuild:
    """Recount every budget counter in one transaction (retried if a job is created or ends
    meanwhile). Spent: each ledger entry's actual cost, on the UTC day and month its job was
    submitted and on each of its tags. Reserved: each active job's estimate likewise."""
    result: list[CounterRebuild] = []
    today = utcnow().date()

    def write(pipe: Any) -> None:
        result.clear()
        active_ids = sorted({i for index in active_index_keys() for i in pipe.zrange(index, 0, -1)})
        if active_ids:
            pipe.watch(*[job_key(i) for i in active_ids])  # rewritten below with their keys
        records = [JobRecord.from_store_json(r) for r in _read_all(pipe, [job_key(i) for i in active_ids]) if r]
        entry_ids: list[str] = pipe.zrange(keys.LEDGER_INDEX, 0, -1)
        entries = [
            LedgerEntry.model_validate_json(r) for r in _read_all(pipe, [ledger_entry_key(i) for i in entry_ids]) if r
        ]

        # Entries written before they recorded their submission: the job's record, if kept.
        undated = [e.job_id for e in entries if e.submitted_at is None]
        created: dict[str, datetime] = {}
        for job_id, raw in zip(undated, _read_all(pipe, [job_key(i) for i in undated]), strict=True):
            if raw:
                created[job_id] = JobRecord.from_store_json(raw).created_at
        target: dict[str, list[int]] = {}
        from_settlement = 0
        for entry in entries:
            submitted = entry.submitted_at or created.get(entry.job_id)
            if submitted is None:
                from_settlement += 1
            for key in _period_keys((submitted or entry.settled_at).date(), entry.tags):
                target.setdefault(key, [0, 0])[1] += to_micro(entry.actual_usd)
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

    client.transaction(write, keys.LEDGER_INDEX, *active_index_keys())
    return result[0]
