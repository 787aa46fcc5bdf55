"""The ledger's aggregates: what jobs cost, per UTC day of settlement x provider x model x
status x tag, kept after the per-job rows expire (JOB_RETENTION_S), so `videoqueue costs`
over any period gives the same answer before and after.

One hash per day (`keys.ledger_day_key`), three parts:

- `t`: every job once (the totals, and every report without a tag filter);
- `g`: a job under each of its tags (`--by tag`, `--tag X`);
- `u`: the untagged jobs (the `(untagged)` row of `--by tag`).

Each with `jobs` and the estimate, actual and uncertain amounts in integer micro-dollars.
They are written in the transaction that settles (or changes) the job's entry: the final
move's hook (`add` / `restate`; the entry is the record's, no per-job row is written),
`Ledger.merge` (`costs rebuild`, with the per-job row it writes). A deployment upgraded
with rows but no aggregates gets them once from its rows (`ensure`: idempotent, marked by
`keys.LEDGER_DAYS_VERSION` in the same transaction).

Amounts are exact to the micro-dollar (a report of the rows summed exact Decimals). Under a
tag filter, `--by tag` shows that tag only (which other tags the same jobs carry is not
kept per day).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import redis

from videoqueue import keys
from videoqueue.budget import from_micro, to_micro
from videoqueue.keys import ledger_day_key, ledger_entry_key

VERSION = "1"
METRICS = ("jobs", "est", "act", "unc")
UNTAGGED = "(untagged)"
TOTAL = "total"
_ANY = "*"


def _amounts(entry: Any) -> dict[str, int]:
    return {
        "jobs": 1,
        "est": to_micro(entry.estimate_usd),
        "act": to_micro(entry.actual_usd),
        "unc": to_micro(entry.uncertain_usd),
    }


def fields(entry: Any) -> dict[str, int]:
    """The increments of one ledger entry (a `LedgerEntry`) in its day's hash, by field."""
    head = f"{entry.provider} {entry.model} {entry.status}"
    parts = [f"t {head} {_ANY}"]
    parts += [f"g {head} {tag}" for tag in entry.tags] if entry.tags else [f"u {head} {_ANY}"]
    amounts = _amounts(entry)
    return {f"{part} {metric}": value for part in parts for metric, value in amounts.items() if value}


def day_score(day: str) -> float:
    """The start of a UTC day `YYYY-MM-DD`, epoch seconds: its score in LEDGER_DAYS."""
    return datetime.combine(date.fromisoformat(day), time.min, UTC).timestamp()


def add(pipe: Any, entry: Any, sign: int = 1) -> None:
    """Queue on a MULTI pipeline the addition (sign 1) or removal (-1) of an entry's amounts."""
    key = ledger_day_key(entry.day)
    for field, value in fields(entry).items():
        pipe.hincrby(key, field, sign * value)
    pipe.zadd(keys.LEDGER_DAYS, {entry.day: day_score(entry.day)})


def restate(pipe: Any, old: Any, new: Any) -> None:
    """Queue the move of an entry's amounts from `old` to `new` (a second end's new status,
    a rebuild's changed entry); nothing when they count the same."""
    if fields(old) == fields(new) and old.day == new.day:
        return
    add(pipe, old, -1)
    add(pipe, new)


def ensure(client: redis.Redis, load: Any, retention_s: int, load_all: Any = None) -> bool:
    """Backfill the aggregates from the per-job rows once (a deployment upgraded with rows and
    no aggregates); True when it wrote. `load(pipe, ids)` reads the LedgerEntry of each id's
    row (`ledger.read_entries`), `load_all(pipe)` every entry of the ledger, rows and those
    the records give (`ledger.read_ledger`; None: the rows of the index). One transaction,
    WATCHing the ledger index and days, sets the version marker with what it writes, so it
    runs once.

    Which rows it counts: with a retention (`retention_s` > 0) a row counts in the
    aggregates exactly when it has a TTL: the final hook, `costs rebuild` and this backfill
    write the aggregate and the TTL together, code before aggregates wrote neither. So it
    adds the rows without a TTL and gives each its TTL (settlement + retention; a row past
    that goes now, its amounts stay), whatever final moves counted meanwhile; rows an old
    worker writes later (a rolling upgrade) are counted the same way by the sweep
    (videoqueue.retention); a job ended by this version has no row, its move counted it.
    With retention 0 nothing ever expires: the aggregates are recomputed from every entry
    (`load_all`)."""
    if client.get(keys.LEDGER_DAYS_VERSION) == VERSION:
        return False

    def write(pipe: Any) -> bool:
        if pipe.get(keys.LEDGER_DAYS_VERSION) == VERSION:
            return False
        ids: list[str] = pipe.zrange(keys.LEDGER_INDEX, 0, -1)
        days: list[str] = pipe.zrange(keys.LEDGER_DAYS, 0, -1)
        if retention_s > 0:
            ttls: list[int] = []
            for start in range(0, len(ids), 500):
                check = client.pipeline(transaction=False)
                for job_id in ids[start : start + 500]:
                    check.ttl(ledger_entry_key(job_id))
                ttls.extend(check.execute())
            ids = [i for i, ttl in zip(ids, ttls, strict=True) if ttl == -1]
        elif days:
            pipe.watch(*(ledger_day_key(d) for d in days))
        entries = list(load_all(pipe)) if retention_s <= 0 and load_all is not None else load(pipe, ids)
        pipe.multi()
        if retention_s <= 0:
            for day in days:
                pipe.delete(ledger_day_key(day))
        for entry in entries:
            add(pipe, entry)
            expire_row(pipe, entry, retention_s)
        pipe.set(keys.LEDGER_DAYS_VERSION, VERSION)
        return True

    watched = (keys.LEDGER_INDEX, keys.LEDGER_DAYS, keys.LEDGER_DAYS_VERSION)
    wrote: bool = client.transaction(write, *watched, value_from_callable=True)  # type: ignore[arg-type, assignment]
    return wrote


def counted_without_row(pipe: Any, entries: Iterable[Any], retention_s: int, now: float) -> set[str]:
    """Inside a WATCHed transaction, before MULTI: the job ids of `entries` (found in storage,
    with neither a per-job row nor a job record) that the aggregates already count. The rule:
    a record (and a row) expires JOB_RETENTION_S after the job's end, so an entry settled
    longer ago than that whose day has aggregates was counted when it ended (its record
    expired, its amounts stayed); a more recent one without either was never counted (Redis
    lost it) and is added. A day with no aggregates at all (Redis lost them too) is added
    whole."""
    if retention_s <= 0:
        return set()
    old = [e for e in entries if e.settled_at.timestamp() + retention_s <= now]
    if not old:
        return set()
    days = sorted({e.day for e in old})
    scores = [pipe.zscore(keys.LEDGER_DAYS, day) for day in days]
    known = {day for day, score in zip(days, scores, strict=True) if score is not None}
    return {e.job_id for e in old if e.day in known}


def row_alive(entry: Any, retention_s: int, now: float) -> bool:
    """Whether an entry's per-job row would still be stored now, had it been written at its
    settlement (retention 0: rows are kept for ever)."""
    return retention_s <= 0 or entry.settled_at.timestamp() + retention_s > now


def expire_row(pipe: Any, entry: Any, retention_s: int) -> None:
    """Queue the expiry of an entry's per-job row as if it had been written at its settlement
    (a rebuilt row follows the retention too); nothing for retention 0."""
    if retention_s > 0:
        pipe.expireat(ledger_entry_key(entry.job_id), int(entry.settled_at.timestamp() + retention_s) + 1)


def report_rows(
    client: redis.Redis,
    since: date | None,
    until: date | None,
    *,
    provider: str | None = None,
    model: str | None = None,
    tag: str | None = None,
    status: str | None = None,
) -> list[tuple[str, str, str, str, str, str, dict[str, int]]]:
    """The aggregate rows a report reads: (day, part, provider, model, status, tag, amounts),
    of the days from `since` through `until` (UTC, inclusive), filtered: without a tag filter
    the `t` part plus the `g`/`u` parts (grouping by tag), with one the `g` rows of that tag."""
    low = str(datetime.combine(since, time.min, UTC).timestamp()) if since else "-inf"
    high = str(datetime.combine(until, time.min, UTC).timestamp()) if until else "+inf"
    days: list[str] = client.zrangebyscore(keys.LEDGER_DAYS, low, high)  # type: ignore[assignment]
    pipe = client.pipeline(transaction=False)
    for day in days:
        pipe.hgetall(ledger_day_key(day))
    grouped: dict[tuple[str, str, str, str, str, str], dict[str, int]] = defaultdict(dict)
    for day, values in zip(days, pipe.execute(), strict=True):
        for field, value in values.items():
            part, prov, mod, stat, tg, metric = field.split(" ")
            if tag is not None and (part != "g" or tg != tag):
                continue
            if (provider and prov != provider) or (model and mod != model) or (status and stat != status):
                continue
            grouped[(day, part, prov, mod, stat, tg)][metric] = int(value)
    return [(*k, v) for k, v in grouped.items()]


def summarize_days(
    rows: list[tuple[str, str, str, str, str, str, dict[str, int]]], by: str, *, tag_filter: bool
) -> list[tuple[str, int, Decimal, Decimal]]:
    """(group, jobs, estimate_usd, actual_usd) per group of `by`, then the `total` row; each
    job once in the total (the `t` part, or the filtered tag's rows)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for day, part, prov, mod, stat, tg, amounts in rows:
        value = [amounts.get("jobs", 0), amounts.get("est", 0), amounts.get("act", 0)]
        once = tag_filter or part == "t"
        if by == "tag":
            group = None if part == "t" else (UNTAGGED if part == "u" else tg)
        elif once:
            group = {"day": day, "month": day[:7], "provider": prov, "model": mod, "status": stat}[by]
        else:
            group = None
        targets = ([group] if group is not None else []) + ([TOTAL] if once else [])
        for target in targets:
            counts[target] = [a + b for a, b in zip(counts[target], value, strict=True)]
    order = [*sorted(g for g, c in counts.items() if g != TOTAL and c[0]), TOTAL]
    return [(g, counts[g][0], from_micro(counts[g][1]), from_micro(counts[g][2])) for g in order]
