"""The cost ledger: one entry per job that cost money, counted in the same transaction
that moves the job to its final status (so never twice, whatever the redelivery), and
the reports built from it: what we spent by day, month, provider, model, tag or status.

Reports read the per-day aggregates (videoqueue.ledger_days), which the final move adds
to and which stay. A job's own entry is not stored beside its record (issue 18: no fact
stored twice): while the record lives (JOB_RETENTION_S after its end) the entry is derived
from it (`LedgerEntry.of_record`). A per-job row `ledger:entry:<id>` (listed in
`ledger:index`) exists only where the record cannot give it: written by a version before
this one, or by `videoqueue costs rebuild` (an entry the manifest states otherwise than
the record, a job whose record is gone, a pruned job's marker `REMOVED`); a row wins over
the record and follows the same retention. Each entry is also in the job's manifest in
storage, so `videoqueue costs rebuild` can bring the ledger back after Redis loses it.
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
from videoqueue.job import JobRecord, JobStatus, Usd
from videoqueue.keys import job_key, ledger_entry_key

REMOVED = ""
"""The value of a per-job row that says the job counts in no ledger (a `costs rebuild
--prune` removed it while its record lives): the record's entry is not derived."""

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

    @classmethod
    def of_record(cls, record: JobRecord) -> LedgerEntry | None:
        """The entry the ledger holds for a job while its record lives, derived from it:
        the one its first end counted (`for_job`, settled at `settled_at`), in the status it
        ended in; `failed` while `videoqueue store retry` has reopened it (only a failed job
        is). None for a job not settled (running, or ended before records kept
        `settled_at`: those have a row) or that the provider charged nothing."""
        if record.settled_at is None:
            return None
        status = record.status if record.status.is_final else JobStatus.FAILED
        return cls.for_job(record.model_copy(update={"status": status, "finished_at": record.settled_at}))


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
    """Queue the writes of an entry's row on a MULTI pipeline (idempotent: NX, same score):
    what versions before issue 18's item 2 wrote at the final move; a row of theirs still
    reads and counts once (`ledger_days.ensure`, the sweep's walk)."""
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
        """Entries settled from `since` through `until` (UTC days, both inclusive) that are
        still stored: derived from the job records (until they expire: JOB_RETENTION_S) or
        read from per-job rows (`read_ledger`); by settlement time, then job id."""
        found = read_ledger(self.redis, since, until).values()
        return sorted(found, key=lambda e: (e.settled_at, e.job_id))

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
        ensure_days(self.redis, retention.retention_s())
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

        The ledger's entries are those `read_ledger` gives (records, rows). The day
        aggregates (videoqueue.ledger_days) change with every entry added, changed or
        pruned, each counted once:

        - a job whose record lives but is not settled yet (its manifest is written before
          its final move) is `pending`: its final move counts it, not the merge;
        - an entry whose job has neither record nor row, settled longer than `retention_s`
          ago (default JOB_RETENTION_S), whose day has aggregates, is counted there
          already (its record expired): `unchanged` (`ledger_days.counted_without_row`);
        - an entry added or changed gets a row (the record, if it lives, would say
          otherwise); it expires when the job's would have, and never before the job's
          record (else the record's entry would show again); one past that is not written,
          its amounts go to the aggregates only;
        - a pruned entry whose record lives is marked `REMOVED` in its row.

        One transaction: WATCHing the ledger index and the days, and the records of the
        jobs it writes for (a move of one of them meanwhile makes it run again)."""
        by_id = {entry.job_id: entry for entry in found}
        keep_s = retention_s if retention_s is not None else retention.retention_s()
        ensure_days(self.redis, keep_s)

        result: list[LedgerDiff] = []

        def write(pipe: Any) -> None:
            result.clear()
            now = time_now()
            current, seen = _read_ledger(pipe, None, None)
            fresh = [i for i in by_id if i not in current]
            for job_id, state in zip(fresh, _job_states(pipe, fresh), strict=True):
                seen[job_id] = state
            pending = [by_id[i] for i in fresh if _unsettled(seen[i])]
            gone = [by_id[i] for i in fresh if seen[i][1] is None]
            # Records expired with their jobs still count in the day aggregates: not added again.
            counted = ledger_days.counted_without_row(pipe, gone, keep_s, now)
            waiting = {e.job_id for e in pending}
            missing = [e for i, e in current.items() if i not in by_id]
            after = {**current, **{i: e for i, e in by_id.items() if i not in waiting}}
            if prune:
                for entry in missing:
                    del after[entry.job_id]
            diff = LedgerDiff(
                added=[by_id[i] for i in fresh if i not in counted and i not in waiting],
                changed=[(current[i], e) for i, e in by_id.items() if i in current and current[i] != e],
                unchanged=sum(1 for i, e in by_id.items() if current.get(i) == e or i in counted),
                missing=missing,
                pending=pending,
                pruned=prune and not dry_run,
                before_jobs=len(current),
                before_usd=sum((e.actual_usd for e in current.values()), Decimal(0)),
                after_jobs=len(after),
                after_usd=sum((e.actual_usd for e in after.values()), Decimal(0)),
            )
            result.append(diff)
            if dry_run:
                return
            touched = [e.job_id for e in diff.added] + [new.job_id for _old, new in diff.changed]
            touched += [e.job_id for e in diff.missing] if diff.pruned else []
            if touched:
                # Read before the WATCH: read again after it, so a move in between is seen too.
                pipe.watch(*(job_key(i) for i in touched))
                if _job_states(pipe, touched) != [seen[i] for i in touched]:
                    raise redis.WatchError("a job of the merge moved meanwhile")
            lives = {i for i in touched if seen[i][1] is not None}
            pipe.multi()
            for entry in diff.added:
                if entry.job_id in lives or ledger_days.row_alive(entry, keep_s, now):
                    _write_row(
                        pipe, entry, entry.to_store_json(), retention_s=keep_s, now=now, lives=entry.job_id in lives
                    )
                ledger_days.add(pipe, entry)
                stats.add_cost(
                    pipe, entry.provider, entry.model, to_micro(entry.estimate_usd), to_micro(entry.actual_usd)
                )
            for old, new in diff.changed:
                _unindex(pipe, old)
                _write_row(pipe, new, new.to_store_json(), retention_s=keep_s, now=now, lives=new.job_id in lives)
                ledger_days.add(pipe, new)
                stats.add_cost(pipe, new.provider, new.model, to_micro(new.estimate_usd), to_micro(new.actual_usd))
            if diff.pruned:
                for entry in diff.missing:
                    _unindex(pipe, entry)
                    if entry.job_id in lives:
                        _write_row(pipe, entry, REMOVED, retention_s=keep_s, now=now, lives=True)

        self.redis.transaction(write, keys.LEDGER_INDEX, keys.LEDGER_DAYS)
        return result[0]


class LedgerDiff(BaseModel):
    """How the entries found in storage differ from the ledger."""

    added: list[LedgerEntry]  # in storage only
    changed: list[tuple[LedgerEntry, LedgerEntry]]  # (ledger's, storage's)
    unchanged: int
    missing: list[LedgerEntry]  # in the ledger only: their manifests were not seen
    pending: list[LedgerEntry] = []  # of jobs not ended yet: their final move counts them
    pruned: bool  # whether the missing entries were removed

    # The ledger before, and after (as written, or as it would be without dry run).
    before_jobs: int
    before_usd: Decimal
    after_jobs: int
    after_usd: Decimal


def read_entries(client: Any, ids: list[str]) -> list[LedgerEntry]:
    """The per-job rows of `ids` still stored (a client, or a pipeline before MULTI), in
    batches; `REMOVED` markers are skipped. Rows only: see `read_ledger` for the ledger."""
    entries: list[LedgerEntry] = []
    for start in range(0, len(ids), 500):
        raws: list[str | None] = client.mget([ledger_entry_key(i) for i in ids[start : start + 500]])
        entries.extend(LedgerEntry.model_validate_json(r) for r in raws if r)
    return entries


def read_ledger(client: Any, since: date | None = None, until: date | None = None) -> dict[str, LedgerEntry]:
    """Job id -> the ledger entry of every job settled from `since` through `until` (UTC
    days, both inclusive; None: unbounded) still stored, read with `client` (a client, or
    a pipeline before MULTI): each job's row if it has one (`REMOVED`: none), else the one
    its record gives (`LedgerEntry.of_record`). Reads the ledger index and every job index
    (records of jobs created up to `until`), the rows and the records, in batches."""
    return _read_ledger(client, since, until)[0]


def ensure_days(client: redis.Redis, retention_s: int) -> bool:
    """`ledger_days.ensure` with this ledger's readers: the rows, and (retention 0: the
    aggregates recounted) every entry (`read_ledger`). True when it wrote."""
    return ledger_days.ensure(client, read_entries, retention_s, lambda pipe: read_ledger(pipe).values())


def time_now() -> float:
    """Epoch seconds now (a function, so tests can move the clock)."""
    return datetime.now(UTC).timestamp()


JobState = tuple[str | None, str | None, str]
"""A job as the ledger reads it: (its row, its record), raw, None where there is none, and
its id (a stored record leaves it to its key)."""


def _job_states(client: Any, ids: list[str]) -> list[JobState]:
    """The row and record of each of `ids`, in order, in batches."""
    states: list[JobState] = []
    for start in range(0, len(ids), 250):
        batch = ids[start : start + 250]
        raws: list[str | None] = client.mget([k for i in batch for k in (ledger_entry_key(i), job_key(i))])
        states.extend(zip(raws[0::2], raws[1::2], batch, strict=True))
    return states


def _entry_of(state: JobState) -> LedgerEntry | None:
    row, record, job_id = state
    if row is not None:
        return LedgerEntry.model_validate_json(row) if row != REMOVED else None
    return LedgerEntry.of_record(JobRecord.from_store_json(record, job_id)) if record else None


def _unsettled(state: JobState) -> bool:
    """Whether the job has a stored record not settled yet (its final move will count it)."""
    _, record, job_id = state
    return record is not None and JobRecord.from_store_json(record, job_id).settled_at is None


def _read_ledger(
    client: Any, since: date | None, until: date | None
) -> tuple[dict[str, LedgerEntry], dict[str, JobState]]:
    """`read_ledger`, and the state read of every job looked at."""
    low = datetime.combine(since, time.min, UTC).timestamp() if since else float("-inf")
    high = datetime.combine(until + timedelta(days=1), time.min, UTC).timestamp() if until else float("inf")
    # Settled after it was created: a job settled by `high` was created before it.
    bound = f"({high}" if until else "+inf"
    ids: dict[str, None] = dict.fromkeys(client.zrangebyscore(keys.LEDGER_INDEX, f"{low}" if since else "-inf", bound))
    for status in JobStatus:
        ids.update(dict.fromkeys(client.zrangebyscore(keys.status_index(status.value), "-inf", bound)))
    order = list(ids)
    states = dict(zip(order, _job_states(client, order), strict=True))
    entries: dict[str, LedgerEntry] = {}
    for job_id, state in states.items():
        entry = _entry_of(state)
        if entry is not None and low <= entry.settled_at.timestamp() < high:
            entries[job_id] = entry
    return entries, states


def _write_row(pipe: Any, entry: LedgerEntry, value: str, *, retention_s: int, now: float, lives: bool) -> None:
    """Queue a per-job row written by a rebuild (`value`: the entry, or `REMOVED`), indexed
    by its settlement: it expires as the job's would have (`ledger_days.expire_row`), and
    not before the job's record if that lives (which expires at most `retention_s` from
    now: its last move's TTL, or the sweep's from its end); nothing expires with retention 0."""
    pipe.set(ledger_entry_key(entry.job_id), value)
    pipe.zadd(keys.LEDGER_INDEX, {entry.job_id: entry.settled_at.timestamp()})
    if lives and retention_s > 0:
        until = max(entry.settled_at.timestamp(), now) + retention_s
        pipe.expireat(ledger_entry_key(entry.job_id), int(until) + 1)
    else:
        ledger_days.expire_row(pipe, entry, retention_s)


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
