"""The compact stored form of job records and ledger rows in Redis (issue 18: a smaller job).

What Redis holds is JSON with `"v": 4` (records) or `"v": 2` (ledger rows, and records written
before version 3; version 3 records were written before version 4); the models' own JSON (`model_dump_json`, manifests,
`videoqueue status --json`) is unchanged. The stored form leaves out what can be worked
out again, and reads back into a model equal to the one written:

- fields at their defaults (None, 0, empty lists, `"token"`) are left out;
- times are numbers: a ledger row's `settled_at` in microseconds since the epoch, its other
  times in microseconds from it (records: see version 4 below);
- a manifest's URI beside its video (same name, `.json`) is its extension: `".json"`;
- history moves are `[at, to]`, `from` left out when it is the previous move's `to`
  (`queued` for the first); the last move leaves out `to` when it is the record's status,
  and then `at` too (`[]`) when it is the record's `updated_at`;
- a record's field names, and its request's, are one to three letters (`RECORD_NAMES`,
  `REQUEST_NAMES`: a fixed table, never changed, only added to); a name not in the table is
  written as it is, and the long names still read (records written before the table).

Since version 3 (records only, issue 18: a finished record under 512 B) the record also
leaves out what it repeats (`RECORD_VERSION`; `"v": 2` records read as they were written):

- a field equal to what its absence means is left out (`imply`, `restore`): `cost_usd` when
  a succeeded record's is its `cost_estimate_usd`; `settled_at` when it is `finished_at`;
  `provider_status` when a final record's is its `status`; `manifest_uri` when it is the
  video's with `.json` for its extension. Where absence means such a value, a field that
  is None is written as `null`;
- the job id is left out: it is the key's (`keys.job_key`), and `JobRecord.from_store_json`
  is given it; inside a URI (`output_uri`, `manifest_uri`, `video_url`) the URI is stored
  as the list of its parts around the id (`split_id`, `join_id`);
- history moves along the usual path (queued, submitting, running, downloading,
  succeeded: `CHAIN`) are their `at` alone; other moves name statuses by short codes
  (`STATUS_CODES`); the last move, to the record's status at its `updated_at`, is left out
  altogether, and a history that does not end with such a move ends with `null`.

Version 4 (issue 18: a finished job under 1.0 KB) is version 3 with its times in
milliseconds. `job.utcnow`, the clock of a job's moves, reads to the millisecond, so these
are integers, 3 digits shorter than in microseconds; a time with a fraction of a millisecond
(a job's `created_at`, which keeps its microseconds to order the waiting room, or any time set
otherwise) is written with its fraction (`1796593233392.54`), so no time is rounded.
`created_at` is counted from the epoch, every other time from `created_at`'s whole
millisecond. Version 4 also leaves out, as version 3 does what a record repeats
(`job._implied_v4`): `attempts` when it is 1 and the record has a provider task, `store_attempts`
when it is 1 and the video is stored, and `submitted_at` when it is the time of the first move
to `running` (the job store records the task with that move, at one time). A finished record
of the overhead bench's request is about 50 B shorter, which puts it in Redis's next smaller
allocation (448 B instead of 512 B).

Each shortening is checked as it is made (the value it reads back as must be the value
written) and a value that would not read back the same is stored as it is: a time not in
UTC stays an ISO string, a history entry of another shape stays an object. Records and
rows without `"v"` (written before) read as they always did.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

VERSION = 2
"""The `v` of the compact form of ledger rows (and of records written before version 3);
JSON without `v` is the models' own form."""

RECORD_VERSION = 4
"""The `v` of a job record's compact form: version 3 with its times in milliseconds."""

RECORD_VERSION_US = 3
"""The `v` of records written before version 4: version 2 and what version 3 leaves out,
times in microseconds. Still read."""

RECORD_VERSIONS = frozenset({RECORD_VERSION_US, RECORD_VERSION})
"""The compact record forms that leave out what the record repeats."""

COMPACT_VERSIONS = frozenset({VERSION, *RECORD_VERSIONS})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MS = timedelta(milliseconds=1)
_ZERO = timedelta(0)
_FIRST_STATUS = "queued"


def is_compact(data: object) -> bool:
    """Whether `data` (a parsed JSON object) is in a compact stored form (`"v"`: 2 or 3)."""
    return isinstance(data, dict) and data.get("v") in COMPACT_VERSIONS


def in_utc(value: object) -> bool:
    """Whether `value` is a datetime in UTC (any tzinfo of offset 0)."""
    return isinstance(value, datetime) and value.utcoffset() == _ZERO


def time_to_int(value: datetime, origin: datetime = _EPOCH) -> int:
    """A UTC time as whole microseconds after `origin` (negative before it)."""
    return (value - origin) // _US


def int_to_time(value: int, origin: datetime = _EPOCH) -> datetime:
    """The time `value` microseconds after `origin` (a UTC time), in UTC."""
    return origin + value * _US


Millis = int | float
"""A time in milliseconds (version 4): an integer, or a float with the fraction of a
millisecond a time finer than that has."""


def time_to_ms(value: datetime, origin: datetime = _EPOCH) -> Millis | None:
    """A UTC time as milliseconds after `origin` (negative before it): an integer when whole,
    else a float that reads back to the same microsecond (None if none does: not at these
    magnitudes, whose microseconds fit a float's 53 bits)."""
    micros = (value - origin) // _US
    if micros % 1000 == 0:
        return micros // 1000
    millis = micros / 1000
    return millis if round(millis * 1000) == micros else None


def ms_to_time(value: Millis, origin: datetime = _EPOCH) -> datetime:
    """Undo `time_to_ms`: the time `value` milliseconds after `origin`, in UTC."""
    if isinstance(value, float):
        return origin + round(value * 1000) * _US
    return origin + value * _MS


def whole_ms(value: datetime) -> datetime:
    """`value` without its fraction of a millisecond: what version 4 counts a record's
    times from (its `created_at`'s)."""
    return value - (value - _EPOCH) % _MS


def ms_origin(value: datetime | None) -> bool:
    """Whether `value` can be the origin of a version 4 record's times: a UTC time that
    `time_to_ms` writes as a number."""
    return value is not None and in_utc(value) and time_to_ms(value) is not None


def is_ms(value: object) -> TypeGuard[Millis]:
    """Whether `value` (parsed JSON) is a time in milliseconds (`Millis`)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def encode_times(
    data: dict[str, Any],
    values: Mapping[str, datetime | None],
    origin_field: str,
    names: Iterable[str],
    *,
    in_ms: bool = False,
) -> None:
    """Replace in `data` (a JSON-mode dump) the times `names` by numbers: `origin_field`
    from the epoch, the others from it; microseconds, or with `in_ms` milliseconds
    (`time_to_ms`, counted from the origin's whole millisecond). Times not in UTC are left
    as they are."""
    origin = values[origin_field]
    if not (ms_origin(origin) if in_ms else in_utc(origin)):
        return
    assert origin is not None
    convert: Callable[[datetime, datetime], Millis | None]
    if in_ms:
        base, convert = whole_ms(origin), time_to_ms
    else:
        base, convert = origin, time_to_int
    data[origin_field] = convert(origin, _EPOCH)
    for name in names:
        value = values.get(name)
        if name != origin_field and name in data and in_utc(value):
            assert value is not None
            number = convert(value, base)
            if number is not None:
                data[name] = number


def decode_times(
    data: dict[str, Any], origin_field: str, names: Iterable[str], *, in_ms: bool = False
) -> datetime | None:
    """Undo `encode_times` in place; returns the origin time (None if it was kept as text)."""
    raw = data.get(origin_field)
    stored: Callable[[object], bool] = is_ms if in_ms else _is_int
    if not stored(raw):
        return None
    convert: Callable[[Any, datetime], datetime] = ms_to_time if in_ms else int_to_time
    origin = data[origin_field] = convert(raw, _EPOCH)
    base = whole_ms(origin) if in_ms else origin
    for name in names:
        value = data.get(name)
        if name != origin_field and stored(value):
            data[name] = convert(value, base)
    return origin


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# What `datetime.isoformat()` writes for a UTC time (the `at` of a move): only a text of
# this form reads back the same from an integer. Microseconds are left out when 0.
_UTC_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.(?!000000)\d{6})?\+00:00")


def _move_at(at: object, base: datetime) -> Millis | None:
    """A move's `at` (an ISO text) as milliseconds from `base`, if it reads back the same."""
    if not isinstance(at, str) or _UTC_ISO.fullmatch(at) is None:
        return None
    try:
        return time_to_ms(datetime.fromisoformat(at), base)
    except ValueError:  # a day or an hour out of range
        return None


def decode_history(stored: list[Any], origin: datetime, status: str, updated_at: datetime) -> list[dict[str, Any]]:
    """A version 2 history (written before version 3: `[at, to]` moves, `from` implied by the
    move before, `[]` for the last move) as the moves `{"at": ISO text, "from", "to"}`."""
    history: list[dict[str, Any]] = []
    previous = _FIRST_STATUS
    for move in stored:
        if isinstance(move, dict):
            history.append(move)
            target = move.get("to")
            previous = target if isinstance(target, str) else ""
            continue
        # `[]` is only ever the last move: the record's status at its updated_at.
        at = int_to_time(move[0], origin).isoformat() if move else updated_at.astimezone(UTC).isoformat()
        target = move[1] if len(move) > 1 else str(status)
        source = move[2] if len(move) > 2 else previous
        history.append({"at": at, "from": source, "to": target})
        previous = target
    return history


CHAIN: dict[str, str] = {
    "queued": "submitting",
    "submitting": "running",
    "running": "downloading",
    "downloading": "succeeded",
}
"""The usual next status after each (version 3: a move along it is stored as its `at`)."""

STATUS_CODES: dict[str, str] = {
    "queued": "q",
    "submitting": "sb",
    "running": "r",
    "downloading": "d",
    "succeeded": "ok",
    "failed": "f",
    "cancelled": "c",
    "expired": "x",
}
"""A status -> its code in a version 3 history move (a fixed table, only added to)."""

_STATUSES = {code: status for status, code in STATUS_CODES.items()}


def encode_moves(
    history: list[dict[str, Any]], origin: datetime, status: str, updated_at: datetime
) -> list[Any] | None:
    """The version 4 form of a record's history (see the module docstring), or None when
    the list is empty. `origin` is the record's `created_at`, in UTC."""
    if not history:
        return None
    out: list[Any] = []
    previous = _FIRST_STATUS
    base = whole_ms(origin)
    for entry in history:
        source, target = entry.get("from"), entry.get("to")
        canonical = len(entry) == 3 and source in STATUS_CODES and target in STATUS_CODES
        at = _move_at(entry.get("at"), base) if canonical else None
        if at is None:
            out.append(dict(entry))  # stored as it is
            previous = target if isinstance(target, str) else ""
            continue
        assert isinstance(source, str) and isinstance(target, str)
        if source == previous and CHAIN.get(previous) == target:
            out.append(at)
        else:
            move: list[Any] = [at, STATUS_CODES[target]]
            if source != previous:
                move.append(STATUS_CODES[source])
            out.append(move)
        previous = target
    last, stored = history[-1], out[-1]
    implied = (
        not isinstance(stored, dict)
        and last.get("from") == _previous_of(history[:-1])
        and last.get("to") == status
        and in_utc(updated_at)
        and last.get("at") == updated_at.astimezone(UTC).isoformat()
    )
    if implied:
        out.pop()
    else:
        out.append(None)
    return out


def _previous_of(moves: list[dict[str, Any]]) -> str:
    """The status a move after `moves` comes from when its `from` is implied."""
    if not moves:
        return _FIRST_STATUS
    target = moves[-1].get("to")
    return target if isinstance(target, str) else ""


def decode_moves(
    stored: list[Any], origin: datetime, status: str, updated_at: datetime, *, in_ms: bool = True
) -> list[dict[str, Any]]:
    """Undo `encode_moves` (`in_ms`: version 4; else version 3, in microseconds from
    `origin`): the moves as `{"at": ISO text, "from", "to"}`."""
    history: list[dict[str, Any]] = []
    previous = _FIRST_STATUS
    base = whole_ms(origin)
    for move in stored:
        if move is None:  # only ever last: no move to the record's status is implied
            return history
        if isinstance(move, dict):
            history.append(move)
            target = move.get("to")
            previous = target if isinstance(target, str) else ""
            continue
        if is_ms(move):
            at, target, source = move, CHAIN[previous], previous
        else:
            at, target = move[0], _STATUSES[move[1]]
            source = _STATUSES[move[2]] if len(move) > 2 else previous
        when = ms_to_time(at, base) if in_ms else int_to_time(int(at), origin)
        history.append({"at": when.isoformat(), "from": source, "to": target})
        previous = target
    history.append({"at": updated_at.astimezone(UTC).isoformat(), "from": previous, "to": str(status)})
    return history


_FROM_DATA: Any = object()


def imply(data: dict[str, Any], name: str, implied: Any, value: Any = _FROM_DATA) -> None:
    """Leave `name` out of `data` (a JSON-mode dump without defaults, whose default for
    `name` is None) when its value is `implied`, what its absence reads back as; a None
    that absence would not mean is written as `null`. `value`: the field's value in Python
    (default: what `data` holds), for a field `data` holds as text (a time, kept as dumped
    unless left out) or left out as a default (an int, written)."""
    if value is _FROM_DATA:
        value = data.get(name)
    if value == implied and type(value) is type(implied) and (not isinstance(value, datetime) or in_utc(value)):
        data.pop(name, None)
    elif not isinstance(value, datetime):
        data[name] = value


def restore(data: dict[str, Any], name: str, implied: Any) -> None:
    """Undo `imply`: an absent `name` is `implied`."""
    if name not in data:
        data[name] = implied


def split_id(value: Any, job_id: str) -> Any:
    """A text holding `job_id` as the list of its parts around it (`join_id` undoes it);
    anything else as it is."""
    if isinstance(value, str) and job_id and job_id in value:
        return value.split(job_id)
    return value


def join_id(value: Any, job_id: str) -> Any:
    """Undo `split_id`."""
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return job_id.join(value)
    return value


def relative_uri(uri: str, base: str) -> str:
    """`uri` as its extension when it is `base` with another one (a manifest beside its
    video: `.json`), else as it is. A URI never starts with a dot, so none is taken for one."""
    stem, dot, _ = base.rpartition(".")
    if dot and uri.startswith(stem + ".") and "/" not in uri[len(stem) :]:
        return uri[len(stem) :]
    return uri


def absolute_uri(stored: str, base: str) -> str:
    """Undo `relative_uri`."""
    return base.rpartition(".")[0] + stored if stored.startswith(".") else stored


RECORD_NAMES: dict[str, str] = {
    "status": "s",
    "provider": "p",
    "model": "m",
    "request": "r",
    "provider_task_id": "t",
    "provider_status": "ps",
    "provider_endpoint": "pe",
    "provider_fingerprint": "pf",
    "waiting_for_endpoint": "we",
    "attempts": "a",
    "submit_errors": "se",
    "submit_rate_limits": "sr",
    "uncertain_creates": "uc",
    "cost_estimate_usd": "ce",
    "cost_usd": "c",
    "uncertain_cost_usd": "cu",
    "billed_units": "bu",
    "billed_unit": "bn",
    "budget_keys": "bk",
    "output_uri": "o",
    "manifest_uri": "mu",
    "video_url": "vu",
    "error": "e",
    "cancel_requested_at": "ca",
    "poll_seq": "pq",
    "poll_errors": "pr",
    "store_attempts": "sa",
    "store_lease_until": "sl",
    "store_retries": "st",
    "store_retried_at": "sx",
    "submit_intent_at": "si",
    "next_due_at": "nd",
    "recoveries": "rc",
    "submit_lease_until": "su",
    "created_at": "ct",
    "updated_at": "ut",
    "submitted_at": "sb",
    "provider_done_at": "pd",
    "finished_at": "fa",
    "settled_at": "xa",
    "result_expires_at": "re",
    "deadline_at": "dl",
    "past_deadline_at": "pl",
    "notes": "n",
    "history": "h",
    "retry_of": "ro",
    "retried_by": "rb",
    "movie_id": "mv",
    "scene": "sn",
    "after_job": "aj",
    "last_frame_url": "lu",
    "batch_id": "bt",
}
"""A job record's field -> its name in the stored JSON (`id` and `v` stay as they are)."""

REQUEST_NAMES: dict[str, str] = {
    "prompt": "p",
    "provider": "pv",
    "model": "m",
    "duration": "d",
    "resolution": "rs",
    "ratio": "ra",
    "audio": "au",
    "seed": "sd",
    "service_tier": "st",
    "images": "im",
    "negative_prompt": "np",
    "person_generation": "pg",
    "tags": "tg",
    "client_job_id": "cj",
    "priority": "pr",
    "tenant": "tn",
    "on_complete": "oc",
    "on_complete_queue": "oq",
    "webhook_url": "wu",
    "webhook_events": "we",
}
"""A resolved request's field -> its name in a stored record's JSON."""


def rename(data: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """`data` with its keys renamed by `names` (others kept), in the same order."""
    return {names.get(name, name): value for name, value in data.items()}


def long_names(names: Mapping[str, str]) -> dict[str, str]:
    """The reverse of a table of short names."""
    return {short: name for name, short in names.items()}


def with_long_names(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record's JSON object (parsed) with the long field names, its request's too:
    for people and tests reading what Redis holds; still compact otherwise."""
    out = rename(record, long_names(RECORD_NAMES))
    if isinstance(out.get("request"), dict):
        out["request"] = rename(out["request"], long_names(REQUEST_NAMES))
    return out


def drop_defaults(data: dict[str, Any], defaults: Mapping[str, Any]) -> None:
    """Remove from `data` the fields whose value is their default in `defaults`."""
    for name, default in defaults.items():
        if name in data and data[name] == default:
            del data[name]
