"""kombu's Redis transports (redis://, rediss://, sentinel://) with a fix that keeps a worker
alive through a Redis restart, and one redis-py client per connection pool instead of one
per command (`_ReusesClient`); `register()` makes our broker URLs use them.

The failure, in kombu 5.7 / Celery 5.7 (it hit about one Redis restart in three): on a lost
broker, `Consumer.on_connection_error_after_connected` calls `Connection.collect()`, which
closes the default (consuming) channel. `Channel.close` first reads the reply of the BRPOP in
flight (added by celery/kombu#1733 so that a message popped while closing is not lost); on
a dead connection that read raises ConnectionError out of `close`, before the channel is
marked closed. `collect()` goes on to close the connection's channels, the default one
again among them, but kombu's `Transport.close_connection` stops at the first whose close
raises, as any channel's does when it must talk to the stopped Redis (restoring its
unacknowledged messages, deleting auto-delete queues): when such a channel comes before the
default one (as about one restart in three had it), the default channel stays half closed. Then
`collect()` clears the transport's `client`. Celery's `connection.close()`
closes the default channel once more: its restore of the unacknowledged messages needs a
new connection pool, and `Channel._connparams` dies on `self.connection.client.hostname`
with AttributeError("'NoneType' object has no attribute 'hostname'") (the error of
celery/kombu#582 and celery/kombu#970, reached by another path; no upstream issue or fix
for this path was found as of kombu 5.7.0). An AttributeError is no connection error to
Celery: "Unrecoverable error", and the worker process exits.
tests/integration/test_broker_transport.py replays it step by step.

The fix, on the channel: a pending BRPOP that cannot be read because the connection is gone
no longer aborts `close`, which goes on as it does when no BRPOP is in flight (the
unacknowledged messages are restored now if Redis answers, else they stay in the
broker's `unacked` hash until its visibility timeout, and the job store's recovery sweep
drives their jobs meanwhile). And should a closed connection's channel still need a pool,
it raises a redis ConnectionError, which Celery recovers from, not an AttributeError.
SentinelChannel subclasses the Redis Channel, so the sentinel transport gets both too.
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

# The URL schemes of our brokers and the transports they get. Celery's `broker_transport`
# setting would take a class too, but then `Connection.as_uri()` (the worker's "Connected to
# redis://..." line, Flower) names the class path instead of the scheme: an alias keeps it.
SCHEMES = {"redis": "Transport", "rediss": "Transport", "sentinel": "SentinelTransport"}
# Logged each time the fix acts: where kombu alone could have killed the worker.
LOST_BRPOP_MESSAGE = "broker connection lost with a BRPOP in flight: the channel closes without its reply"

log = logging.getLogger(__name__)


def finish_pending_brpop(channel: kombu_redis.Channel) -> None:
    """Read the reply of the channel's BRPOP in flight, if any, as kombu's `Channel.close`
    does; a connection error (the connection is gone, and with it whatever that BRPOP may
    have popped) is swallowed, so that the close can go on. Other errors propagate."""
    raw: Any = channel  # `_in_poll` and `_brpop_read` are private to kombu's Redis channel
    if not raw._in_poll:
        return
    try:
        raw._brpop_read()
    except Empty:
        pass
    except raw.connection.connection_errors as exc:
        log.info("%s (%s)", LOST_BRPOP_MESSAGE, type(exc).__name__)


def require_open_connection(channel: kombu_redis.Channel) -> None:
    """RedisConnectionError when the channel's kombu Connection is gone (collected or
    closed), where kombu would die on `None.hostname` building a connection pool."""
    if channel.connection.client is None:
        raise RedisConnectionError("the broker connection of this channel is closed")


class _ClosesAfterLostConnection(kombu_redis.Channel):
    """The fix, for kombu's Redis channel and every subclass of it (mixed in first)."""

    def close(self) -> None:
        finish_pending_brpop(self)
        super().close()

    def _connparams(self, asynchronous: bool = False) -> Any:
        require_open_connection(self)
        return super()._connparams(asynchronous)  # type: ignore[misc]


class _ReusesClient(kombu_redis.Channel):
    """One redis-py client per connection pool, where kombu builds a new one for each
    command it sends outside the event loop (`conn_or_acquire`: every publish, ack, QoS
    update; about ten per task). A client is a thin object over the pool, safe to share
    between threads, but building one copies redis-py's table of response callbacks:
    15 % of a worker main process's samples and 2 % of a pool process's under load
    (docs/benchmarks.md section 2b). A new pool (after a fork, or once kombu dropped a
    broken one) gets a new client."""

    _shared_client: tuple[Any, Any] | None = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool
        shared = self._shared_client
        if shared is None or shared[0] is not pool:
            shared = (pool, super()._create_client())  # type: ignore[misc]
            self._shared_client = shared
        return shared[1]


class Channel(_ClosesAfterLostConnection, _ReusesClient):
    """kombu's Redis channel, closing cleanly after the connection broke, with one client
    per connection pool."""


class SentinelChannel(_ClosesAfterLostConnection, _ReusesClient, kombu_redis.SentinelChannel):
    """kombu's Redis Sentinel channel, with the same changes as `Channel`."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport (redis://, rediss://) with `Channel`."""

    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport (sentinel://) with `SentinelChannel`."""

    Channel = SentinelChannel


def register() -> None:
    """Make kombu connections to redis://, rediss:// and sentinel:// URLs in this process use
    the transports above. Idempotent; call before the first connection is made."""
    for scheme, name in SCHEMES.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{name}"
        # kombu caches resolved aliases: a connection made earlier would keep the old class.
        cache: dict[str | None, Any] = getattr(kombu.transport, "_transport_cache", {})
        cache.pop(scheme, None)
