"""The one way videoqueue opens a Redis client for its job store, ledger and counters.

Every client gets timeouts: without them a Redis that accepts the TCP connection but never
answers (a `rediss://` URL pointed at a plain Redis, whose TLS handshake waits forever; a
host that drops packets) hangs a CLI command or a worker thread with no error at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.connection import parse_url
from redis.credentials import CredentialProvider
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from pydantic import SecretStr

    from videoqueue.settings import Settings

CONNECT_TIMEOUT_S = 5.0
"""Seconds to open a connection (TCP, and TLS for rediss://)."""

COMMAND_TIMEOUT_S = 30.0
"""Seconds to wait for one reply. videoqueue's one blocking command, the XREAD of the
event stream, blocks at most events.MAX_BLOCK_MS (5 s); its slowest others, a transaction
over a batch of jobs or a SCAN page, take milliseconds, so a reply this late means the
server is gone: redis-py raises TimeoutError (a RedisError,
which the tasks retry)."""


def connect(url: str, *, decode_responses: bool = True, timeout_s: float | None = None) -> redis.Redis:
    """A client for the Redis at `url` (redis://, rediss:// or unix://), with the timeouts
    above (or `timeout_s` for both) and a health check of idle connections every 30 s.
    Connects lazily: errors come from the first command (redis.exceptions.ConnectionError
    or TimeoutError)."""
    return redis.Redis.from_url(
        url, decode_responses=decode_responses, health_check_interval=30, **_timeouts(timeout_s)
    )


def connect_settings(
    settings: Settings, *, decode_responses: bool = True, timeout_s: float | None = None
) -> redis.Redis:
    """The job store's client as `settings` say: with REDIS_SENTINELS, a client of the
    primary the sentinels name for REDIS_SENTINEL_MASTER (redis-py's `Sentinel.master_for`,
    which asks them again after a failover), with REDIS_URL's database and password; else
    `connect(REDIS_URL)`. Same timeouts either way (`timeout_s`: as in `connect`); lazy:
    errors come from the first command (redis.sentinel.MasterNotFoundError, a
    ConnectionError, when no sentinel names a primary)."""
    nodes = settings.sentinel_nodes()
    if not nodes:
        return connect(settings.redis_url, decode_responses=decode_responses, timeout_s=timeout_s)
    client: redis.Redis = sentinel(settings, timeout_s).master_for(  # type: ignore[no-untyped-call]
        str(settings.redis_sentinel_master),
        decode_responses=decode_responses,
        health_check_interval=30,
        **_server_auth(settings.redis_url),
    )
    return client


def connect_settings_async(settings: Settings, *, timeout_s: float | None = None) -> redis.asyncio.Redis:
    """`connect_settings` for asyncio code (producer/aio.py): a `redis.asyncio` client of
    REDIS_URL, or of the primary REDIS_SENTINELS name, with the same timeouts, decoded
    replies and authentication. Lazy, as `connect_settings`."""
    nodes = settings.sentinel_nodes()
    if not nodes:
        options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30, **_timeouts(timeout_s)}
        return redis.asyncio.Redis.from_url(settings.redis_url, **options)
    watchers = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        nodes, sentinel_kwargs=sentinel_kwargs(settings, timeout_s), **_timeouts(timeout_s)
    )
    client: redis.asyncio.Redis = watchers.master_for(
        str(settings.redis_sentinel_master),
        decode_responses=True,
        health_check_interval=30,
        **_server_auth(settings.redis_url),
    )
    return client


def sentinel(settings: Settings, timeout_s: float | None = None) -> Sentinel:
    """redis-py's `Sentinel` over REDIS_SENTINELS, its connections to the sentinels and to
    the servers they name with the timeouts above or `timeout_s` (REDIS_SENTINEL_PASSWORD
    for the sentinels)."""
    nodes = settings.sentinel_nodes()
    options = sentinel_kwargs(settings, timeout_s)
    return Sentinel(nodes, sentinel_kwargs=options, **_timeouts(timeout_s))  # type: ignore[no-untyped-call]


class SentinelPassword(CredentialProvider):
    """REDIS_SENTINEL_PASSWORD as redis-py credentials for the connections to the sentinels,
    in a form that never shows it. It travels in kombu's transport options, which a worker
    reports to anyone who asks (`celery inspect stats`, Flower's worker page): kombu's JSON
    takes `__json__`, and the repr is masked too."""

    def __init__(self, secret: SecretStr) -> None:
        self._secret = secret

    def get_credentials(self) -> tuple[str]:
        """The password alone (AUTH <password>)."""
        return (self._secret.get_secret_value(),)

    def __json__(self) -> str:
        return "**********"

    def __repr__(self) -> str:
        return "SentinelPassword('**********')"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentinelPassword) and other._secret == self._secret

    def __hash__(self) -> int:
        return hash(self._secret)


def sentinel_kwargs(settings: Settings, timeout_s: float | None = None) -> dict[str, Any]:
    """Connection options for the sentinels themselves: the timeouts (or `timeout_s`), and
    their password (REDIS_SENTINEL_PASSWORD, as a SentinelPassword) if any. Also kombu's
    `sentinel_kwargs` transport option."""
    return sentinel_options(settings.redis_sentinel_password, timeout_s)


def sentinel_options(password: SecretStr | None, timeout_s: float | None = None) -> dict[str, Any]:
    """`sentinel_kwargs` for a sentinel password (or none)."""
    options: dict[str, Any] = _timeouts(timeout_s)
    if password is not None:
        options["credential_provider"] = SentinelPassword(password)
    return options


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """The kombu transport options a Sentinel broker (`settings.effective_broker_url` is
    `sentinel://...`) needs on top of the others: the master's name and how to reach the
    sentinels; empty for any other broker."""
    if not settings.effective_broker_url.startswith("sentinel://"):
        return {}
    return sentinel_transport_options(str(settings.redis_sentinel_master), settings.redis_sentinel_password)


def sentinel_transport_options(master: str, password: SecretStr | None) -> dict[str, Any]:
    """kombu's transport options for the Sentinel broker of `master`."""
    return {"master_name": master, "sentinel_kwargs": sentinel_options(password)}


def _server_auth(url: str) -> dict[str, Any]:
    """The database, user name and password REDIS_URL gives (its host and port are not used
    with Sentinel)."""
    parts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
    return {key: parts[key] for key in ("db", "username", "password") if parts.get(key) is not None}


def _timeouts(timeout_s: float | None) -> dict[str, float]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_S if timeout_s is None else timeout_s,
        "socket_timeout": COMMAND_TIMEOUT_S if timeout_s is None else timeout_s,
    }
