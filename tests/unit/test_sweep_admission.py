"""The sweep's admission (worker.sweep.admit_all) on fakeredis: whatever a lost wake-up,
a dead timer or an expired slot left waiting is admitted when quota is free."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from tests.unit.test_room import MODEL, NOW, PROVIDER, enqueue, record
from videoqueue import keys
from videoqueue.job import TASK_ADMIT, TASK_SUBMIT
from videoqueue.jobstore import JobStore
from videoqueue.settings import Settings
from worker.sweep import admit_all


class RecordingApp:
    """Celery's send_task, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], float | None]] = []

    def send_task(self, name: str, args: list[Any], countdown: float | None = None) -> None:
        self.sent.append((name, args, countdown))


@pytest.fixture
def client() -> Any:
    return fakeredis.FakeRedis(decode_responses=True)


def test_the_sweep_admits_what_no_event_admitted(client: Any) -> None:
    enqueue(client, [record(f"j{i}", i) for i in range(3)])
    # A dead worker's slot, its lease over: nobody freed it, nothing woke the room.
    client.zadd(keys.slot_key(PROVIDER, MODEL), {"dead": NOW - 1})
    app = RecordingApp()
    settings = Settings(_env_file=None, max_in_flight_per_model=2)
    assert admit_all(app, JobStore(client), settings) == 2  # type: ignore[arg-type]
    assert app.sent == [(TASK_SUBMIT, ["j0"], None), (TASK_SUBMIT, ["j1"], None)]
    assert client.sismember(keys.ROOMS, f"{PROVIDER}|{MODEL}")  # j2 still waits


def test_the_sweep_arms_the_timer_of_a_room_held_by_time(client: Any) -> None:
    enqueue(client, [record("j0", 0)])
    client.set(keys.backoff_key(PROVIDER, MODEL), 10**10)  # a back-off far ahead
    app = RecordingApp()
    assert admit_all(app, JobStore(client), Settings(_env_file=None)) == 0  # type: ignore[arg-type]
    [(name, args, countdown)] = app.sent
    assert (name, args) == (TASK_ADMIT, [PROVIDER, MODEL]) and countdown is not None and countdown > 0
    # One timer per model: the next sweep sends no second one.
    admit_all(app, JobStore(client), Settings(_env_file=None))  # type: ignore[arg-type]
    assert len(app.sent) == 1
