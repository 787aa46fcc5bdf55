"""What a job's final move does besides storing its record: the one place for it.

When a job reaches a final status (`videoqueue.job.FINAL_STATUSES`) from an active one,
`JobStore.update` runs every hook of `FINAL_HOOKS`, in order, and their writes go into the
script that stores the move (videoqueue.movescript): the side effects happen with the move,
exactly once, whatever the redelivery, or not at all. Events and webhooks go here too, as
further hooks.

A hook is called as `hook(pipe, before, after)`: `pipe` reads (`get`), at once, before the
move (`movescript.Reads`: the script stores the move only if every key read still holds
what was read, else the move runs again), `before` the record as it was and `after`
as it will be stored. It returns the writes to queue with the move (a function of a
pipeline-like recorder, `movescript.Writes`: set, delete, expire, pexpire, hset, hsetnx, hincrby,
hincrbyfloat, zadd, zrem, sadd, srem), or None for none. A move that loses its
compare-and-set runs the hooks again on the current record. Most ends settle the job's cost: `before` has
no `settled_at`. A job the store step gave up on can be stored again (`videoqueue store
retry`) and end a second time; its cost was settled at the first end, never again, so a
hook that counts money checks `settled_at`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from videoqueue import inputs, keys, ledger_days, movies, retention, room, stats, webhooks
from videoqueue.budget import settle
from videoqueue.job import JobRecord
from videoqueue.keys import ledger_entry_key
from videoqueue.ledger import REMOVED, LedgerEntry

Writes = Callable[[Any], None]
"""Commands a hook queues on the recorder of the final move (`movescript.Writes`)."""

FinalHook = Callable[[Any, JobRecord, JobRecord], Writes | None]
"""A side effect of a final move: (pipe, before, after) -> the writes to queue, or None."""


def first_end(before: JobRecord) -> bool:
    """True when this end settles the job's cost (it was not settled at an earlier end)."""
    return before.settled_at is None


def ledger_entry(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """The job's ledger entry (videoqueue.ledger) is its record's (`LedgerEntry.of_record`):
    a first end writes no row. A second end restates the status it ends in in a per-job
    row that a `costs rebuild` or an earlier version wrote, if the job has one."""
    if first_end(before):
        return None
    earlier: str | None = pipe.get(ledger_entry_key(after.id))
    if earlier == REMOVED:
        # Pruned by a rebuild that saw no manifest (a job that failed in storage has none);
        # ended again, it is counted again (`ledger_aggregates`), from its record.
        return lambda multi: multi.delete(ledger_entry_key(after.id))
    if not earlier:
        return None
    restated = LedgerEntry.model_validate_json(earlier).model_copy(update={"status": after.status.value})
    return lambda multi: multi.set(ledger_entry_key(after.id), restated.to_store_json())


def budget_settle(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """Release the job's budget reservation and add what it was charged (videoqueue.budget)."""
    if not first_end(before):
        return None
    return lambda multi: settle(multi, after)


def room_leave(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """Take the job out of its model's waiting room (videoqueue.room), if it waits there.
    (Its slot, if it holds one, is freed by every move that leaves the provider, final or
    not: `JobStore.update`.)"""
    return lambda multi: room.leave(multi, after)


def counters(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """Add the job's money and its render and upload times to the fleet counters
    (videoqueue.stats; the counts of jobs by status move with every status change)."""
    if not first_end(before):
        return None
    return lambda multi: stats.on_end(multi, after)


def inputs_release(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """List the job's input images in object storage for deletion (videoqueue.inputs): at
    once after a success, a day later after another end (a retry may copy them)."""
    when = inputs.release_at(after)
    if when is None:
        return None
    return lambda multi: multi.zadd(keys.INPUTS_RELEASE_INDEX, {after.id: when})


def ledger_aggregates(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """Add the job's cost to the ledger's day aggregates (videoqueue.ledger_days); a second
    end moves them to the status it ends in now. A first end reads nothing: `costs rebuild`
    counts no job whose record lives unsettled (`Ledger.merge`), so no one counted this
    one before. A second end restates the entry counted: the job's row if it has one (a
    rebuild's or an earlier version's, read and checked by the move), else the one its
    record gave before the move (`LedgerEntry.of_record`: its first end, `failed`). A job a
    rebuild pruned (`REMOVED`) is counted again, as it ends now."""
    if first_end(before):
        entry = LedgerEntry.for_job(after)
        if entry is None:
            return None
        return lambda multi: ledger_days.add(multi, entry)
    earlier: str | None = pipe.get(ledger_entry_key(after.id))
    if earlier == REMOVED:
        # Its entry was pruned out of the totals (`ledger_entry` drops the marker): this end,
        # which the provider's charge is still behind, puts it back, once.
        again = LedgerEntry.of_record(after)
        return None if again is None else lambda multi: ledger_days.add(multi, again)
    old = LedgerEntry.model_validate_json(earlier) if earlier else LedgerEntry.of_record(before)
    if old is None:
        return None
    new = old.model_copy(update={"status": after.status.value})
    return lambda multi: ledger_days.restate(multi, old, new)


def notifications(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """The webhook of the job's end and its completion task, if its request asks for them,
    written to its delivery record (videoqueue.webhooks), kept as long as the record; the
    worker sends them after the move, the sweep if it does not."""
    deliveries = webhooks.owed(before, after)
    if not deliveries:
        return None
    return lambda multi: webhooks.queue_owed(multi, deliveries, final=True)


def movie_advance(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """A scene's end owes its movie an advance (videoqueue.movies): written to the movies'
    outbox with the move; the worker sends it after the move, the sweep if it does not."""
    if after.movie_id is None:
        return None
    movie_id = after.movie_id
    return lambda multi: movies.owe_advance(multi, movie_id)


def retention_expiry(pipe: Any, before: JobRecord, after: JobRecord) -> Writes | None:
    """Let the record, its ledger row if it has one and its legacy input keys expire
    JOB_RETENTION_S from now (videoqueue.retention); a second end renews it. The client job
    id key is shortened to it, the task claim to what another job's lookup may still need
    (`retention.expire_links`, `retention.claim_after_end_s`). Last: the
    writes before it (the record, a restated ledger row) clear a TTL."""
    seconds = retention.retention_s()
    if seconds <= 0:
        return None
    first = first_end(before)

    def expire(multi: Any) -> None:
        retention.expire_final(multi, after.id, seconds)
        retention.expire_links(multi, after, seconds, first)

    return expire


FINAL_HOOKS: tuple[FinalHook, ...] = (
    ledger_entry,
    ledger_aggregates,
    budget_settle,
    room_leave,
    counters,
    inputs_release,
    notifications,
    movie_advance,
    retention_expiry,
)
"""Every side effect of a final move, in the order they are queued."""
