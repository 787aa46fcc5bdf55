"""Who works for this namespace, and how each worker is configured: every worker keeps a
small record in Redis (`keys.worker_key`, a TTL refreshed by a heartbeat
thread) with its queues and its provider and storage fingerprints; `videoqueue doctor`
lists them and compares them with the shell's.

A registry in the job store's Redis rather than Celery's inspect broadcast: it is under the
namespace's key prefix, so it lists that deployment's workers only (the `default`
namespace keeps Celery's shared `celery` control exchange, which any Celery app on the
broker answers), it carries the fingerprints without a custom remote-control command, it
works whatever the broker (RabbitMQ too), and a worker that died leaves it within one TTL.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.exceptions import RedisError

from videoqueue import keys, redisconn
from videoqueue.endpoints import Endpoint
from videoqueue.job import utcnow
from videoqueue.settings import Settings
from worker.providers import provider_endpoint, provider_names
from worker.storage import storage_endpoint

log = logging.getLogger("videoqueue.registry")

HEARTBEAT_S = 20.0
TTL_S = 60


@dataclass(frozen=True)
class WorkerEntry:
    """One registered worker: its node name, queues, and where it sends provider calls and
    stores videos (`{"byteplus": {"host": ..., "fingerprint": ...}, ...}`; never a secret)."""

    node: str
    queues: list[str]
    providers: dict[str, dict[str, str]]
    storage: dict[str, str]
    seen_at: str = ""
    pid: int = 0
    host: str = field(default_factory=socket.gethostname)

    def endpoint(self, kind: str) -> Endpoint | None:
        """The worker's endpoint for a provider, or `storage`."""
        data = self.storage if kind == "storage" else self.providers.get(kind)
        if not data:
            return None
        return Endpoint(kind, data.get("host", "-"), data.get("fingerprint", "-"))


def _endpoint_dict(endpoint: Endpoint) -> dict[str, str]:
    return {"host": endpoint.host, "fingerprint": endpoint.fingerprint}


def entry_for(node: str, queues: list[str], settings: Settings) -> WorkerEntry:
    """What a worker configured with `settings` registers."""
    return WorkerEntry(
        node=node,
        queues=sorted(queues),
        providers={name: _endpoint_dict(provider_endpoint(name, settings)) for name in provider_names()},
        storage=_endpoint_dict(storage_endpoint(settings)),
        pid=os.getpid(),
    )


def register(client: redis.Redis, entry: WorkerEntry, ttl_s: int = TTL_S) -> None:
    """Write (or refresh) the worker's record for `ttl_s` seconds."""
    data = asdict(entry) | {"seen_at": utcnow().isoformat(timespec="seconds")}
    client.set(keys.worker_key(entry.node), json.dumps(data), ex=ttl_s)


def unregister(client: redis.Redis, node: str) -> None:
    """Remove the worker's record (at shutdown)."""
    client.delete(keys.worker_key(node))


def registered(client: redis.Redis) -> list[WorkerEntry]:
    """The workers registered in the current namespace, by node name."""
    entries: list[WorkerEntry] = []
    for key in sorted(client.scan_iter(f"{keys.WORKERS_PREFIX}*", count=500)):
        raw: Any = client.get(key)
        if raw is None:
            continue
        try:
            data = json.loads(raw)
            entries.append(WorkerEntry(**data))
        except (ValueError, TypeError):
            continue  # a record from another version: not ours to read
    return entries


class Heartbeat:
    """Keeps one worker's record fresh from a daemon thread until `stop()`."""

    def __init__(self, node: str, queues: list[str], settings: Settings) -> None:
        self.node = node
        self._client = redisconn.connect_settings(settings)
        self._entry = entry_for(node, queues, settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="videoqueue-registry", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                register(self._client, self._entry)
            except RedisError as exc:
                log.warning("worker registry not refreshed: Redis unavailable", extra={"reason": str(exc)})

    def start(self) -> Heartbeat:
        """Register now (so the worker is listed once it says it is ready) and every
        HEARTBEAT_S after."""
        try:
            register(self._client, self._entry)
        except RedisError as exc:
            log.warning("worker not registered: Redis unavailable", extra={"reason": str(exc)})
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing and remove the record (else its TTL does)."""
        self._stop.set()
        with contextlib.suppress(RedisError):
            unregister(self._client, self.node)


def start_heartbeat(node: str, queues: list[str], settings: Settings) -> Heartbeat:
    """Register worker `node` and keep its record fresh until the returned heartbeat stops."""
    return Heartbeat(node, queues, settings).start()
