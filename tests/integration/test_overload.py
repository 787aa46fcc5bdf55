"""Overload: more jobs than a model's quota, through the waiting room (videoqueue.room).

Real Redis, real `celery worker` processes and the simulator over HTTP; nothing of ours is
mocked. Most tests cap a model at MAX_IN_FLIGHT_PER_MODEL=1 and fill that one slot with a
blocker: a job whose provider task the simulator holds queued (`[sim:hold]`) until the test
cancels it. Everything enqueued meanwhile waits, so what the tests look at (the order of
creates at the provider, the broker's messages, a job's place in line) does not depend on
how fast anything runs; timeouts are safety limits only.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from producer import JobRecord, JobStatus, VideoQueue, VideoRequest
from tests.integration.conftest import SIM_KEY, UNACKED, Stack
from tests.integration.helpers import wait_for
from videoqueue import keys, namespace
from videoqueue.budget import usage
from videoqueue.jobstore import JobStore
from videoqueue.limits import ProviderLimits
from videoqueue.room import WaitingRoom

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("videoqueue"))

ONE_SLOT = "1"  # MAX_IN_FLIGHT_PER_MODEL of most tests
RENDER_S = 0.3  # the simulator's render time: short, the tests count and order, not time
FINISH_TIMEOUT_S = 120.0


# --------------------------------------------------------------------------- helpers


def hold_the_slot(vq: VideoQueue) -> JobRecord:
    """Enqueue the blocker and wait until it holds its model's one slot: created at the
    provider, which keeps it queued (`[sim:hold]`) until it is cancelled."""
    blocker = vq.submit(VideoRequest(prompt="blocker [sim:hold]"))
    wait_for(lambda: vq.get(blocker.id).status is JobStatus.RUNNING, 60, "the blocker at the provider")
    return vq.get(blocker.id)


def wait_parked(store: JobStore, job_ids: Iterable[str], timeout: float = 60) -> None:
    """Wait until the submit of each job ran and left it waiting in its room: parked until
    its deadline, no message on its way."""
    ids = list(job_ids)
    what = f"{len(ids)} jobs parked (a job with a message on its way is not)"
    wait_for(lambda: all(store.parked_at(j) is not None for j in ids), timeout, what)


def created_order(stack: Stack) -> list[str]:
    """The ids of the provider's tasks in the order it created them (its listing is newest
    first)."""
    response = httpx.get(
        f"{stack.simulator.ark_base_url}/contents/generations/tasks",
        params={"page_size": 500},
        headers={"Authorization": f"Bearer {SIM_KEY}"},
        timeout=5,
    )
    response.raise_for_status()
    return [item["id"] for item in reversed(response.json()["items"])]


def jobs_in_create_order(stack: Stack, jobs: Sequence[JobRecord]) -> list[str]:
    """The jobs' ids in the order the provider created their tasks (a job it never created
    is left out)."""
    by_task = {j.provider_task_id: j.id for j in jobs if j.provider_task_id}
    return [by_task[t] for t in created_order(stack) if t in by_task]


def room_of(stack: Stack, vq: VideoQueue) -> WaitingRoom:
    return WaitingRoom(stack.redis, ProviderLimits.from_settings(stack.redis, vq.settings))


def broker_messages(stack: Stack) -> list[tuple[str, str, list[Any]]]:
    """Every message the namespace's queues hold, waiting (in a queue) or delivered and not
    yet acknowledged (kombu's unacked hash, where a Redis worker keeps its countdown
    messages): (where, task name, args)."""
    found: list[tuple[str, str, list[Any]]] = []
    for queue in namespace.queues():
        # kombu's Redis transport keeps each priority of a queue in a list of its own.
        for name in stack.keys(f"{queue}*"):
            if stack.redis.type(name) != "list":
                continue
            for raw in stack.redis.lrange(name, 0, -1):  # type: ignore[union-attr]
                found.append((name, *_task_and_args(json.loads(raw))))
    held: list[str] = stack.redis.hvals(UNACKED)  # type: ignore[assignment]
    for raw in held:
        message, _exchange, _routing_key = json.loads(raw)
        found.append((UNACKED, *_task_and_args(message)))
    return found


def _task_and_args(message: dict[str, Any]) -> tuple[str, list[Any]]:
    body = json.loads(base64.b64decode(message["body"]))
    return message["headers"]["task"], list(body[0])


def final(vq: VideoQueue, job_ids: Sequence[str], timeout: float = FINISH_TIMEOUT_S) -> dict[str, JobRecord]:
    return {j.id: j for j in vq.wait(list(job_ids), timeout=timeout)}


# --------------------------------------------------------------------------- order


def test_jobs_start_by_priority_then_tenant_weight_then_enqueue_order(local_stack: Stack) -> None:
    local_stack.simulator.configure(latency=RENDER_S)
    # alpha weighs 2, beta (not listed) 1.
    local_stack.start_worker(MAX_IN_FLIGHT_PER_MODEL=ONE_SLOT, TENANT_WEIGHTS='{"alpha": 2}')
    vq = local_stack.queue()
    blocker = hold_the_slot(vq)

    # Enqueued in this order, in one batch, while the slot is taken: all of them wait.
    names = ["low", "b1", "b2", "a1", "a2", "a3", "a4", "u1", "u2"]
    spec = {
        "low": (0, "alpha"),
        **{f"b{i}": (5, "beta") for i in (1, 2)},
        **{f"a{i}": (5, "alpha") for i in (1, 2, 3, 4)},
        **{f"u{i}": (9, "beta") for i in (1, 2)},
    }
    jobs = vq.submit_many([VideoRequest(prompt=f"order {n}", priority=spec[n][0], tenant=spec[n][1]) for n in names])
    name_of = {j.id: n for j, n in zip(jobs, names, strict=True)}
    wait_parked(vq.store, name_of)
    assert created_order(local_stack) == [blocker.provider_task_id]  # nobody jumped the slot
    vq.cancel(blocker.id)

    done = final(vq, list(name_of))

    assert {n: done[j].status for j, n in name_of.items()} == dict.fromkeys(names, JobStatus.SUCCEEDED)
    # Priority 9 first, in enqueue order; then priority 5 shared 2:1 between alpha and beta
    # (virtual start times: both tenants join at 0 and alpha, sorting first, wins ties;
    # alpha advances by 1/2 per job, beta by 1), each tenant's jobs in enqueue order;
    # priority 0 last although it was enqueued first. FIFO would give b1 b2 a1..., equal
    # weights a1 b1 a2 b2 ...
    expected = ["u1", "u2", "a1", "b1", "a2", "a3", "b2", "a4", "low"]
    assert [name_of[j] for j in jobs_in_create_order(local_stack, list(done.values()))] == expected
    stats = local_stack.simulator.stats()
    assert stats["creates_total"] == len(names) + 1
    assert stats["max_in_flight"] == 1


# --------------------------------------------------------------------------- cancel


def test_a_job_cancelled_while_waiting_ends_at_once_frees_its_reservation_and_never_reaches_the_provider(
    local_stack: Stack,
) -> None:
    local_stack.simulator.configure(latency=RENDER_S)
    local_stack.start_worker(MAX_IN_FLIGHT_PER_MODEL=ONE_SLOT)
    vq = local_stack.queue()
    blocker = hold_the_slot(vq)
    day = keys.budget_counter_key(f"day:{blocker.created_at.date().isoformat()}")
    day_reserved_before = usage(local_stack.redis, day)[0]
    first, victim, last = vq.submit_many(
        [
            VideoRequest(prompt="waits first"),
            VideoRequest(prompt="cancelled while waiting", tags=("cancel-victim",)),
            VideoRequest(prompt="waits last"),
        ]
    )
    wait_parked(vq.store, [first.id, victim.id, last.id])
    tag = keys.budget_counter_key("tag:cancel-victim")
    assert usage(local_stack.redis, tag) == (victim.cost_estimate_usd, Decimal(0))
    estimates = first.cost_estimate_usd + victim.cost_estimate_usd + last.cost_estimate_usd
    assert usage(local_stack.redis, day)[0] == day_reserved_before + estimates
    room = room_of(local_stack, vq)
    assert room.snapshot(victim.provider, victim.model).total_waiting == 3

    cancelled = vq.cancel(victim.id)

    assert cancelled.status is JobStatus.CANCELLED  # at once, no worker involved
    assert vq.get(victim.id).status is JobStatus.CANCELLED
    assert usage(local_stack.redis, tag) == (Decimal(0), Decimal(0))  # reservation released, nothing spent
    assert usage(local_stack.redis, day)[0] == day_reserved_before + estimates - victim.cost_estimate_usd
    assert room.snapshot(victim.provider, victim.model).total_waiting == 2
    # Nothing left to wake it: not parked, not due, no slot.
    assert vq.store.parked_at(victim.id) is None and vq.store.due_at(victim.id) is None
    assert local_stack.redis.zscore(keys.slot_key(victim.provider, victim.model), victim.id) is None

    vq.cancel(blocker.id)
    done = final(vq, [first.id, last.id])

    assert [j.status for j in done.values()] == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]
    assert vq.get(victim.id).status is JobStatus.CANCELLED
    stats = local_stack.simulator.stats()
    assert "cancelled while waiting" not in stats["creates_by_prompt"]
    assert stats["creates_total"] == 3  # the blocker and the two others
    assert jobs_in_create_order(local_stack, [vq.get(blocker.id), *done.values()]) == [blocker.id, first.id, last.id]
    assert usage(local_stack.redis, tag) == (Decimal(0), Decimal(0))
    assert room.snapshot(victim.provider, victim.model).total_waiting == 0


# --------------------------------------------------------------------------- limits


def test_raising_the_in_flight_limit_admits_waiting_jobs_without_a_restart(local_stack: Stack) -> None:
    # Renders of 4 s: once admitted, the three jobs the raise lets in are at the provider
    # together (their creates are milliseconds apart), next to the blocker.
    local_stack.simulator.configure(latency=4.0)
    worker = local_stack.start_worker(MAX_IN_FLIGHT_PER_MODEL=ONE_SLOT)
    pid = worker.proc.pid
    vq = local_stack.queue()
    blocker = hold_the_slot(vq)
    jobs = vq.submit_many([VideoRequest(prompt=f"raised {i}") for i in range(5)])
    ids = [j.id for j in jobs]
    wait_parked(vq.store, ids)
    model = jobs[0].model
    room = room_of(local_stack, vq)
    assert room.snapshot("byteplus", model).total_waiting == 5
    assert local_stack.simulator.stats()["creates_total"] == 1  # the cap binds: only the blocker

    raised = subprocess.run(
        [CLI, "limits", "set", model, "--max-in-flight", "4"],
        env=local_stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert raised.returncode == 0, raised.stderr

    wait_for(lambda: local_stack.simulator.stats()["max_in_flight"] >= 4, 60, "4 tasks in flight at the provider")
    assert room.snapshot("byteplus", model).total_waiting == 2  # blocker + 3 = the new cap
    vq.cancel(blocker.id)
    done = final(vq, ids)

    assert [j.status for j in done.values()] == [JobStatus.SUCCEEDED] * 5
    stats = local_stack.simulator.stats()
    assert stats["max_in_flight"] == 4  # the new cap, and never more
    assert stats["creates_total"] == 6
    assert worker.alive() and worker.proc.pid == pid
    assert worker.log_text().count(" ready.") == 1  # never restarted
    assert local_stack.redis.zcard(keys.slot_key("byteplus", model)) == 0


# --------------------------------------------------------------------------- a killed worker

# The schedule of recovery, sped up so that the run takes seconds, not minutes. Each value
# keeps the order the defaults have (slot lease, then submit lease plus the stall allowance):
# - SLOT_LEASE_S=6 (default 900): the slots the dead worker held free themselves 6 s after
#   it last renewed them; polls 0.5-2 s apart (SUITE_TUNING) renew live ones well within it;
# - SWEEP_INTERVAL_S=2 (default 60): the sweep, which admits into the freed slots, runs often;
# - SUBMIT_LEASE_S=5, RECOVER_AFTER_S=5 (defaults 180, 60): a create cut off by the kill is
#   taken back 5 s + max(3 x 5 s, 5 s) = 20 s after it began, well after the slots freed.
KILL_SCHEDULE = {
    "SLOT_LEASE_S": "6",
    "SWEEP_INTERVAL_S": "2",
    "SUBMIT_LEASE_S": "5",
    "RECOVER_AFTER_S": "5",
    "PROVIDER_TIMEOUT_S": "10",
}


def test_a_worker_killed_right_after_admitting_jobs_loses_none_and_its_slots_free_by_their_lease(
    local_stack: Stack,
) -> None:
    local_stack.simulator.configure(latency=RENDER_S)
    local_stack.extra_env.update(KILL_SCHEDULE)  # for both workers
    doomed = local_stack.start_worker(concurrency=2, MAX_IN_FLIGHT_PER_MODEL="2")
    vq = local_stack.queue()
    # The first two are admitted at once; the provider takes 4.5 s to answer their creates
    # (the task exists from the start), so the worker dies holding both admitted submits.
    prompts = ["killed 1 [sim:slowcreate=4.5]", "killed 2 [sim:slowcreate=4.5]", "waits 3", "waits 4", "waits 5"]
    jobs = vq.submit_many([VideoRequest(prompt=p) for p in prompts])
    ids = [j.id for j in jobs]
    first_two = ids[:2]
    model = jobs[0].model
    slots = keys.slot_key("byteplus", model)

    def in_the_create_calls() -> bool:
        records = vq.store.get_many(first_two)
        return local_stack.simulator.stats()["creates_total"] == 2 and all(
            r is not None and r.status is JobStatus.SUBMITTING and r.submit_intent_at is not None for r in records
        )

    wait_for(in_the_create_calls, 30, "both admitted creates in flight")
    doomed.kill()
    assert sorted(local_stack.redis.zrange(slots, 0, -1)) == sorted(first_two)  # type: ignore[arg-type]
    # The others wait: in the room, or with their first submit held by the dead worker
    # (the sweep re-sends it: their due time passed).
    assert [r.status for r in vq.store.get_many(ids[2:]) if r is not None] == [JobStatus.QUEUED] * 3
    local_stack.start_worker(concurrency=2, MAX_IN_FLIGHT_PER_MODEL="2")

    # The dead worker's slots free themselves when their lease ends: two waiting jobs reach
    # the provider while a cut-off create is still unresolved (the sweep takes a cut-off
    # create back 20 s after it began).
    wait_for(lambda: local_stack.simulator.stats()["creates_total"] >= 4, 60, "two waiting jobs created")
    unresolved = [
        r.id
        for r in vq.store.get_many(first_two)
        if r and (r.status, r.provider_task_id) == (JobStatus.SUBMITTING, None)
    ]
    assert unresolved, "the waiting jobs were admitted only after the killed jobs were resolved"

    done = final(vq, ids)

    assert {j: r.status for j, r in done.items()} == dict.fromkeys(ids, JobStatus.SUCCEEDED)
    stats = local_stack.simulator.stats()
    assert {p: stats["creates_by_prompt"].get(p, 0) for p in prompts} == dict.fromkeys(prompts, 1)
    assert stats["creates_total"] == 5
    assert local_stack.redis.zcard(slots) == 0
    assert room_of(local_stack, vq).snapshot("byteplus", model).total_waiting == 0
    assert all(done[j].recoveries >= 1 for j in unresolved), {j: done[j].recoveries for j in first_two}


# --------------------------------------------------------------------------- the broker


def test_the_broker_carries_no_message_for_a_waiting_job(local_stack: Stack) -> None:
    local_stack.simulator.configure(latency=RENDER_S)
    local_stack.start_worker(MAX_IN_FLIGHT_PER_MODEL=ONE_SLOT)
    vq = local_stack.queue()
    blocker = hold_the_slot(vq)
    jobs = vq.submit_many([VideoRequest(prompt=f"waits quietly {i}") for i in range(5)])
    waiting = {j.id for j in jobs}
    wait_parked(vq.store, waiting)
    # A submit is acknowledged just after it parked its job.
    wait_for(lambda: not [m for m in broker_messages(local_stack) if m[1] == "videoqueue.submit"], 30, "submits acked")

    # Look several times over a few of the blocker's polls (0.5-2 s apart).
    for _ in range(6):
        found = broker_messages(local_stack)
        # One park timer for the deployment (their deadlines), not a message per job.
        timers = [m for m in found if m[1] == "videoqueue.unpark"]
        assert len(timers) <= 1, found
        messages = [m for m in found if m[1] != "videoqueue.unpark"]
        about = [(task, args[0]) for _where, task, args in messages]
        assert not [m for m in about if m[1] in waiting], messages
        # Only the blocker's poll chain: at most its next poll and the one running now.
        assert {task for task, _job in about} <= {"videoqueue.poll"}, messages
        assert {job for _task, job in about} <= {blocker.id}, messages
        assert len(messages) <= 2, messages
        time.sleep(0.7)
    for job in vq.get_many(list(waiting)):
        assert job.status is JobStatus.QUEUED
        # Parked until its deadline: the only time anything is sent for it unless admitted.
        assert vq.store.parked_at(job.id) == pytest.approx(job.deadline_at.timestamp())

    vq.cancel(blocker.id)
    done = final(vq, list(waiting))
    assert [j.status for j in done.values()] == [JobStatus.SUCCEEDED] * 5


# --------------------------------------------------------------------------- standing


def test_waiting_jobs_show_their_place_in_line_and_why(local_stack: Stack) -> None:
    local_stack.simulator.configure(latency=RENDER_S)
    local_stack.start_worker(MAX_IN_FLIGHT_PER_MODEL=ONE_SLOT)
    # The producer keeps the default limits (100 in flight), unlike the worker (1): it
    # counts with the limits the worker's admissions applied.
    vq = local_stack.queue()
    blocker = hold_the_slot(vq)
    jobs = vq.submit_many([VideoRequest(prompt=f"in line {i}") for i in range(4)])
    ids = [j.id for j in jobs]
    wait_parked(vq.store, ids)  # each job enters the room when its first submit runs

    seen = vq.get_many(ids)
    assert [j.queue_position for j in seen] == [1, 2, 3, 4]
    assert [j.waiting_reason for j in seen] == ["in_flight_limit"] * 4
    # No render of the model finished yet: no estimate.
    assert [j.estimated_start_at for j in seen] == [None] * 4
    running = vq.get(blocker.id)
    assert (running.queue_position, running.waiting_reason) == (None, None)

    urgent = vq.submit(VideoRequest(prompt="in line urgent", priority=9))
    wait_parked(vq.store, [urgent.id])
    seen = vq.get_many([urgent.id, *ids])
    assert [j.queue_position for j in seen] == [1, 2, 3, 4, 5]
    assert {j.waiting_reason for j in seen} == {"in_flight_limit"}
    listed = {j.id: j.queue_position for j in vq.list(JobStatus.QUEUED)}
    assert listed == {urgent.id: 1, **{j: i for i, j in enumerate(ids, start=2)}}

    # The places shown are the order the jobs then start in.
    wait_parked(vq.store, [urgent.id, *ids])
    vq.cancel(blocker.id)
    done = final(vq, [urgent.id, *ids])
    assert jobs_in_create_order(local_stack, list(done.values())) == [urgent.id, *ids]
    after = vq.get_many(ids)
    assert [(j.queue_position, j.waiting_reason) for j in after] == [(None, None)] * 4
    assert all(j.status is JobStatus.SUCCEEDED for j in after)
    # A model with a finished render gets an estimate: the next waiting job's start.
    blocker2 = hold_the_slot(vq)
    late = vq.submit(VideoRequest(prompt="in line after renders"))
    wait_parked(vq.store, [late.id])
    estimate = vq.get(late.id).estimated_start_at
    assert estimate is not None and estimate >= late.created_at
    vq.cancel(late.id)
    vq.cancel(blocker2.id)
