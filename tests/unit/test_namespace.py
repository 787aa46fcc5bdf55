"""Deployment namespaces: the `default` one keeps the names videoqueue always used, any other
prefixes every key and queue, and bad names are refused in one line."""

from __future__ import annotations

from decimal import Decimal

import fakeredis
import pytest

from producer.api import VideoQueue
from producer.request import VideoRequest
from tests.unit.helpers import seedance_request
from videoqueue import budget, jobstore, keys, namespace
from videoqueue import job as contract
from videoqueue.job import JobRecord
from videoqueue.queues import own_queues, route_task, task_queues
from videoqueue.settings import InvalidSettingsError, Settings, load_settings
from worker import render_history

REDIS = "redis://127.0.0.1:6379/0"


def every_name() -> list[str]:
    """Every key name (or key prefix) derived from the namespace."""
    return [
        keys.PREFIX,
        keys.job_key("j1"),
        keys.input_key("j1", "first_frame"),
        keys.INPUTS_RELEASE_INDEX,
        keys.client_key("c1"),
        keys.task_claim_key("byteplus", "t1"),
        keys.LEGACY_ALL_INDEX,
        keys.status_index("queued"),
        keys.DUE_INDEX,
        keys.PARKED_INDEX,
        keys.BUDGET_PREFIX,
        keys.budget_counter_key("day:2026-11-29"),
        keys.BUDGET_CAPS,
        keys.LEDGER_PREFIX,
        keys.LEDGER_INDEX,
        keys.ledger_entry_key("j1"),
        keys.LIMITS_PREFIX,
        keys.slot_key("byteplus", "m"),
        keys.creates_key("byteplus", "m"),
        keys.backoff_key("byteplus", "m"),
        keys.STATS_JOBS,
        keys.STATS_COST,
        keys.STATS_RENDER_SECONDS,
        keys.STATS_STORE_SECONDS,
        keys.WORKERS_PREFIX,
        keys.worker_key("w1@host"),
        keys.SWEEP_LOCK,
        render_history.history_key(
            JobRecord.model_construct(  # type: ignore[call-arg]
                provider="byteplus",
                model="m",
                request=seedance_request(
                    "p",
                    model="m",
                ),
            )
        ),
    ]


def test_default_namespace_keeps_todays_names() -> None:
    assert namespace.current() == "default"
    assert every_name() == [
        "vq:",
        "vq:job:j1",
        "vq:input:j1:first_frame",
        "vq:inputs:release",
        "vq:client:c1",
        "vq:task:byteplus:t1",
        "vq:jobs:all",
        "vq:jobs:status:queued",
        "vq:jobs:due",
        "vq:jobs:parked",
        "vq:budget:",
        "vq:budget:day:2026-11-29",
        "vq:budget-caps",
        "vq:ledger:",
        "vq:ledger:index",
        "vq:ledger:entry:j1",
        "vq:limits:",
        "vq:limits:slots:byteplus:m",
        "vq:limits:creates:byteplus:m",
        "vq:limits:backoff:byteplus:m",
        "vq:stats:jobs",
        "vq:stats:cost",
        "vq:stats:render_seconds",
        "vq:stats:store_seconds",
        "vq:workers:",
        "vq:workers:w1@host",
        "vq:sweep:lock",
        "vq:render:byteplus:m:720p:5:default",
    ]
    assert (contract.QUEUE_SUBMIT, contract.QUEUE_POLL, contract.QUEUE_STORE) == ("vq.submit", "vq.poll", "vq.store")
    assert namespace.queues() == ("vq.submit", "vq.poll", "vq.store")
    assert [q.name for q in task_queues(REDIS)] == ["vq.submit", "vq.poll", "vq.store", "vq.webhooks"]
    assert namespace.celery_names() == {"control_exchange": "celery", "event_exchange": "celeryev"}
    assert keys.broker_transport_options() == {}  # kombu's own `unacked` keys


def test_another_namespace_prefixes_every_key_and_queue() -> None:
    default_names = every_name()
    with namespace.using("demo"):
        names = every_name()
        assert all(name.startswith("vq@demo:") for name in names), names
        assert [name.removeprefix("vq@demo:") for name in names] == [n.removeprefix("vq:") for n in default_names]
        assert (contract.QUEUE_SUBMIT, contract.QUEUE_POLL, contract.QUEUE_STORE) == (
            "vq@demo.submit",
            "vq@demo.poll",
            "vq@demo.store",
        )
        assert namespace.queues() == ("vq@demo.submit", "vq@demo.poll", "vq@demo.store")
        assert [q.name for q in task_queues(REDIS)] == [*namespace.queues(), "vq@demo.webhooks"]
        assert route_task(contract.TASK_DELIVER, [], {}, {}) == {"queue": "vq@demo.webhooks"}
        assert route_task(contract.TASK_POLL, [], {}, {}) == {"queue": "vq@demo.poll"}
        assert route_task(contract.TASK_CANCEL, [], {}, {}) == {"queue": "vq@demo.submit"}
        assert namespace.celery_names()["control_exchange"] == "vq@demo"
        assert all(v.startswith("vq@demo:") for v in keys.broker_transport_options().values())
    assert every_name() == default_names  # back in `default`: nothing stayed behind


def test_no_namespace_name_is_a_prefix_of_another() -> None:
    # A pattern scan of one deployment (`vq:*`, `vq@a:*`) never matches another's keys.
    names = ["default", "a", "a-b", "ab", "test"]
    prefixes = [namespace.key_prefix(n) for n in names]
    for one in prefixes:
        assert [other for other in prefixes if other.startswith(one)] == [one]
    queue_names = [q for n in names for q in namespace.queues(n)]
    assert len(set(queue_names)) == len(queue_names)


def test_a_job_store_sees_only_its_own_namespace() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    with namespace.using("demo"):
        vq = VideoQueue(
            Settings(_env_file=None, vq_namespace="demo", check_image_urls=False), store=jobstore.JobStore(client)
        )
        prepared = vq.prepare(VideoRequest(prompt="a fox", client_job_id="order-1"))
        vq.store.create_many([prepared.record], budget=budget.BudgetPolicy(daily_usd=Decimal(10)))
        assert vq.store.get(prepared.record.id) is not None
    keys: list[str] = client.keys("*")  # type: ignore[assignment]
    assert keys and all(key.startswith("vq@demo:") for key in keys), keys
    store = jobstore.JobStore(client)  # the `default` namespace
    assert store.get(prepared.record.id) is None
    assert store.list(None, 10) == []


def test_a_video_queue_serves_its_settings_namespace() -> None:
    VideoQueue(Settings(_env_file=None, vq_namespace="blue"), store=jobstore.JobStore(fakeredis.FakeRedis()))
    assert namespace.current() == "blue" and contract.QUEUE_SUBMIT == "vq@blue.submit"
    namespace.adopt("green")  # reading the environment's settings later does not switch it
    assert namespace.current() == "blue"


@pytest.mark.parametrize("bad", ["", "Prod", "a_b", "a.b", "a:b", "a@b", "x" * 33, "two words", "é"])
def test_bad_names_are_refused(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="VQ_NAMESPACE must be 1-32 characters"):
        namespace.use(bad)
    assert namespace.current() == "default"
    if bad:  # an empty value means unset, for every setting
        monkeypatch.setenv("VQ_NAMESPACE", bad)
        with pytest.raises(InvalidSettingsError) as info:
            load_settings()
        assert "\n" not in str(info.value) and str(info.value).startswith("invalid setting VQ_NAMESPACE: must be 1-32")


def test_good_names_are_taken() -> None:
    for good in ("default", "demo", "prod-eu-1", "0", "x" * 32):
        assert Settings(_env_file=None, vq_namespace=good).vq_namespace == good


def test_worker_queues_map_to_the_workers_namespace() -> None:
    with namespace.using("blue"):
        # compose's WORKER_QUEUES (default names) mean this namespace's steps...
        assert own_queues(["vq.submit", "vq.poll"]) == (["vq@blue.submit", "vq@blue.poll"], [])
        assert own_queues(["vq@blue.store"]) == (["vq@blue.store"], [])
        # ...and another namespace's queue is never consumed.
        assert own_queues(["vq@green.submit", "celery"]) == ([], ["vq@green.submit", "celery"])
    assert own_queues(["vq.store"]) == (["vq.store"], [])


def test_a_key_names_its_namespace() -> None:
    assert keys.namespace_of("vq:budget:day:2026-11-29") == "default"
    assert keys.namespace_of("vq@demo:budget:day:2026-11-29") == "demo"
    with namespace.using("demo"):
        assert keys.namespace_of(keys.job_key("j1")) == "demo"
    for foreign in ("celery", "unacked", "vq@Demo:job:1", "vq@demo", "vq.submit", "bench:done"):
        assert keys.namespace_of(foreign) is None, foreign
