"""Waiting for a replica to hold a write that must survive a failover (Redis `WAIT`).

Redis replicates asynchronously: a primary that acknowledged a write and died before
sending it on takes the write with it, and Sentinel promotes a replica without it. For
most writes that is harmless (the recovery sweep finds the job where the replica left it
and sends its step again), but a few are worth a millisecond: a job created (its id has
been handed to the producer), a create's intent, recorded before the create is sent
(without it the job would be created a second time instead of looked up), a provider task
id recorded (else the job must find its task again through the provider's listing) and a
final move with its ledger entry. After those the job store calls
`ReplicaWait.after_write`.

WAIT counts the replicas that acknowledged the last write *of the connection it is sent
on*. The job store's write went out on whatever pooled connection its transaction took
(and a worker on a thread pool shares the pool), so the WAIT is sent with a write of its
own just before it, on one connection: the replication stream is one ordered log, so a
replica that acknowledged this later write holds the earlier one too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis

from videoqueue import keys

log = logging.getLogger("videoqueue.replicawait")

REPLICAS_CACHE_S = 5.0
"""How long the number of replicas (INFO replication) is reused: a replica that joins is
waited for within this long, one that leaves stops costing a WAIT timeout within this long
(once the primary has noticed it gone)."""

MARK_TTL_S = 60

DEFAULT_TIMEOUT_MS = 500
"""REDIS_REPLICA_WAIT_MS's default: a replica on the same network acknowledges in about a
millisecond; 500 ms covers a busy one without holding a step long when it is gone."""


class ReplicaWait:
    """`after_write` waits up to `timeout_ms` for one replica to hold the writes made so far,
    when the primary has replicas; `timeout_ms` 0 never waits."""

    def __init__(
        self,
        client: redis.Redis,
        timeout_ms: int,
        *,
        cache_s: float = REPLICAS_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.timeout_ms = timeout_ms
        self.cache_s = cache_s
        self._clock = clock
        self._replicas: int | None = None
        self._read_at = 0.0

    def replicas(self) -> int:
        """The replicas connected to the primary (INFO replication `connected_slaves`),
        read at most once per `cache_s`; 0 when the server does not say (a Redis that
        disabled INFO, a managed one that hides it: nothing to wait for that we could see)."""
        now = self._clock()
        if self._replicas is None or now - self._read_at >= self.cache_s:
            try:
                info = self.client.info("replication")
            except redis.ResponseError:
                info = {}
            self._replicas = int(info.get("connected_slaves", 0)) if isinstance(info, dict) else 0
            self._read_at = now
        return self._replicas

    def after_write(self, what: str, job_id: str) -> int | None:
        """After the write of `what` (a short label: "create", "task id", "final move") for
        `job_id`: None when no WAIT was sent (waiting off, or no replica), else how many
        replicas acknowledged within the timeout. Raises redis.RedisError when the primary
        cannot be reached: whether the write survived is then unknown, and the caller's
        step, idempotent, runs again and finds out."""
        if self.timeout_ms <= 0 or self.replicas() == 0:
            return None
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.REPLICA_WAIT_MARK, job_id, ex=MARK_TTL_S)
        pipe.execute_command("WAIT", 1, self.timeout_ms)  # type: ignore[no-untyped-call]
        try:
            acked = int(pipe.execute()[-1])
        except redis.ResponseError as exc:
            # A managed Redis may rename or forbid WAIT: then there is nothing to wait with,
            # and the sweep covers what a failover loses, as without replicas.
            log.warning("the server refuses WAIT: not waiting for replicas", extra={"reason": str(exc)})
            self.timeout_ms = 0
            return None
        if acked < 1:
            # Not fatal: the write is on the primary, and only a failover before the replica
            # catches up loses it. Then the job is found where the replica left it: the
            # recovery sweep re-sends its step (videoqueue.recovery); a create whose task id
            # was lost finds its task at the provider by the job's own id instead of creating
            # another (worker/steps/submit.py); a final move lost with its ledger entry is
            # made again, once, by the store step it re-sends.
            log.warning(
                "no replica confirmed a write within the timeout",
                extra={"job_id": job_id, "write": what, "timeout_ms": self.timeout_ms},
            )
            self._replicas = None  # look again: the replica may be gone
        return acked
