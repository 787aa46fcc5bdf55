"""Who else can reach the Redis a deployment uses: the `redis access` check of `videoqueue
doctor`.

A Redis holds every job record, the queued task messages and the fleet's budgets and limits;
anyone who can send it commands can read, rewrite or drop all of them. On this host's
loopback (or a unix socket) only local processes reach it. On any other address it must ask
for a password (`requirepass`, or an ACL user), and the connection should be TLS
(`rediss://`): in plain text the password and the data cross the network readable by anyone
on the path. `exposure_problems` decides; `answers_without_auth` asks the server.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class RedisAccess:
    """How one Redis is reached: `loopback` (this host only), `tls` (rediss://) and
    `open` (True: a client without credentials is served; None: unknown)."""

    loopback: bool
    tls: bool
    open: bool | None


def is_loopback(url: str) -> bool:
    """True when `url` names this host only: a unix socket, `localhost`, or a loopback
    address (127.0.0.0/8, ::1). Any other host name counts as the network."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def without_credentials(url: str) -> str:
    """`url` with its user and password removed (query, database and TLS options kept)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def answers_without_auth(url: str) -> bool | None:
    """Whether the Redis at `url` answers a PING from a client that gives no credentials:
    True (anyone who reaches it may use it), False (it demands AUTH), None (it could not be
    asked: unreachable, TLS refused, ...; the `redis` check reports that)."""
    import redis

    client = redis.Redis.from_url(
        without_credentials(url), socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
    )
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return False
    except redis.ResponseError as exc:
        # NOAUTH (requirepass), or a default user whose commands exclude PING.
        return False if "NOAUTH" in str(exc) or "NOPERM" in str(exc) else None
    except redis.RedisError:
        return None
    finally:
        client.close()


def probe_access(url: str) -> RedisAccess:
    """How the Redis at `url` is reached, asking the server whether it demands AUTH."""
    return RedisAccess(
        loopback=is_loopback(url),
        tls=urlsplit(url).scheme == "rediss",
        open=answers_without_auth(url),
    )


def exposure_problems(access: RedisAccess) -> list[str]:
    """What is wrong with reaching a Redis this way, one sentence each (empty: nothing).
    On the loopback nothing is; elsewhere a Redis that serves clients without credentials
    is one problem, plain text (redis://) another."""
    if access.loopback:
        return []
    problems = []
    if access.open:
        problems.append(
            "answers without a password on a non-loopback address: anyone who reaches it can read and "
            "change every job and queued task (set requirepass or an ACL user, and put the password in the URL)"
        )
    if not access.tls:
        problems.append(
            "plain text (redis://) on a non-loopback address: the password, job records and task messages "
            "cross the network unencrypted (use rediss://; docs/production.md, 'Redis on the network')"
        )
    return problems
