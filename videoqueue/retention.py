"""Retention: a final job record, its ledger row and its legacy input keys expire
JOB_RETENTION_S after the job's final move (0: kept for ever), and the recovery sweep trims
the index entries of the records gone. A batch's record (videoqueue.batches) and its
deliveries expire JOB_RETENTION_S after its last job ended, set by that job's move
(`batches.end_writes`); `VideoQueue.batches` drops the batch index's entries of those gone.

**Expiry.** The final move sets the TTLs in its own transaction (`expire_final`, run by the
final hook `final_hooks.retention`); a job that ends a second time (`videoqueue store
retry`) gets them renewed. A write of a final record that is not a move (a retry's claim on
the job it retries) stores it without a TTL; the sweep's walk below gives such a record, and
every record stored before retention existed, its TTL: its end plus JOB_RETENTION_S.

**Trimming** (`trim`, from worker/sweep.py). The indexes keep an id after its record expired
(Redis does not tell which). Rather than keep a per-job key or index member to find them
(memory per finished job is what retention saves), the walk reads the indexes the job
already has: each final status index, scored by creation time, and the ledger index,
scored by settlement time. A record can only have expired when its score is older than now
- JOB_RETENTION_S (it ended after it was created), so the walk looks only at members scored
up to that cut-off, from a cursor (`keys.RETENTION_CURSOR`) kept per index, a bounded batch
per sweep tick (RETENTION_SWEEP_BATCH over all indexes), whatever the backlog; it checks
each with one TTL in a pipeline and removes the gone ones from that index and from
INPUTS_RELEASE_INDEX (the ledger walk from LEDGER_INDEX). Once the walk reaches
the cut-off it starts again from the oldest, so the few members left (records of long
jobs, expiring soon) are looked at again next round. In steady state the range below the
cut-off holds only those, so a tick costs a few commands.

What stays after a record expires: the ledger's day aggregates (videoqueue.ledger_days),
the job's manifest in storage (videoqueue.archive), and the counters of videoqueue.stats.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from videoqueue import keys, ledger_days
from videoqueue.job import JobRecord, JobStatus
from videoqueue.keys import client_key, input_key, job_key, ledger_entry_key, status_index, task_claim_key
from videoqueue.resolved import IMAGE_ROLES


def retention_s() -> int:
    """JOB_RETENTION_S of this process's settings (0: keep final records for ever)."""
    from videoqueue.settings import get_settings

    return get_settings().job_retention_s


def expire_final(pipe: Any, job_id: str, seconds: int) -> None:
    """Queue, on the final move's MULTI pipeline, the expiry of a final record, its ledger
    row and its legacy input keys `seconds` from now (an input key whose own TTL is
    shorter keeps it: LT)."""
    pipe.expire(job_key(job_id), seconds)
    pipe.expire(ledger_entry_key(job_id), seconds)
    for role in IMAGE_ROLES:
        pipe.expire(input_key(job_id, role), seconds, lt=True)


# What a claim outlives the job's lookup window by, besides FOLLOW_PAST_DEADLINE_S: a submit
# lease (the create sent just before the deadline), ModelArk's lookup slack for clock skew
# (2 min) and the step's own latency, rounded up.
CLAIM_MARGIN_S = 600


def claim_after_end_s(record: JobRecord) -> int:
    """Seconds a final job's task claim is kept from its final move: the longest lookup
    window of another job that may list the task, which is that job's deadline span
    (JOB_DEADLINE_S: this job's own span, or this process's setting if longer) plus
    FOLLOW_PAST_DEADLINE_S (a job whose create answer was lost waits that long past its
    deadline for a worker of its endpoint, which then makes a last lookup) plus
    CLAIM_MARGIN_S."""
    from videoqueue.settings import get_settings

    settings = get_settings()
    span = max((record.deadline_at - record.created_at).total_seconds(), settings.job_deadline_s)
    return int(span + settings.follow_past_deadline_s) + CLAIM_MARGIN_S


def expire_links(pipe: Any, record: JobRecord, seconds: int, first_end: bool) -> None:
    """Queue, on the final move's pipeline, the expiry of the keys that name the job: so
    that nothing of a job outlives its record by long.

    - Its provider task's claim (7 days from the create): `claim_after_end_s` from now,
      whatever the retention, and only ever shortened (LT). Only another job's lookup (an
      interrupted create, worker/steps/submit.py `_find_own_task`) reads a claim once the
      job is final: it lists the tasks made since its own create intent (less a slack),
      until its deadline, or until a worker of its endpoint makes its last lookup, at most
      FOLLOW_PAST_DEADLINE_S later. A task made before now is seen at most that long from
      now, and while seen it must stay claimed, or that job would adopt it. (A lookup run
      later still, by a fleet down for longer, is not covered, as a claim older than its 7
      days was not.)
    - Its client job id (90 days from the submit): `seconds` from now (LT), at the first end
      only. Until then the key names this job (a retry, which re-points it, is made only of
      an ended job); at a second end (`store retry`) it may name the retry, kept as it is.
      Once the record is gone the id is free anyway (`_client_id_owners`)."""
    if record.provider_task_id:
        claim = task_claim_key(record.provider, record.provider_task_id)
        pipe.expire(claim, claim_after_end_s(record), lt=True)
    if first_end and record.request.client_job_id:
        pipe.expire(client_key(record.request.client_job_id), seconds, lt=True)


def drop_legacy_all_index(client: redis.Redis) -> int:
    """UNLINK `jobs:all` (keys.LEGACY_ALL_INDEX), the index of all jobs that versions before
    issue 18 wrote: nothing reads it now, and a deployment upgraded keeps a stale one for
    ever otherwise. One command per sweep tick (also while old producers of a rolling
    upgrade still add to it); freed in the background. Returns 1 when there was one."""
    return int(client.unlink(keys.LEGACY_ALL_INDEX))  # type: ignore[arg-type]


def final_indexes() -> list[str]:
    """The index keys a final job stays in by creation time: one per final status."""
    return [status_index(status) for status in JobStatus if status.is_final]


@dataclass
class TrimReport:
    """What one walk did: ids removed from the indexes, records given a TTL, entries looked at."""

    trimmed: int = 0
    expiring: int = 0
    looked_at: int = 0
    by_index: dict[str, int] = field(default_factory=dict)


def trim(client: redis.Redis, seconds: int, now: float, batch: int) -> TrimReport:
    """Walk the final status indexes and the ledger index below now - `seconds` (epoch s),
    at most `batch` members in all, from each index's cursor; remove the ids whose record (or
    ledger row) is gone, give a TTL to those stored without one. Nothing when `seconds` is 0.

    The batch is shared among the indexes, and what an index does not use (it reached its
    cut-off) goes to those that still have members to walk, within the same tick: most jobs
    end in one status, and that index alone must be trimmed as fast as jobs end (an even
    share of 5,000 over five indexes a 60 s tick is 17 a second, less than a busy host's
    jobs end; bench/day.py). An index that reached its cut-off is not walked again in the
    tick: what is left below it are records still alive."""
    report = TrimReport()
    if seconds <= 0:
        return report
    cutoff = now - seconds
    pending = [*final_indexes(), keys.LEDGER_INDEX]
    left = batch
    while pending and left > 0:
        share = max(1, left // len(pending))
        more: list[str] = []
        for index in pending:
            if left <= 0:
                break
            walk = _walk(client, index, cutoff=cutoff, limit=min(share, left), seconds=seconds, report=report)
            left -= walk.looked_at
            report.by_index[index] = report.by_index.get(index, 0) + walk.gone
            report.trimmed += walk.gone
            if not walk.reached_cutoff:
                more.append(index)
        pending = more
    return report


@dataclass(frozen=True)
class _Walk:
    looked_at: int
    gone: int
    reached_cutoff: bool


@dataclass(frozen=True)
class _Cursor:
    """Where a walk of an index stopped: its last member and that member's score, and how
    many members with that score, up to and including it, it left in the index (those a
    walk from the score looks at again). Members of equal score are in member order, so
    the walk goes on after them and misses none: many jobs can settle in one millisecond."""

    score: float
    member: str
    skip: int

    def encode(self) -> str:
        return f"{self.score!r} {self.skip} {self.member}"

    @classmethod
    def decode(cls, raw: str | None) -> _Cursor | None:
        """The cursor `encode` wrote; a bare score (written before: the walk went on above
        it) reads as one after every member of that score; None for none."""
        if not raw:
            return None
        score, _, rest = raw.partition(" ")
        if not rest:
            return cls(float(score), "\U0010ffff", 0)
        skip, _, member = rest.partition(" ")
        return cls(float(score), member, int(skip))


def _walk(client: redis.Redis, index: str, *, cutoff: float, limit: int, seconds: int, report: TrimReport) -> _Walk:
    after = _Cursor.decode(client.hget(keys.RETENTION_CURSOR, index))  # type: ignore[arg-type]
    skip = after.skip if after is not None else 0
    fetched: list[tuple[str, float]] = client.zrangebyscore(  # type: ignore[assignment]
        index, after.score if after is not None else "-inf", cutoff, start=0, num=limit + skip, withscores=True
    )
    newer = [(m, s) for m, s in fetched if after is None or s > after.score or m > after.member]
    members = newer[:limit]
    report.looked_at += len(members)
    reached = len(fetched) < limit + skip and len(newer) <= limit
    if not members:
        _move_cursor(client, index, None if reached else after, fetched, set())
        return _Walk(0, 0, reached)
    ledger = index == keys.LEDGER_INDEX
    key_of = ledger_entry_key if ledger else job_key
    check = client.pipeline(transaction=False)
    for member, _score in members:
        check.ttl(key_of(member))
    ttls = check.execute()
    gone = [m for (m, _s), ttl in zip(members, ttls, strict=True) if ttl == -2]
    forever = [(m, s) for (m, s), ttl in zip(members, ttls, strict=True) if ttl == -1]
    write = client.pipeline(transaction=False)
    if gone:
        write.zrem(index, *gone)
        if not ledger:
            write.zrem(keys.INPUTS_RELEASE_INDEX, *gone)
    write.execute()
    if reached:
        _move_cursor(client, index, None, fetched, set())
    else:
        last, score = members[-1]
        _move_cursor(client, index, _Cursor(score, last, 0), fetched, set(gone))
    if ledger:
        report.expiring += _count_rows_stored_forever(client, [m for m, _s in forever], seconds)
    else:
        report.expiring += _expire_stored_forever(client, [m for m, _s in forever], seconds)
    return _Walk(len(members), len(gone), reached)


def _move_cursor(
    client: redis.Redis, index: str, to: _Cursor | None, fetched: list[tuple[str, float]], removed: set[str]
) -> None:
    """Keep where the walk of `index` stopped (`to`, its skip counted here from `fetched`
    less `removed`), or start the next walk from the oldest (None: the cut-off was reached)."""
    if to is None:
        client.hdel(keys.RETENTION_CURSOR, index)
        return
    kept = sum(1 for m, s in fetched if s == to.score and m <= to.member and m not in removed)
    client.hset(keys.RETENTION_CURSOR, index, _Cursor(to.score, to.member, kept).encode())


def _each_stored_forever(
    client: redis.Redis, key: Callable[[str], str], job_ids: list[str], give_ttl: Callable[[Any, str, str], bool]
) -> int:
    """For each job whose `key(job_id)` still exists without a TTL, call `give_ttl(pipe,
    job_id, value)` in a compare-and-set on that key (WATCHed; `give_ttl` queues its writes
    after `pipe.multi()`, or returns False to leave it). Returns how many were given one."""
    count = 0
    for job_id in job_ids:

        def one(pipe: Any, job_id: str = job_id) -> bool:
            raw = pipe.get(key(job_id))
            if not raw or pipe.ttl(key(job_id)) != -1:
                return False
            return give_ttl(pipe, job_id, raw)

        count += bool(client.transaction(one, key(job_id), value_from_callable=True))  # type: ignore[arg-type]
    return count


def _count_rows_stored_forever(client: redis.Redis, job_ids: list[str], seconds: int) -> int:
    """Ledger rows without a TTL were written by code before the day aggregates (an old
    worker of a rolling upgrade, after the backfill): add each to the aggregates and give it
    its TTL in one compare-and-set, so it is counted once (ledger_days.ensure). Returns how many."""
    from videoqueue.ledger import LedgerEntry

    def count_row(pipe: Any, _job_id: str, raw: str) -> bool:
        entry = LedgerEntry.model_validate_json(raw)
        pipe.multi()
        ledger_days.add(pipe, entry)
        ledger_days.expire_row(pipe, entry, seconds)
        return True

    return _each_stored_forever(client, ledger_entry_key, job_ids, count_row)


def _expire_stored_forever(client: redis.Redis, job_ids: list[str], seconds: int) -> int:
    """Give the final records stored without a TTL (written before retention, or by a write
    that was not a move) their end plus `seconds`, each in a compare-and-set (a record
    reopened meanwhile by `store retry` is active again and keeps no TTL). Returns how many."""

    def expire(pipe: Any, job_id: str, raw: str) -> bool:
        record = JobRecord.from_store_json(raw, job_id)
        if not record.status.is_final:
            return False
        until = int((record.finished_at or record.updated_at).timestamp() + seconds) + 1
        pipe.multi()
        pipe.expireat(job_key(job_id), until)
        for role in IMAGE_ROLES:
            pipe.expireat(input_key(job_id, role), until, lt=True)
        return True

    return _each_stored_forever(client, job_key, job_ids, expire)
