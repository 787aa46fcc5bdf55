"""The kombu failure worker/broker_transport.py works around, replayed step by step on a
real redis-server (and a real Sentinel in front of one): a connection whose consuming
channel has a delivered, unacknowledged message and a BRPOP in flight, and a second channel
with a message of its own, loses Redis; then Celery's consumer does what
`Consumer.on_connection_error_after_connected` does, `collect()` and then `close()`.

kombu's own transport dies in the second close with AttributeError (what made Celery log
"Unrecoverable error" and exit); ours closes, and the message is still in the broker's
`unacked` hash once Redis is back, for the visibility-timeout restore (at-least-once).
Should a kombu upgrade fix the bug, the `stock` cases fail: then the workaround can go.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kombu
import pytest
import redis

from simulator.stack import ManagedProcess, free_port, wait_until
from tests.integration.test_suite_redis_restart import RedisServer
from worker import broker_transport

pytestmark = pytest.mark.integration

MASTER = "vqmaster"
STOCK = {"redis": "kombu.transport.redis:Transport", "sentinel": "kombu.transport.redis:SentinelTransport"}
OURS = {"redis": "worker.broker_transport:Transport", "sentinel": "worker.broker_transport:SentinelTransport"}


@dataclass
class Broker:
    """Where a kombu Connection reaches Redis: directly or through a Sentinel."""

    url: str
    transport_options: dict[str, Any]


@pytest.fixture
def redis_server(tmp_path: Path, log_dir: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    data_dir = tmp_path / "redis-data"
    data_dir.mkdir()
    server = RedisServer(free_port(), data_dir, log_dir / "broker-transport")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sentinel_port(redis_server: RedisServer, tmp_path: Path, log_dir: Path) -> Iterator[int]:
    """A Sentinel (`redis-server --sentinel`) monitoring `redis_server` as MASTER."""
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {redis_server.port} 1\n"
        # No failover during the test: the master is only ever restarted.
        f"sentinel down-after-milliseconds {MASTER} 60000\n"
    )
    binary = shutil.which("redis-server")
    assert binary is not None
    proc = ManagedProcess("sentinel", [binary, str(config), "--sentinel"], {}, log_dir / "broker-transport" / "s.log")
    client = redis.Redis(port=port, socket_connect_timeout=1)

    def answers() -> bool:  # it monitors MASTER from its configuration on
        try:
            return bool(client.ping())
        except redis.RedisError:
            return not proc.alive()

    wait_until(answers, 30, "redis sentinel")
    assert proc.alive(), proc.log_text()[-2000:]
    yield port
    proc.stop()


def broker_for(kind: str, redis_server: RedisServer, request: pytest.FixtureRequest) -> Broker:
    if kind == "redis":
        return Broker(redis_server.url, {})
    port = request.getfixturevalue("sentinel_port")
    return Broker(f"sentinel://127.0.0.1:{port}/0", {"master_name": MASTER})


def lose_redis_mid_brpop(broker: Broker, transport: str, redis_server: RedisServer) -> kombu.Connection:
    """A connection like a Celery consumer's: a default channel consuming, with one message
    delivered and not acknowledged and a BRPOP in flight, and a second channel (Celery has
    more: remote control, events) holding one too. Redis stops; then `collect()`, as Celery's
    consumer does first. kombu closes the second channel first, whose restore fails against
    the stopped Redis and ends kombu's close of the connection's channels there."""
    conn = kombu.Connection(broker.url, transport=transport, transport_options=broker.transport_options)
    first, second = (
        kombu.Queue("vq-close-1", routing_key="vq-close-1"),
        kombu.Queue("vq-close-2", routing_key="vq-close-2"),
    )
    channel = conn.default_channel
    producer = kombu.Producer(channel, serializer="json")
    producer.publish({"n": 1}, routing_key=first.name, declare=[first, second])
    producer.publish({"n": 2}, routing_key=second.name)
    received: list[kombu.Message] = []
    consumer = kombu.Consumer(channel, [first], callbacks=[lambda _body, msg: received.append(msg)], accept=["json"])
    consumer.consume()
    conn.drain_events(timeout=5)
    assert len(received) == 1  # delivered, not acknowledged
    other: Any = conn.channel()
    assert other.basic_get(second.name, no_ack=False) is not None
    channel._brpop_start()  # type: ignore[attr-defined]  # the BRPOP the event loop keeps in flight
    redis_server.stop()
    conn.collect(socket_timeout=2)
    return conn


@pytest.mark.parametrize("kind", ["redis", "sentinel"])
def test_kombus_own_transport_dies_closing_after_the_lost_redis(
    kind: str, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    conn = lose_redis_mid_brpop(broker_for(kind, redis_server, request), STOCK[kind], redis_server)
    with pytest.raises(AttributeError, match="hostname"):
        conn.close()


@pytest.mark.parametrize("kind", ["redis", "sentinel"])
def test_our_transport_closes_and_keeps_the_unacked_message(
    kind: str, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    conn = lose_redis_mid_brpop(broker_for(kind, redis_server, request), OURS[kind], redis_server)
    conn.close()  # no error: Celery goes on to reconnect
    redis_server.start()
    client = redis.Redis(port=redis_server.port)
    assert client.hlen("unacked") == 2  # given back after the visibility timeout, not lost


def test_register_routes_our_broker_urls_to_our_transports() -> None:
    broker_transport.register()
    assert isinstance(kombu.Connection("redis://127.0.0.1:1/0").transport, broker_transport.Transport)
    assert isinstance(kombu.Connection("rediss://127.0.0.1:1/0").transport, broker_transport.Transport)
    sentinel = kombu.Connection("sentinel://127.0.0.1:1/0").transport
    assert isinstance(sentinel, broker_transport.SentinelTransport)
    assert sentinel.Channel is broker_transport.SentinelChannel
    # The worker's log and Flower still name the URL's scheme, not a class path.
    assert kombu.Connection("redis://127.0.0.1:1/0").as_uri().startswith("redis://")


@pytest.mark.parametrize("kind", ["redis", "sentinel"])
def test_our_channel_reuses_one_client_per_pool_and_still_delivers(
    kind: str, redis_server: RedisServer, request: pytest.FixtureRequest
) -> None:
    broker = broker_for(kind, redis_server, request)
    conn = kombu.Connection(broker.url, transport=OURS[kind], transport_options=broker.transport_options)
    try:
        channel: Any = conn.default_channel
        first = channel._create_client()
        assert channel._create_client() is first  # publish, ack, QoS: one client, not one each
        assert first.connection_pool is channel.pool
        assert channel._create_client(asynchronous=True) is not first  # the event loop's own
        queue = kombu.Queue("vq-reuse", routing_key="vq-reuse")
        kombu.Producer(channel, serializer="json").publish({"n": 1}, routing_key=queue.name, declare=[queue])
        message = channel.basic_get(queue.name, no_ack=False)
        assert message is not None and message.decode() == {"n": 1}
        message.ack()
        assert redis.Redis(port=redis_server.port).hlen("unacked") == 0
        channel._disconnect_pools()  # what kombu does in a forked pool child
        fresh = channel._create_client()
        assert fresh is not first and fresh.connection_pool is channel.pool
    finally:
        conn.release()
