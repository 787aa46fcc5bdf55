"""ModelArk's callbacks: a task created with `callback_url` is POSTed there (the body of a
status call) each time its status changes.

The scheduler is lazy (it applies transitions when asked, simulator/scheduler.py), so a
background task asks it at the time of each next start, finish or expiry, and sends what
changed: after `callback_delay_s`, none with probability `callback_loss_rate`, twice with
probability `callback_duplicate_rate` (the second a moment after the first). Each POST is a
task of its own on the event loop: a slow or dead receiver never holds up the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette

from simulator.ark import ArkSim

log = logging.getLogger("simulator")

# The longest the sender sleeps when nothing is due: a config change or a create between
# two events is seen this late at most.
_IDLE_S = 0.5
# The gap between a callback and its duplicate.
_DUPLICATE_GAP_S = 0.05
_POST_TIMEOUT_S = 10.0


class CallbackSender:
    """Sends the callbacks of an ArkSim's tasks from a background task (`run`)."""

    def __init__(self, sim: ArkSim) -> None:
        self.sim = sim
        self.rng = random.Random(sim.config.seed)
        self.wake = asyncio.Event()
        # A create (or a request bringing the tasks up to date) that queues a callback wakes
        # the sender at once, not at its next timer.
        sim.callback_queued = self.wake.set
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Until cancelled: bring the tasks up to date at each event time and send the
        callbacks queued meanwhile."""
        # httpx logs each request's URL at INFO: a callback URL carries the receiver's token.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        async with httpx.AsyncClient(timeout=_POST_TIMEOUT_S) as client:
            while True:
                now = self.sim.advance()
                self._dispatch(client)
                next_at = self.sim.next_event_at()
                wait = _IDLE_S if next_at is None else min(_IDLE_S, max(0.0, next_at - now))
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=wait)

    def _dispatch(self, client: httpx.AsyncClient) -> None:
        outbox, self.sim.outbox = self.sim.outbox, []
        config = self.sim.config
        for url, body in outbox:
            if config.callback_loss_rate and self.rng.random() < config.callback_loss_rate:
                self.sim.counters["callbacks_lost_total"] += 1
                continue
            copies = 2 if config.callback_duplicate_rate and self.rng.random() < config.callback_duplicate_rate else 1
            for copy in range(copies):
                delay = config.callback_delay_s + copy * _DUPLICATE_GAP_S
                task = asyncio.create_task(self._post(client, url, body, delay))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _post(self, client: httpx.AsyncClient, url: str, body: dict[str, Any], delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            response = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            self.sim.counters["callbacks_failed_total"] += 1
            log.warning("callback of task %s not delivered: %s", body.get("id"), type(exc).__name__)
            return
        self.sim.counters["callbacks_sent_total"] += 1
        if response.status_code >= 300:
            # The path carries the receiver's token: only the task and the status are logged.
            log.warning("callback of task %s answered %s", body.get("id"), response.status_code)


@contextlib.asynccontextmanager
async def sending_callbacks(app: Starlette) -> AsyncIterator[None]:
    """The app's lifespan: the callback sender runs while the app serves."""
    sender = CallbackSender(app.state.sim)
    app.state.callbacks = sender
    running = asyncio.create_task(sender.run())
    try:
        yield
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
