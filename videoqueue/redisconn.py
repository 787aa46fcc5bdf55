"""The one way videoqueue opens a Redis client for its job store, ledger and counters.

Every client gets timeouts: without them a Redis that accepts the TCP connection but never
answers (a `rediss://` URL pointed at a plain Redis, whose TLS handshake waits forever; a
host that drops packets) hangs a CLI command or a worker thread with no error at all.
"""

from __future__ import annotations

import redis

CONNECT_TIMEOUT_S = 5.0
"""Seconds to open a connection (TCP, and TLS for rediss://)."""

COMMAND_TIMEOUT_S = 30.0
"""Seconds to wait for one reply. videoqueue sends no blocking command to the job store;
its slowest, a transaction over a batch of jobs or a SCAN page, takes milliseconds, so a
reply this late means the server is gone: redis-py raises TimeoutError (a RedisError,
which the tasks retry)."""


def connect(url: str, *, decode_responses: bool = True) -> redis.Redis:
    """A client for the Redis at `url` (redis://, rediss:// or unix://), with the timeouts
    above and a health check of idle connections every 30 s. Connects lazily: errors come
    from the first command (redis.exceptions.ConnectionError or TimeoutError)."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S,
        health_check_interval=30,
    )
