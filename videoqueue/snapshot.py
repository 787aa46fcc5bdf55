"""The job store's decisions without I/O: a stand-in for a Redis client that answers reads
from values fetched beforehand, so that a driver that cannot read synchronously (the
asyncio producer, producer/aiostore.py) runs the very code the sync JobStore runs.

The decisions (the body of `JobStore.create_many`'s transaction, `jobstore.create`; a
move's final hooks, through `movescript.Reads`) are written against a redis-py client or
a WATCHing pipeline: they read with plain calls, then issue MULTI and queue writes. The
sync JobStore gives them the real thing. An async driver gives them a `Snapshot`: a read
it holds a value for is answered from it; one it does not is recorded in `missing` and
answered as if the key did not exist, so the decision runs on. The driver then fetches
what was missing, in one round trip, and runs the decision again on a new snapshot, until
a run misses nothing (`settle`): that run saw what the live client would have shown it, so
its result and writes are the same. What a run on missing values decided, or raised, is
thrown away. Rounds: one more than the depth of reads that depend on reads (a batch whose
client job ids name stored jobs: the ids, then those jobs, then a run that misses nothing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from videoqueue.movescript import Writes

Read = tuple[str, ...]
"""A read as the command that makes it: ("GET", key), ("HMGET", key, field, ...)."""

T = TypeVar("T")

MAX_ROUNDS = 10
"""A decision that still misses reads after this many rounds reads without end (a bug)."""


class Snapshot:
    """A read-only client over `values` (each read's reply, by `Read`) that records the
    writes queued on it (`writes`, a `movescript.Writes`: set, zadd, hincrby, ...). The
    reads a decision of the job store makes: get, exists, hgetall, hmget."""

    def __init__(self, values: Mapping[Read, Any]) -> None:
        self.values = values
        self.missing: list[Read] = []
        """Reads asked for that `values` holds no reply to, in the order asked, once each."""
        self.writes = Writes()
        self.in_multi = False

    def _read(self, read: Read, absent: Any) -> Any:
        if read in self.values:
            return self.values[read]
        if read not in self.missing:
            self.missing.append(read)
        return absent

    def get(self, name: str) -> Any:
        """GET name."""
        return self._read(("GET", name), None)

    def exists(self, *names: str) -> int:
        """EXISTS name... (one read per key, so that each is fetched once)."""
        return sum(int(self._read(("EXISTS", name), 0)) for name in names)

    def hgetall(self, name: str) -> Any:
        """HGETALL name."""
        return self._read(("HGETALL", name), {})

    def hmget(self, name: str, keys: str | Sequence[str], *args: str) -> Any:
        """HMGET name field... (redis-py's signature)."""
        fields = [keys] if isinstance(keys, str) else list(keys)
        fields += args
        return self._read(("HMGET", name, *fields), [None] * len(fields))

    def watch(self, *names: str) -> None:
        """Nothing: the driver WATCHes before it fetches."""

    def multi(self) -> None:
        """The end of the reads: what follows is queued on `writes`."""
        self.in_multi = True

    def __getattr__(self, name: str) -> Any:
        # The write commands: those of movescript.Writes, which the driver replays in MULTI.
        return getattr(self.writes, name)


async def settle(
    decide: Callable[[Snapshot], T],
    fetch: Callable[[Sequence[Read]], Awaitable[Sequence[Any]]],
) -> tuple[T, Snapshot]:
    """Run `decide` on snapshots until one run misses no read, fetching (`fetch`: the
    replies to the reads given, in order) what each run missed; return that run's result
    and its snapshot (the writes it queued). Raises what that run raised; RuntimeError
    after MAX_ROUNDS."""
    values: dict[Read, Any] = {}
    for _ in range(MAX_ROUNDS):
        snapshot = Snapshot(values)
        try:
            result = decide(snapshot)
        except Exception:
            if not snapshot.missing:
                raise
            # Decided on reads not yet made: what it raised may be wrong. Read, run again.
        else:
            if not snapshot.missing:
                return result, snapshot
        replies = await fetch(snapshot.missing)
        values.update(zip(snapshot.missing, replies, strict=True))
    raise RuntimeError(f"a decision of the job store still reads more after {MAX_ROUNDS} rounds")


def commands(snapshot: Snapshot) -> list[tuple[Any, ...]]:
    """The writes queued on `snapshot`, each as a command with its arguments, in order
    (what a driver sends in MULTI)."""
    out: list[tuple[Any, ...]] = []
    args, i = snapshot.writes.args, 0
    while i < len(args):
        count = int(args[i + 1])
        out.append((args[i], *args[i + 2 : i + 2 + count]))
        i += 2 + count
    return out
