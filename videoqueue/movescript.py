"""A status move as one server-side script: the compare-and-set of a job record with every
write that goes with it (task claim, indexes, counters, slot, final-move hooks).

`JobStore.update` computes the new record in Python from the record it read, queues the
writes that go with it on a `Writes` recorder (the same calls a redis-py pipeline takes,
so the final-move hooks are unchanged), then runs `MOVE` once: the script stores
everything only if the record is still, byte for byte, the one the move was computed from
and the task, if the move records one, is not claimed by another job. One round trip
instead of WATCH, GET, MULTI ... EXEC, and nothing to retry in Python unless the record
changed meanwhile (the script then returns the current record, so no second GET).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

# KEYS[1]: the job record. ARGV: [1] the record (its JSON) the move was computed from,
# [2] the new record, [3] the task claim key or "", [4] the job id, [5] the claim's TTL (s),
# [6] the number G of other keys the move's hooks read, then G triples (key, "1" if it held
# a value else "0", the value), then the queued writes, each as: command, argument count,
# arguments. One pseudo-command is the script's own: `VQ.HINCRBY-THEN key field amount k`
# runs HINCRBY and then the k writes that follow it only when the field reached 0, else
# skips them (`Writes.hincrby_then`: a batch's last job stamps its end, videoqueue.batches).
# Replies: {0} record gone; {1, current record} the record, or a key a hook read, changed
# meanwhile; {2, owner} the task is claimed by another job; {3} stored. The checks come
# before any write: a refused move writes nothing.
# The queued writes name their keys in ARGV, not KEYS: this store runs on one Redis (or a
# Sentinel-watched primary), never a Cluster, where that would be refused.
MOVE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {0} end
if raw ~= ARGV[1] then return {1, raw} end
local i = 7
for _ = 1, tonumber(ARGV[6]) do
  local value = redis.call('GET', ARGV[i])
  if (ARGV[i + 1] == '1') ~= (value ~= false) or (value and value ~= ARGV[i + 2]) then return {1, raw} end
  i = i + 3
end
if ARGV[3] ~= '' then
  local owner = redis.call('GET', ARGV[3])
  if owner and owner ~= ARGV[4] then return {2, owner} end
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('SET', ARGV[3], ARGV[4], 'EX', ARGV[5]) end
while i <= #ARGV do
  local n = tonumber(ARGV[i + 1])
  if ARGV[i] == 'VQ.HINCRBY-THEN' then
    local left = redis.call('HINCRBY', ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
    local guarded = tonumber(ARGV[i + 5])
    i = i + 2 + n
    if left ~= 0 then
      for _ = 1, guarded do i = i + 2 + tonumber(ARGV[i + 1]) end
    end
  else
    redis.call(ARGV[i], unpack(ARGV, i + 2, i + 1 + n))
    i = i + 2 + n
  end
end
return {3}
"""

GONE, CHANGED, CLAIMED, STORED = 0, 1, 2, 3
"""The first element of `MOVE`'s reply."""

Arg = str | int | float


def _seconds(value: int | timedelta) -> int:
    return int(value.total_seconds()) if isinstance(value, timedelta) else int(value)


def _millis(value: int | timedelta) -> int:
    return int(value.total_seconds() * 1000) if isinstance(value, timedelta) else int(value)


class Reads:
    """What the final-move hooks read before `MOVE` (plain GETs on `client`), kept so the
    script stores the move only if every key read still holds what was read: the check
    WATCH made when the hooks read inside the transaction (a `costs rebuild` writing a
    job's ledger row while its final move is computed makes the move run again)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.seen: dict[str, str | None] = {}
        """Each key read, with the value its first read returned (None: no such key)."""

    def get(self, name: str) -> str | None:
        """GET name, remembered for the script's check."""
        value: Any = self.client.get(name)
        if isinstance(value, bytes):
            value = value.decode()
        self.seen.setdefault(name, value)
        return value  # type: ignore[no-any-return]

    def watch(self, *names: str) -> None:
        """Nothing: what a hook then reads with `get` is checked by the script (the name is
        kept for hooks written for a WATCHing pipeline)."""

    def args(self) -> list[Arg]:
        """The keys read, for `MOVE`: their count, then (key, "1" or "0", value) each."""
        out: list[Arg] = [len(self.seen)]
        for name, value in self.seen.items():
            out += [name, "0" if value is None else "1", value or ""]
        return out


class Writes:
    """Records the writes a pipeline would queue, for `MOVE`: a stand-in for the MULTI
    pipeline the final-move hooks (videoqueue.final_hooks) and the index helpers are
    given. It takes the write commands they use, with redis-py's signatures (a subset of
    options); anything else is an AttributeError, found by the first test of a new hook.
    Replies are never returned (a MULTI's were not used either)."""

    def __init__(self) -> None:
        self.args: list[Arg] = []
        """The recorded writes: command, argument count, arguments, one after another."""

    def __len__(self) -> int:
        """How many writes were recorded."""
        count, i = 0, 0
        while i < len(self.args):
            count += 1
            i += 2 + int(self.args[i + 1])
        return count

    def _add(self, command: str, *args: Arg) -> None:
        self.args.extend((command, len(args), *args))

    def set(
        self,
        name: str,
        value: Arg,
        *,
        ex: int | timedelta | None = None,
        px: int | timedelta | None = None,
        nx: bool = False,
        xx: bool = False,
    ) -> None:
        """SET name value [EX s] [PX ms] [NX|XX]."""
        args: list[Arg] = [name, value]
        if ex is not None:
            args += ["EX", _seconds(ex)]
        if px is not None:
            args += ["PX", _millis(px)]
        if nx:
            args.append("NX")
        if xx:
            args.append("XX")
        self._add("SET", *args)

    def delete(self, *names: str) -> None:
        """DEL names..."""
        if names:
            self._add("DEL", *names)

    def expire(
        self,
        name: str,
        time: int | timedelta,
        *,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> None:
        """EXPIRE name seconds [NX|XX|GT|LT]."""
        flags: list[Arg] = [flag for flag, on in (("NX", nx), ("XX", xx), ("GT", gt), ("LT", lt)) if on]
        self._add("EXPIRE", name, _seconds(time), *flags)

    def pexpire(self, name: str, time: int | timedelta) -> None:
        """PEXPIRE name milliseconds."""
        self._add("PEXPIRE", name, _millis(time))

    def hset(
        self, name: str, key: str | None = None, value: Arg | None = None, mapping: dict[str, Arg] | None = None
    ) -> None:
        """HSET name field value [field value ...]."""
        pairs: list[Arg] = []
        if key is not None:
            if value is None:
                raise ValueError("hset: a field needs a value")
            pairs += [key, value]
        for field, item in (mapping or {}).items():
            pairs += [field, item]
        if not pairs:
            raise ValueError("hset: no field given")
        self._add("HSET", name, *pairs)

    def incr(self, name: str, amount: int = 1) -> None:
        """INCRBY name amount."""
        self._add("INCRBY", name, int(amount))

    incrby = incr

    def hincrby(self, name: str, key: str, amount: int = 1) -> None:
        """HINCRBY name field amount."""
        self._add("HINCRBY", name, key, int(amount))

    def hincrbyfloat(self, name: str, key: str, amount: float = 1.0) -> None:
        """HINCRBYFLOAT name field amount."""
        self._add("HINCRBYFLOAT", name, key, float(amount))

    def hincrby_then(self, name: str, key: str, amount: int, then: Writes) -> None:
        """HINCRBY name field amount, then the writes recorded on `then` only if the field
        is 0 after it (the script's `VQ.HINCRBY-THEN`: a write conditional on a count,
        without a second round trip)."""
        self._add("VQ.HINCRBY-THEN", name, key, int(amount), len(then))
        self.args.extend(then.args)

    def hsetnx(self, name: str, key: str, value: Arg) -> None:
        """HSETNX name field value."""
        self._add("HSETNX", name, key, value)

    def zadd(
        self,
        name: str,
        mapping: dict[str, float],
        *,
        nx: bool = False,
        xx: bool = False,
        gt: bool = False,
        lt: bool = False,
    ) -> None:
        """ZADD name [NX|XX] [GT|LT] score member [score member ...]."""
        if not mapping:
            raise ValueError("zadd: no member given")
        flags: list[Arg] = [flag for flag, on in (("NX", nx), ("XX", xx), ("GT", gt), ("LT", lt)) if on]
        pairs: list[Arg] = []
        for member, score in mapping.items():
            pairs += [float(score), member]
        self._add("ZADD", name, *flags, *pairs)

    def zrem(self, name: str, *values: str) -> None:
        """ZREM name members..."""
        if values:
            self._add("ZREM", name, *values)

    def sadd(self, name: str, *values: Arg) -> None:
        """SADD name members..."""
        if values:
            self._add("SADD", name, *values)

    def srem(self, name: str, *values: Arg) -> None:
        """SREM name members..."""
        if values:
            self._add("SREM", name, *values)

    def xadd(self, name: str, fields: Mapping[str, Arg], maxlen: int | None = None, approximate: bool = True) -> None:
        """XADD name [MAXLEN [~] count] * field value [field value ...]: the entry's id is the
        server's ("*"), given when the script runs."""
        if not fields:
            raise ValueError("xadd: no field given")
        args: list[Arg] = [name]
        if maxlen is not None:
            args += ["MAXLEN", *(["~"] if approximate else []), int(maxlen)]
        args.append("*")
        for field, value in fields.items():
            args += [field, value]
        self._add("XADD", *args)


def reply_code(reply: Any) -> tuple[int, str | None]:
    """`MOVE`'s reply as (code, the record or owner it carries, or None)."""
    code = int(reply[0])
    carried = reply[1] if len(reply) > 1 else None
    if isinstance(carried, bytes):
        carried = carried.decode()
    return code, carried
