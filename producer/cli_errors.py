"""What the `videoqueue` CLI says when a command fails: one line naming the cause and the fix.

`explain(exc)` turns an exception into that line (and the exit status); `redact` keeps
passwords in URLs out of it. `producer.cli.main` applies both to every command, so a command
added later gets the same treatment without doing anything. The line itself (`error_line`)
and `fail` are in videoqueue.commands, shared with the commands the worker side plugs in.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.exceptions
from pydantic import ValidationError
from pydantic_settings import SettingsError
from redis.sentinel import MasterNotFoundError

from producer.api import StoreRetryRefusedError
from producer.request import problems_of
from videoqueue.budget import BudgetExceededError
from videoqueue.commands import USAGE_ERROR
from videoqueue.errors import InvalidRequestError
from videoqueue.inputs import InputStorageUnavailableError, InputUploadError
from videoqueue.jobids import AmbiguousJobIdError, UnknownJobError
from videoqueue.settings import InvalidSettingsError, describe_invalid, get_settings

# user:password@ (or :password@) in any URL; the password runs to the last @ before the path
# (an unencoded @ in it is the host's separator for no client: redis-py splits at the last).
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^\s/]+(@)")


def masked_url(url: str) -> str:
    """`url` with whatever precedes its host (user and password, or a bare password) shown
    as `***`, by parsing, not by pattern: a password with a space or an unencoded @ in it
    stays hidden too. redis://:pw@h -> redis://:***@h, redis://u:pw@h -> redis://u:***@h."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return redact(url)
    user, colon, _ = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}" if colon else f"***@{hostport}"))


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced: redis://:pw@host -> redis://:***@host."""
    return _URL_PASSWORD.sub(r"\1***\2", text)


@dataclass(frozen=True)
class Explained:
    """One line for stderr (without the `error: ` prefix) and the exit status."""

    message: str
    code: int = USAGE_ERROR


def explain(exc: BaseException) -> Explained:
    """The line to print for `exc`: a known cause with its fix, or the exception itself with
    a pointer to `--debug` for one we did not foresee. Never carries a password."""
    known = _known(exc)
    if known is None:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        known = Explained(f"unexpected {detail} (run with --debug for the traceback)")
    return Explained(redact(known.message), known.code)


def _known(exc: BaseException) -> Explained | None:
    for link in _chain(exc):
        found = _explain_one(link)
        if found is not None:
            return found
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _explain_one(exc: BaseException) -> Explained | None:
    if isinstance(exc, InvalidSettingsError):
        return Explained(str(exc))
    if isinstance(exc, SettingsError):
        return Explained(describe_invalid(exc))
    if isinstance(exc, ValidationError):
        if exc.title == "Settings":
            return Explained(describe_invalid(exc))
        if exc.title == "VideoRequest":
            return Explained(str(InvalidRequestError(problems_of(exc))))
        return None
    if isinstance(exc, InvalidRequestError | UnknownJobError | AmbiguousJobIdError | BudgetExceededError):
        return Explained(str(exc))
    if isinstance(exc, StoreRetryRefusedError | InputStorageUnavailableError | InputUploadError):
        return Explained(str(exc))
    if isinstance(exc, ValueError) and str(exc).startswith("cannot read PRICING_FILE"):
        return Explained(f"{exc}: fix the file or unset PRICING_FILE")
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return Explained(f"Redis at {_redis_url()} refused our credentials ({exc}): fix the password in REDIS_URL")
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index is out of range" in str(exc):
        return Explained(
            f"Redis at {_redis_url()} has no such database (a server has 16 by default, 0-15; its "
            "`databases` setting says how many): pick one in range in REDIS_URL"
        )
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return Explained(
            f"Redis at {_redis_url()} is full (used memory over its maxmemory, noeviction): nothing was "
            "changed; raise maxmemory (REDIS_MAXMEMORY in the compose stack) or delete old jobs"
        )
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return Explained(f"Redis at {_redis_url()} is loading its data set: try again in a moment")
    if any(isinstance(link, MasterNotFoundError) for link in _chain(exc)):  # kombu wraps it too
        # Its message lists every sentinel client's repr: name what was asked instead.
        return Explained(
            f"no sentinel names a primary for {_redis_url()} (unreachable, or not monitoring that master): "
            "check REDIS_SENTINELS and REDIS_SENTINEL_MASTER; `videoqueue doctor` asks each sentinel"
        )
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        url, reason = _redis_url(), _reason(exc)
        fix = "start it (make redis) or set REDIS_URL"
        if url.startswith("rediss://") and reason == "timed out":
            fix = "rediss:// needs a server that speaks TLS on that port; for a plain one use redis://"
        return Explained(_unreachable("Redis", url, reason, fix))
    if _is_broker_error(exc):
        return _broker(exc)
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return Explained("address already in use: another process listens there; choose another --port")
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return Explained(f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc))
    return None


def _unreachable(what: str, url: str, reason: str, fix: str) -> str:
    return f"cannot reach {what} at {url} ({reason}): {fix}"


def _is_broker_error(exc: BaseException) -> bool:
    # kombu wraps a broker it cannot reach in its OperationalError (Celery's send_task);
    # imported here so that this module costs nothing where kombu is absent.
    try:
        from kombu.exceptions import OperationalError
    except ImportError:  # pragma: no cover - kombu comes with celery
        return False
    return isinstance(exc, OperationalError)


def _broker(exc: BaseException) -> Explained:
    settings = _settings()
    if settings is None or settings.broker_url is None:
        return Explained(_unreachable("Redis", _redis_url(), _reason(exc), "start it (make redis) or set REDIS_URL"))
    return Explained(
        _unreachable("the broker", redact(settings.broker_url), _reason(exc), "start it or set BROKER_URL")
    )


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in a few lowercase words: 'connection refused', 'timed out'."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.strerror:
            return link.strerror.lower()
        if isinstance(link, TimeoutError | redis.exceptions.TimeoutError):
            return "timed out"
    text = str(exc).strip().rstrip(".")
    # redis-py: "Error 111 connecting to 127.0.0.1:6390. Connection refused."
    last = text.rsplit(". ", 1)[-1]
    return redact(last.lower() or type(exc).__name__)


def _settings() -> Any:
    try:
        return get_settings()
    except Exception:  # noqa: BLE001 - the settings' own error is explained elsewhere
        return None


def _redis_url() -> str:
    settings = _settings()
    if settings is None:
        return "REDIS_URL"
    if settings.redis_sentinels:
        # The primary moves: name what the client asked for, the master and its sentinels.
        return f"master {settings.redis_sentinel_master!r} of sentinels {settings.redis_sentinels}"
    return masked_url(settings.redis_url)
