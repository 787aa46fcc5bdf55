"""The job lifecycle (submit, poll, store, cancel) against a scripted provider, a fake Redis,
a local storage folder and a dispatcher that records what would be sent."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from producer.api import VideoQueue
from producer.request import VideoRequest
from simulator.clips import Shape, clip
from videoqueue import keys
from videoqueue.catalog import load_catalog
from videoqueue.job import ErrorCode, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from videoqueue.ledger import Ledger, LedgerEntry
from videoqueue.limits import ModelLimits, ProviderLimits
from videoqueue.room import WaitingRoom
from videoqueue.settings import Settings
from worker.inputs import StorageInputs
from worker.pipeline import Pipeline, StoreRetry
from worker.probe import Probe
from worker.providers.base import ImageInput, Lookup, ProviderError, TaskState, TaskStatus, VideoStream
from worker.storage import Storage
from worker.storage.local import LocalStorage

# A real 5 s clip (the requests' default duration): the store step reads it with PyAV.
VIDEO = clip(Shape(5, "16:9"), 0)
MODEL = "seedance-1-5-pro-251215"  # $2.4 per million tokens with audio, half that on flex


@dataclass
class FakeProvider:
    """A Provider whose answers are scripted and whose calls are recorded."""

    name: str = "byteplus"
    calls: list[tuple[str, Any]] = field(default_factory=list)
    create_results: list[str | ProviderError] = field(default_factory=list)
    get_results: list[TaskState | ProviderError] = field(default_factory=list)
    cancel_results: list[bool | ProviderError] = field(default_factory=list)
    found: str | None = None
    # More tasks the listing shows as matching (identical requests), and whether the
    # listing could be read whole (False: the provider cannot tell, as Vertex AI).
    also_found: tuple[str, ...] = ()
    lookup_complete: bool = True
    find_errors: list[ProviderError] = field(default_factory=list)
    video: bytes = field(default=VIDEO, repr=False)
    on_create: Callable[[], None] | None = None
    created: int = 0
    images: dict[str, ImageInput] = field(default_factory=dict)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def create(self, job: JobRecord, images: dict[str, ImageInput]) -> str:
        self.calls.append(("create", job.id))
        self.images = images
        if self.on_create is not None:
            hook, self.on_create = self.on_create, None
            hook()
        result = self.create_results.pop(0) if self.create_results else None
        if isinstance(result, ProviderError):
            raise result
        self.created += 1
        return result or f"task-{self.created}"

    def find_created(self, job: JobRecord, since: datetime) -> Lookup:
        self.calls.append(("find_created", since))
        if self.find_errors:
            raise self.find_errors.pop(0)
        found = (self.found,) if self.found else ()
        return Lookup(candidates=found + self.also_found, complete=self.lookup_complete)

    def get(self, job: JobRecord) -> TaskState:
        self.calls.append(("get", job.provider_task_id))
        result = self.get_results.pop(0)
        if isinstance(result, ProviderError):
            raise result
        return result

    def cancel(self, task_id: str) -> bool:
        self.calls.append(("cancel", task_id))
        result = self.cancel_results.pop(0) if self.cancel_results else True
        if isinstance(result, ProviderError):
            raise result
        return result

    def open_video(self, job: JobRecord) -> AbstractContextManager[VideoStream]:
        self.calls.append(("open_video", job.id))
        data = self.video

        @contextmanager
        def opened() -> Iterator[VideoStream]:
            yield VideoStream(chunks=iter([data[i : i + 100] for i in range(0, len(data), 100)]), size=len(data))

        return opened()


@dataclass
class RecordingDispatcher:
    """Records (kind, job_id, seq, countdown) instead of sending messages."""

    sent: list[tuple[str, str, int | None, float]] = field(default_factory=list)

    def submit(self, job_id: str, countdown: float) -> None:
        self.sent.append(("submit", job_id, None, countdown))

    def poll(self, job_id: str, seq: int, countdown: float) -> None:
        self.sent.append(("poll", job_id, seq, countdown))

    def store(self, job_id: str, countdown: float) -> None:
        self.sent.append(("store", job_id, None, countdown))

    def take(self) -> list[tuple[str, str, int | None, float]]:
        sent, self.sent = self.sent, []
        return sent


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "poll_initial_s": 5,
        "check_image_urls": False,
        "poll_min_s": 2,
        "poll_max_s": 60,
        "poll_backoff": 1.5,
        "poll_jitter": 0.0,
        "retry_base_s": 2,
        "retry_max_s": 300,
        "submit_max_attempts": 3,
        "poll_max_errors": 3,
        "store_max_attempts": 3,
        "submit_lease_s": 180,
        "job_deadline_s": 3600,
        # These tests read every countdown a step schedules as a message: no horizon nearer
        # than the broker's bound parks them (test_parking.py tests the parking).
        "countdown_horizon_s": 1e9,
    }
    values.update(overrides)
    return Settings(**values)


class Env:
    """One pipeline and everything around it."""

    def __init__(self, tmp_path: Path, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(fakeredis.FakeRedis(decode_responses=True))
        self.catalog = load_catalog()
        self.provider = FakeProvider()
        self.dispatch = RecordingDispatcher()
        self.root = tmp_path / "videos"
        self.storage: Storage = LocalStorage(self.root)
        self.pipeline = Pipeline(
            settings=settings,
            store=self.store,
            catalog=self.catalog,
            providers=self._provider,
            storage=lambda: self.storage,
            dispatch=self.dispatch,
            rng=random.Random(42),
        )

    def _provider(self, name: str) -> FakeProvider:
        assert name == "byteplus"
        return self.provider

    def use_room(self, limits: ProviderLimits) -> WaitingRoom:
        """Give the pipeline a waiting room with `limits` on this env's Redis (jobs then
        wait for quota), and return it."""
        room = WaitingRoom(self.store.redis, limits)
        self.pipeline = Pipeline(
            settings=self.settings,
            store=self.store,
            catalog=self.catalog,
            providers=self._provider,
            storage=lambda: self.storage,
            dispatch=self.dispatch,
            room=room,
            history=self.pipeline.history,
            rng=random.Random(42),
        )
        return room

    def new_job(self, *, service_tier: str = "default", **changes: Any) -> str:
        vq = VideoQueue(self.settings, store=self.store, catalog=self.catalog)
        record = vq.prepare(VideoRequest(prompt="a red fox in snow", audio=True, service_tier=service_tier)).record  # type: ignore[arg-type]
        if changes:
            record = record.model_copy(update=changes)
        self.store.create_many([record])
        return record.id

    def job(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        assert record is not None
        return record

    def state(self, job_id: str) -> dict[str, Any]:
        """The record without the bookkeeping every dispatch updates."""
        return self.job(job_id).model_dump(exclude={"next_due_at", "updated_at"})

    def raw(self, job_id: str) -> str:
        value: str = self.store.redis.get(keys.job_key(job_id))  # type: ignore[assignment]
        return value

    def running_job(self) -> str:
        """A job that has been submitted: running at the provider as task-1, poll 1 sent."""
        job_id = self.new_job()
        self.pipeline.submit(job_id)
        assert self.job(job_id).status is JobStatus.RUNNING
        self.dispatch.take()
        self.provider.calls.clear()
        return job_id

    def downloading_job(self, billed: int = 1_000_000) -> str:
        job_id = self.running_job()
        self.provider.get_results.append(succeeded(billed))
        self.pipeline.poll(job_id, 1)
        assert self.job(job_id).status is JobStatus.DOWNLOADING
        self.dispatch.take()
        self.provider.calls.clear()
        return job_id

    def stored_files(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir())


def state(status: TaskStatus, provider_status: str | None = None, **kw: Any) -> TaskState:
    return TaskState(status=status, provider_status=provider_status or status.value, **kw)


def succeeded(billed: int = 1_000_000) -> TaskState:
    return state(TaskStatus.SUCCEEDED, video_url="https://cdn.example/v.mp4", billed_units=billed)


def error(code: ErrorCode, message: str = "boom", **kw: Any) -> ProviderError:
    return ProviderError(code, message, **kw)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, make_settings())


# -------------------------------------------------------------------------- submit


def test_a_fresh_submit_counts_its_attempt_in_the_claim(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    # Claim (with the attempt counted), then the task recorded: two moves, not three.
    moves: list[str] = []
    update = env.store.update

    def counting(job_id: str, mutate: Any, **kwargs: Any) -> Any:
        moves.append(job_id)
        return update(job_id, mutate, **kwargs)

    monkeypatch.setattr(env.store, "update", counting)
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING and job.attempts == 1
    assert len(moves) == 2


def test_a_resubmit_after_an_uncertain_create_counts_its_new_attempt(env: Env) -> None:
    # The claim of an uncertain job does not count: the lookup comes first, and only a
    # create called after it counts.
    job_id = env.new_job()
    env.provider.create_results.append(error(ErrorCode.TIMEOUT, "read timed out", request_sent=True))
    env.pipeline.submit(job_id)
    uncertain = env.job(job_id)
    assert uncertain.status is JobStatus.SUBMITTING and uncertain.submit_intent_at is not None
    assert uncertain.attempts == 1
    env.pipeline.submit(job_id)  # the lookup finds nothing, for certain: create again
    assert env.provider.names() == ["create", "find_created", "create"]
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING and job.attempts == 2


def test_submit_creates_once_and_schedules_the_first_poll(env: Env) -> None:
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    assert env.provider.calls == [("create", job_id)]
    assert env.dispatch.sent == [("poll", job_id, 1, 5.0)]
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING
    assert job.provider_task_id == "task-1"
    assert job.provider_status == "queued"
    assert job.poll_seq == 1
    assert job.attempts == 1
    assert job.submit_lease_until is None
    assert job.submitted_at is not None
    assert [(h["from"], h["to"]) for h in job.history] == [("queued", "submitting"), ("submitting", "running")]


def test_first_poll_countdown_is_near_poll_initial_s_with_jitter(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(poll_initial_s=5, poll_jitter=0.2))
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    [(kind, _, seq, countdown)] = env.dispatch.sent
    assert (kind, seq) == ("poll", 1)
    assert 4.0 <= countdown <= 6.0


def test_submit_twice_never_creates_a_second_task(env: Env) -> None:
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    after_first = env.job(job_id)
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["create"]
    assert env.dispatch.sent == [("poll", job_id, 1, 5.0), ("poll", job_id, 1, 1.0)]
    assert env.job(job_id).provider_task_id == after_first.provider_task_id == "task-1"


def test_submit_with_a_recorded_task_id_goes_straight_to_polling(env: Env) -> None:
    job_id = env.new_job(status=JobStatus.RUNNING, provider_task_id="existing", poll_seq=4)
    before = env.state(job_id)
    env.pipeline.submit(job_id)
    assert env.provider.calls == []
    assert env.dispatch.sent == [("poll", job_id, 4, 1.0)]
    assert env.state(job_id) == before  # only the due time of the next step moved


def test_submit_of_unknown_or_final_job_does_nothing(env: Env) -> None:
    job_id = env.new_job(status=JobStatus.FAILED)
    env.pipeline.submit(job_id)
    env.pipeline.submit("no-such-job")
    assert env.provider.calls == []
    assert env.dispatch.sent == []


def test_a_live_submit_lease_makes_a_second_submit_reschedule(env: Env) -> None:
    job_id = env.new_job()
    # While the first worker's create call is in flight, a redelivered submit arrives.
    env.provider.on_create = lambda: env.pipeline.submit(job_id)
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["create"]
    [(kind, jid, seq, countdown), first_poll] = env.dispatch.sent
    assert (kind, jid, seq) == ("submit", job_id, None)
    assert 179 <= countdown <= 181.5  # when the lease (180 s) runs out, plus a second
    assert first_poll == ("poll", job_id, 1, 5.0)
    assert env.job(job_id).provider_task_id == "task-1"


def test_a_live_lease_from_another_worker(env: Env) -> None:
    now = utcnow()
    job_id = env.new_job(
        status=JobStatus.SUBMITTING,
        submit_intent_at=now - timedelta(seconds=10),
        submit_lease_until=now + timedelta(seconds=60),
    )
    before = env.state(job_id)
    env.pipeline.submit(job_id)
    assert env.provider.calls == []
    [(kind, _, _, countdown)] = env.dispatch.sent
    assert kind == "submit" and 59 <= countdown <= 61.5
    assert env.state(job_id) == before  # only the due time of the next step moved


def test_uncertain_earlier_attempt_looks_the_task_up_first(env: Env) -> None:
    intent = utcnow() - timedelta(minutes=5)
    job_id = env.new_job(
        status=JobStatus.SUBMITTING,
        attempts=1,
        submit_intent_at=intent,
        submit_lease_until=intent + timedelta(seconds=180),
    )
    env.provider.found = "task-found"
    env.pipeline.submit(job_id)
    assert env.provider.calls == [("find_created", intent)]
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING
    assert job.provider_task_id == "task-found"
    assert job.attempts == 1  # no new create attempt
    assert env.dispatch.sent == [("poll", job_id, 1, 5.0)]


def test_uncertain_earlier_attempt_that_made_nothing_creates(env: Env) -> None:
    intent = utcnow() - timedelta(minutes=5)
    job_id = env.new_job(status=JobStatus.SUBMITTING, submit_intent_at=intent, submit_lease_until=intent)
    env.provider.found = None
    env.pipeline.submit(job_id)
    assert env.provider.calls == [("find_created", intent), ("create", job_id)]
    assert env.job(job_id).provider_task_id == "task-1"


def test_rate_limited_create_requeues_and_honours_retry_after(env: Env) -> None:
    job_id = env.new_job()
    for _ in range(10):  # far more than submit_max_attempts (3)
        env.provider.create_results.append(error(ErrorCode.RATE_LIMITED, "slow down", retry_after=30))
        env.pipeline.submit(job_id)
        job = env.job(job_id)
        assert job.status is JobStatus.QUEUED
        assert job.error is None
        assert job.submit_intent_at is None and job.submit_lease_until is None
        [(kind, jid, _, countdown)] = env.dispatch.take()
        assert (kind, jid) == ("submit", job_id)
        assert 30 <= countdown <= 300
    env.pipeline.submit(job_id)
    assert env.provider.names().count("create") == 11
    assert env.job(job_id).status is JobStatus.RUNNING
    assert env.dispatch.sent == [("poll", job_id, 1, 5.0)]


def test_upstream_errors_fail_the_job_after_submit_max_attempts(env: Env) -> None:
    job_id = env.new_job()
    for attempt in (1, 2):
        env.provider.create_results.append(error(ErrorCode.UPSTREAM, "502 bad gateway", provider_code="502"))
        env.pipeline.submit(job_id)
        assert env.job(job_id).status is JobStatus.QUEUED
        [(kind, _, _, countdown)] = env.dispatch.take()
        ceiling = 2 * 2 ** (attempt - 1)
        assert kind == "submit" and ceiling / 2 <= countdown <= ceiling
    env.provider.create_results.append(error(ErrorCode.UPSTREAM, "502 bad gateway", provider_code="502"))
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code is ErrorCode.UPSTREAM
    assert job.error.provider_code == "502"
    assert job.error.message == "gave up after 3 failed attempts: 502 bad gateway"
    assert job.attempts == 3
    assert job.finished_at is not None
    assert env.dispatch.sent == []
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["create"] * 3


@pytest.mark.parametrize("code", [ErrorCode.INVALID_REQUEST, ErrorCode.AUTH, ErrorCode.CONTENT_FILTERED])
def test_non_retryable_create_errors_fail_at_once(env: Env, code: ErrorCode) -> None:
    job_id = env.new_job()
    env.provider.create_results.append(
        error(code, "The parameter `duration` specified in the request is not valid", provider_code="InvalidParameter")
    )
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code is code
    assert job.error.message == "The parameter `duration` specified in the request is not valid"
    assert job.error.provider_code == "InvalidParameter"
    assert job.submit_lease_until is None
    assert env.dispatch.sent == []
    assert env.provider.names() == ["create"]


def test_read_timeout_keeps_the_intent_so_the_next_submit_looks_up(env: Env) -> None:
    job_id = env.new_job()
    env.provider.create_results.append(error(ErrorCode.TIMEOUT, "read timed out", request_sent=True))
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.SUBMITTING
    assert job.submit_intent_at is not None
    assert job.submit_lease_until is not None and job.submit_lease_until <= utcnow()
    intent = job.submit_intent_at
    [(kind, _, _, _)] = env.dispatch.take()
    assert kind == "submit"

    env.provider.found = "task-made-by-the-timed-out-call"
    env.pipeline.submit(job_id)
    assert env.provider.calls == [("create", job_id), ("find_created", intent)]
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING
    assert job.provider_task_id == "task-made-by-the-timed-out-call"
    assert env.dispatch.sent == [("poll", job_id, 1, 5.0)]


def test_connect_timeout_is_safe_to_retry_blindly(env: Env) -> None:
    job_id = env.new_job()
    env.provider.create_results.append(error(ErrorCode.TIMEOUT, "connection refused", request_sent=False))
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.QUEUED and job.submit_intent_at is None
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["create", "create"]  # no lookup needed


def test_submit_after_the_deadline_expires_without_creating(env: Env) -> None:
    job_id = env.new_job(deadline_at=utcnow() - timedelta(seconds=1))
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.EXPIRED
    assert job.error is not None and job.error.code is ErrorCode.DEADLINE
    assert env.provider.calls == []
    assert env.dispatch.sent == []


def test_submit_of_a_cancel_requested_queued_job_cancels(env: Env) -> None:
    job_id = env.new_job(cancel_requested_at=utcnow())
    env.pipeline.submit(job_id)
    assert env.job(job_id).status is JobStatus.CANCELLED
    assert env.provider.calls == []


def test_cancel_requested_during_create_cancels_right_after(env: Env) -> None:
    job_id = env.new_job()

    def user_cancels() -> None:
        env.store.update(job_id, lambda r: r.model_copy(update={"cancel_requested_at": utcnow()}))

    env.provider.on_create = user_cancels
    env.provider.get_results.append(state(TaskStatus.QUEUED))
    env.pipeline.submit(job_id)
    # Status first: only a task that has not started is cancelled.
    assert env.provider.calls == [("create", job_id), ("get", "task-1"), ("cancel", "task-1")]
    assert env.job(job_id).status is JobStatus.CANCELLED
    assert env.dispatch.sent == []


# ---------------------------------------------------------------------------- poll


def test_poll_while_running_schedules_the_next_poll(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results += [state(TaskStatus.QUEUED, "queued"), state(TaskStatus.RUNNING, "running")]
    env.pipeline.poll(job_id, 1)
    [(kind, _, seq, countdown)] = env.dispatch.take()
    assert (kind, seq) == ("poll", 2) and countdown == pytest.approx(2.0, abs=0.01)  # POLL_MIN_S
    job = env.job(job_id)
    assert (job.poll_seq, job.provider_status, job.status) == (2, "queued", JobStatus.RUNNING)
    # 10 s after submit the interval has grown by (POLL_BACKOFF - 1) of the time waited.
    env.store.update(job_id, lambda r: r.model_copy(update={"submitted_at": utcnow() - timedelta(seconds=10)}))
    env.pipeline.poll(job_id, 2)
    [(kind, _, seq, countdown)] = env.dispatch.take()
    assert (kind, seq) == ("poll", 3) and countdown == pytest.approx(7.0, abs=0.01)  # 2 + 0.5 x 10
    job = env.job(job_id)
    assert (job.poll_seq, job.provider_status) == (3, "running")
    assert env.provider.calls == [("get", "task-1"), ("get", "task-1")]


def test_a_stale_poll_does_nothing(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.poll(job_id, 1)
    env.dispatch.take()
    before = env.raw(job_id)
    env.pipeline.poll(job_id, 1)  # redelivered: poll_seq is 2 now
    assert env.provider.calls == [("get", "task-1")]
    assert env.dispatch.sent == []
    assert env.raw(job_id) == before


def test_concurrent_duplicate_polls_advance_the_record_once(env: Env) -> None:
    job_id = env.running_job()

    class Reentrant(FakeProvider):
        def get(self, job: JobRecord) -> TaskState:
            if len(self.calls) == 0:
                # The duplicate runs while the first is between its read and its write.
                self.calls.append(("get", job.provider_task_id))
                env.pipeline.poll(job_id, 1)
                return state(TaskStatus.RUNNING)
            return super().get(job)

    env.provider = Reentrant(get_results=[state(TaskStatus.RUNNING)])
    env.pipeline.poll(job_id, 1)
    assert env.job(job_id).poll_seq == 2
    # Both sent poll 2; the second of those will find itself stale.
    assert [s[:3] for s in env.dispatch.take()] == [("poll", job_id, 2), ("poll", job_id, 2)]
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.poll(job_id, 2)
    env.pipeline.poll(job_id, 2)
    assert env.job(job_id).poll_seq == 3
    assert [s[:3] for s in env.dispatch.sent] == [("poll", job_id, 3)]


def test_poll_on_success_records_cost_and_sends_store(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(succeeded(billed=1_234_567))
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert job.status is JobStatus.DOWNLOADING
    assert job.billed_units == 1_234_567
    spec = env.catalog.models[MODEL]
    assert job.cost_usd == spec.usd_for_tokens(1_234_567, audio=True, service_tier="default")
    assert job.cost_usd == Decimal("2.962961")  # 1.234567 M tokens x $2.4
    assert job.video_url == "https://cdn.example/v.mp4"
    assert job.provider_status == "succeeded"
    assert job.provider_done_at is not None
    assert env.dispatch.sent == [("store", job_id, None, 0)]


def test_flex_tier_cost(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    job_id = env.new_job(service_tier="flex")
    env.pipeline.submit(job_id)
    env.provider.get_results.append(succeeded(billed=1_000_000))
    env.pipeline.poll(job_id, 1)
    assert env.job(job_id).cost_usd == Decimal("1.2")


def test_redelivered_poll_after_success_resends_store_only(env: Env) -> None:
    job_id = env.downloading_job()
    before = env.state(job_id)
    env.pipeline.poll(job_id, 1)
    assert env.dispatch.sent == [("store", job_id, None, 0)]
    assert env.provider.calls == []
    assert env.state(job_id) == before  # only the due time of the next step moved


def test_provider_failure_fails_the_job_with_both_codes(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(
        state(
            TaskStatus.FAILED,
            "failed",
            error_code=ErrorCode.CONTENT_FILTERED,
            error_message="The request failed because the output video may contain sensitive information.",
            provider_error_code="OutputVideoSensitiveContentDetected",
        )
    )
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code is ErrorCode.CONTENT_FILTERED
    assert job.error.provider_code == "OutputVideoSensitiveContentDetected"
    assert job.error.message.startswith("The request failed because the output video")
    assert env.dispatch.sent == []


def test_provider_failure_without_details_is_upstream(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(state(TaskStatus.FAILED))
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert job.error is not None
    assert (job.error.code, job.error.message) == (ErrorCode.UPSTREAM, "provider reported failure")


def test_provider_cancelled_task(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(state(TaskStatus.CANCELLED))
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert (job.status, job.provider_status, job.error) == (JobStatus.CANCELLED, "cancelled", None)
    assert job.finished_at is not None
    assert env.dispatch.sent == []


def test_provider_expired_task(env: Env) -> None:
    job_id = env.running_job()
    # The provider's own word is kept (Vertex AI's operation says DEADLINE_EXCEEDED).
    env.provider.get_results.append(state(TaskStatus.EXPIRED, "deadline_exceeded"))
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert (job.status, job.provider_status) == (JobStatus.EXPIRED, "deadline_exceeded")
    assert job.error is not None and job.error.code is ErrorCode.DEADLINE
    assert env.dispatch.sent == []


def past_deadline(env: Env, job_id: str, seconds: float = 1) -> None:
    env.store.update(job_id, lambda r: r.model_copy(update={"deadline_at": utcnow() - timedelta(seconds=seconds)}))


def test_at_the_deadline_a_task_still_queued_is_cancelled_and_the_job_expires(env: Env) -> None:
    job_id = env.running_job()
    past_deadline(env, job_id)
    env.provider.get_results.append(state(TaskStatus.QUEUED))
    env.pipeline.poll(job_id, 1)
    assert env.provider.calls == [("get", "task-1"), ("cancel", "task-1")]
    job = env.job(job_id)
    assert job.status is JobStatus.EXPIRED
    assert job.error is not None and job.error.code is ErrorCode.DEADLINE
    assert "within its deadline (" in job.error.message and "nothing billed" in job.error.message
    assert job.charged_usd is None
    assert env.dispatch.sent == []


def test_at_the_deadline_a_rendering_task_is_followed_to_its_end_and_billed(env: Env) -> None:
    job_id = env.running_job()
    past_deadline(env, job_id)
    env.provider.get_results += [state(TaskStatus.RUNNING), state(TaskStatus.RUNNING), succeeded(500_000)]
    env.pipeline.poll(job_id, 1)
    assert env.provider.names() == ["get"]  # never a cancel (ModelArk: DELETE deletes results)
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING and job.past_deadline_at is not None
    assert any("followed to its end" in note for note in job.notes)
    [(kind, _, seq, countdown)] = env.dispatch.take()
    assert (kind, seq) == ("poll", 2) and countdown >= 2.0  # the ordinary cadence, not 0.5 s
    env.pipeline.poll(job_id, 2)
    assert len(env.job(job_id).notes) == 1  # said once
    env.dispatch.take()
    env.pipeline.poll(job_id, 3)
    assert [s[0] for s in env.dispatch.take()] == ["store"]
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.output_uri is not None
    assert job.cost_usd == Decimal("1.2")
    assert env.provider.names() == ["get", "get", "get", "open_video"]
    entry = _ledger_entry(env, job_id)
    assert entry is not None and entry.actual_usd == Decimal("1.2")


def test_a_task_that_succeeded_before_a_late_first_poll_is_stored_and_billed(env: Env) -> None:
    job_id = env.running_job()
    past_deadline(env, job_id, seconds=30)
    env.provider.get_results.append(succeeded(500_000))
    env.pipeline.poll(job_id, 1)
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.output_uri is not None
    assert job.past_deadline_at is not None and any("billed" in n for n in job.notes)
    assert "cancel" not in env.provider.names()


@pytest.mark.parametrize(
    ("task", "status", "code"),
    [
        (
            state(
                TaskStatus.FAILED,
                error_code=ErrorCode.CONTENT_FILTERED,
                error_message="sensitive",
                provider_error_code="OutputVideoSensitiveContentDetected",
            ),
            JobStatus.FAILED,
            ErrorCode.CONTENT_FILTERED,
        ),
        (state(TaskStatus.EXPIRED), JobStatus.EXPIRED, ErrorCode.DEADLINE),
        (state(TaskStatus.CANCELLED), JobStatus.CANCELLED, None),
    ],
)
def test_at_the_deadline_a_task_that_ended_ends_the_job_the_way_the_provider_says(
    env: Env, task: TaskState, status: JobStatus, code: ErrorCode | None
) -> None:
    job_id = env.running_job()
    past_deadline(env, job_id)
    env.provider.get_results.append(task)
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert job.status is status
    assert (job.error.code if job.error else None) is code
    if task.provider_error_code:
        assert job.error is not None and job.error.provider_code == task.provider_error_code
    assert env.provider.names() == ["get"]


def test_past_follow_past_deadline_s_a_task_that_never_ends_expires(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(follow_past_deadline_s=60))
    job_id = env.running_job()
    past_deadline(env, job_id, seconds=61)
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert job.status is JobStatus.EXPIRED and job.error is not None
    assert "FOLLOW_PAST_DEADLINE_S" in job.error.message


def test_a_failing_cancel_at_the_deadline_leaves_the_job_followed_and_tried_again(env: Env) -> None:
    job_id = env.running_job()
    past_deadline(env, job_id)
    env.provider.get_results += [state(TaskStatus.QUEUED), state(TaskStatus.QUEUED)]
    env.provider.cancel_results += [error(ErrorCode.UPSTREAM), True]
    env.pipeline.poll(job_id, 1)
    assert env.job(job_id).status is JobStatus.RUNNING
    [(_, _, seq, _)] = env.dispatch.take()
    env.pipeline.poll(job_id, seq)  # type: ignore[arg-type]
    assert env.job(job_id).status is JobStatus.EXPIRED
    assert env.provider.names() == ["get", "cancel", "get", "cancel"]


def test_poll_errors_reschedule_then_fail_after_poll_max_errors(env: Env) -> None:
    job_id = env.running_job()
    for seq in (1, 2):
        env.provider.get_results.append(error(ErrorCode.UPSTREAM, "503 service unavailable", provider_code="503"))
        env.pipeline.poll(job_id, seq)
        job = env.job(job_id)
        assert (job.status, job.poll_errors, job.poll_seq) == (JobStatus.RUNNING, seq, seq + 1)
        [(kind, _, next_seq, countdown)] = env.dispatch.take()
        ceiling = 2 * 2 ** (seq - 1)
        assert (kind, next_seq) == ("poll", seq + 1)
        assert ceiling / 2 <= countdown <= ceiling
    env.provider.get_results.append(error(ErrorCode.UPSTREAM, "503 service unavailable", provider_code="503"))
    env.pipeline.poll(job_id, 3)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code is ErrorCode.UPSTREAM
    assert job.error.message == "status calls failed 3 times: 503 service unavailable"
    assert job.error.provider_code == "503"
    assert env.dispatch.sent == []


def test_a_good_status_call_resets_poll_errors(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results += [error(ErrorCode.UPSTREAM), error(ErrorCode.TIMEOUT), state(TaskStatus.RUNNING)]
    for seq in (1, 2, 3):
        env.pipeline.poll(job_id, seq)
    assert env.job(job_id).poll_errors == 0
    for seq in (4, 5):
        env.provider.get_results.append(error(ErrorCode.UPSTREAM))
        env.pipeline.poll(job_id, seq)
    assert env.job(job_id).status is JobStatus.RUNNING


def test_rate_limited_polls_do_not_fail_the_job(env: Env) -> None:
    job_id = env.running_job()
    for seq in range(1, 11):
        env.provider.get_results.append(error(ErrorCode.RATE_LIMITED, "429", retry_after=20))
        env.pipeline.poll(job_id, seq)
        [(_, _, _, countdown)] = env.dispatch.take()
        assert countdown >= 20
    job = env.job(job_id)
    assert (job.status, job.poll_errors, job.poll_seq) == (JobStatus.RUNNING, 0, 11)


def test_not_found_at_poll_fails_at_once(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(error(ErrorCode.NOT_FOUND, "task not found", provider_code="ResourceNotFound"))
    env.pipeline.poll(job_id, 1)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code is ErrorCode.NOT_FOUND
    assert env.dispatch.sent == []


# --------------------------------------------------------------------------- store


def test_store_video_writes_video_and_manifest_and_succeeds(env: Env) -> None:
    job_id = env.downloading_job(billed=1_000_000)
    env.pipeline.store_video(job_id)
    video = env.root / f"{job_id}.mp4"
    manifest_path = env.root / f"{job_id}.json"
    assert env.stored_files() == sorted([f"{job_id}.json", f"{job_id}.mp4"])
    assert video.read_bytes() == VIDEO
    job = env.job(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.output_uri == video.resolve().as_uri()
    assert job.manifest_uri == manifest_path.resolve().as_uri()
    assert job.cost_usd == Decimal("2.4")
    assert job.store_attempts == 1
    assert job.finished_at is not None
    manifest = json.loads(manifest_path.read_text())
    assert manifest["job_id"] == job_id
    assert manifest["video"] == {"uri": job.output_uri, "bytes": len(VIDEO), "content_type": "video/mp4"}
    assert manifest["cost"]["actual_usd"] == 2.4
    assert manifest["cost"]["billed_units"] == 1_000_000
    assert manifest["cost"]["estimate_usd"] == float(job.cost_estimate_usd)
    assert manifest["job"]["id"] == job_id
    assert manifest["job"]["status"] == "succeeded"
    assert manifest["job"]["cost_usd"] == 2.4
    assert "video_url" not in manifest["job"]
    assert env.provider.calls == [("open_video", job_id)]


def test_store_video_twice_changes_nothing_the_second_time(env: Env) -> None:
    job_id = env.downloading_job()
    env.pipeline.store_video(job_id)
    before = env.raw(job_id)
    mtime = (env.root / f"{job_id}.mp4").stat().st_mtime_ns
    env.pipeline.store_video(job_id)
    assert env.raw(job_id) == before
    assert (env.root / f"{job_id}.mp4").stat().st_mtime_ns == mtime
    assert env.provider.names() == ["open_video"]


def test_storage_error_asks_for_a_retry_and_keeps_downloading(env: Env, tmp_path: Path) -> None:
    job_id = env.downloading_job()
    not_a_dir = tmp_path / "blocked"
    not_a_dir.write_bytes(b"")
    env.storage = LocalStorage(not_a_dir)
    with pytest.raises(StoreRetry) as raised:
        env.pipeline.store_video(job_id)
    assert 1 <= raised.value.countdown <= 2
    assert "StorageError" in str(raised.value)
    job = env.job(job_id)
    assert (job.status, job.store_attempts, job.output_uri) == (JobStatus.DOWNLOADING, 1, None)

    env.storage = LocalStorage(env.root)  # storage is back
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert (job.status, job.store_attempts) == (JobStatus.SUCCEEDED, 2)


def test_store_gives_up_after_store_max_attempts(env: Env, tmp_path: Path) -> None:
    job_id = env.downloading_job()
    env.provider.video = b"<html>link expired</html>"
    for _ in (1, 2):
        with pytest.raises(StoreRetry):
            env.pipeline.store_video(job_id)
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code is ErrorCode.STORAGE
    assert job.error.message.startswith("gave up after 3 attempts: VideoCheckError")
    # No video, but the provider charged: the manifest keeps the cost for the ledger.
    assert env.stored_files() == [f"{job_id}.json"]
    manifest = json.loads((env.root / f"{job_id}.json").read_text())
    assert manifest["video"] is None
    assert manifest["ledger"]["status"] == "failed"
    assert manifest["ledger"]["actual_usd"] == float(job.cost_usd or 0) > 0
    assert job.manifest_uri == (env.root / f"{job_id}.json").resolve().as_uri()


def test_store_of_a_cancel_requested_job_keeps_the_paid_video(env: Env) -> None:
    job_id = env.downloading_job()
    env.store.update(job_id, lambda r: r.model_copy(update={"cancel_requested_at": utcnow()}))
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.CANCELLED and job.output_uri is not None
    assert env.stored_files() == [f"{job_id}.json", f"{job_id}.mp4"]


@dataclass
class BrokenStorage:
    """Local storage that raises `error` at one step: "put_video" (the upload), "size"
    (the read-back) or "put_json" (the manifest)."""

    inner: Storage
    step: str
    error: BaseException

    def put_video(self, key: str, chunks: Iterator[bytes], expected_size: int | None, check: Any = None) -> Any:
        if self.step == "put_video":
            raise self.error
        return self.inner.put_video(key, chunks, expected_size, check)

    def put_json(self, key: str, data: dict[str, Any]) -> Any:
        if self.step == "put_json":
            raise self.error
        return self.inner.put_json(key, data)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> Any:
        return self.inner.put_bytes(key, data, content_type)

    def uri(self, key: str) -> str:
        return self.inner.uri(key)

    def size(self, key: str) -> int | None:
        if self.step == "size":
            raise self.error
        return self.inner.size(key)

    def read(self, key: str) -> bytes | None:
        return self.inner.read(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def iter_json(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.inner.iter_json()

    def keys_starting_with(self, start: str, limit: int) -> list[str]:
        return self.inner.keys_starting_with(start, limit)

    def probe(self) -> Probe:
        return self.inner.probe()


def failing_video(error: BaseException) -> Callable[[JobRecord], AbstractContextManager[VideoStream]]:
    """An open_video whose stream breaks with `error` after the first chunk."""

    def open_video(job: JobRecord) -> AbstractContextManager[VideoStream]:
        def chunks() -> Iterator[bytes]:
            yield VIDEO[:100]
            raise error

        @contextmanager
        def opened() -> Iterator[VideoStream]:
            yield VideoStream(chunks=chunks(), size=len(VIDEO))

        return opened()

    return open_video


def _open_storage_fails(env: Env) -> None:
    def open_storage() -> Storage:
        # What opening S3 with S3_ENDPOINT_URL='' did: botocore's ValueError.
        raise ValueError("Invalid endpoint: ")

    env.pipeline.storage = open_storage


def _download_breaks(env: Env) -> None:
    env.provider.open_video = failing_video(error(ErrorCode.TIMEOUT, "download broke"))  # type: ignore[method-assign,assignment]


def _soft_time_limit(env: Env) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    env.provider.open_video = failing_video(SoftTimeLimitExceeded())  # type: ignore[method-assign,assignment]


def _unexpected(env: Env) -> None:
    env.provider.open_video = failing_video(KeyError("surprise"))  # type: ignore[method-assign,assignment]


def _storage_step(step: str) -> Callable[[Env], None]:
    def broken(env: Env) -> None:
        from worker.storage import StorageError

        env.storage = BrokenStorage(env.storage, step, StorageError(f"{step} refused"))

    return broken


STORE_FAULTS: dict[str, tuple[Callable[[Env], None], str]] = {
    "opening the storage": (_open_storage_fails, "ValueError"),
    "download": (_download_breaks, "ProviderError"),
    "upload": (_storage_step("put_video"), "StorageError"),
    "read-back": (_storage_step("size"), "StorageError"),
    "manifest": (_storage_step("put_json"), "StorageError"),
    "soft time limit": (_soft_time_limit, "SoftTimeLimitExceeded"),
    "unexpected": (_unexpected, "KeyError"),
}


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_every_store_failure_counts_as_an_attempt_and_ends_the_job_after_the_limit(
    env: Env, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = env.downloading_job()
    breaks, error_class = STORE_FAULTS[fault]
    breaks(env)
    caplog.set_level("WARNING", logger="videoqueue.pipeline")
    for attempt in (1, 2):
        with pytest.raises(StoreRetry):
            env.pipeline.store_video(job_id)
        job = env.job(job_id)
        assert (job.status, job.store_attempts, job.store_lease_until) == (JobStatus.DOWNLOADING, attempt, None)
    env.pipeline.store_video(job_id)  # attempt 3 of STORE_MAX_ATTEMPTS=3
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED and job.store_attempts == 3
    assert job.error is not None and job.error.code is ErrorCode.STORAGE
    assert job.error.message.startswith("gave up after 3 attempts")
    failures = [r for r in caplog.records if r.getMessage() == "store attempt failed"]
    assert [(r.attempt, r.error_class) for r in failures] == [(1, error_class), (2, error_class), (3, error_class)]  # type: ignore[attr-defined]
    # Paid for: the cost is settled once, and the record keeps where the video still is.
    assert len(Ledger(env.store.redis).entries()) == 1
    assert job.video_url == "https://cdn.example/v.mp4"
    assert job.result_expires_at is not None and job.provider_done_at is not None
    assert job.result_expires_at - job.provider_done_at == timedelta(hours=23)


def test_an_attempt_over_the_limit_ends_the_job_without_downloading(env: Env) -> None:
    job_id = env.downloading_job()
    # Three attempts started and none reported back (killed, over the hard time limit).
    env.store.update(job_id, lambda r: r.model_copy(update={"store_attempts": 3, "store_lease_until": None}))
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED and job.store_attempts == 3
    assert job.error is not None and job.error.code is ErrorCode.STORAGE
    assert "never finished" in job.error.message
    assert env.provider.calls == []  # no fourth download
    assert env.stored_files() == [f"{job_id}.json"]


def test_an_attempt_that_never_returns_is_counted_when_it_starts(env: Env) -> None:
    job_id = env.downloading_job()
    env.provider.open_video = failing_video(SystemExit(9))  # type: ignore[method-assign,assignment]  # the child dies
    with pytest.raises(SystemExit):
        env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert (job.status, job.store_attempts) == (JobStatus.DOWNLOADING, 1)
    assert job.store_lease_until is not None and job.store_lease_until > utcnow()


def test_a_store_message_during_a_live_attempt_waits_for_its_lease(env: Env) -> None:
    job_id = env.downloading_job()
    lease = utcnow() + timedelta(seconds=100)
    env.store.update(job_id, lambda r: r.model_copy(update={"store_attempts": 1, "store_lease_until": lease}))
    env.pipeline.store_video(job_id)  # a duplicate message
    assert env.provider.calls == []
    [(kind, _, _, countdown)] = env.dispatch.take()
    assert kind == "store" and 99 <= countdown <= 101.5
    assert env.job(job_id).store_attempts == 1


def test_an_over_long_attempt_is_superseded_and_its_late_result_discarded(env: Env) -> None:
    job_id = env.downloading_job()
    original_open = env.provider.open_video

    def slow_first_attempt(job: JobRecord) -> AbstractContextManager[VideoStream]:
        def chunks() -> Iterator[bytes]:
            yield VIDEO[:100]
            # The attempt outlives its lease (thread pool: no time limit); the sweep sends
            # the store again and a second attempt stores the video and ends the job.
            env.store.update(job_id, lambda r: r.model_copy(update={"store_lease_until": utcnow()}))
            env.provider.open_video = original_open  # type: ignore[method-assign]
            env.pipeline.store_video(job_id)
            yield VIDEO[100:]

        @contextmanager
        def opened() -> Iterator[VideoStream]:
            yield VideoStream(chunks=chunks(), size=len(VIDEO))

        return opened()

    env.provider.open_video = slow_first_attempt  # type: ignore[method-assign]
    env.pipeline.store_video(job_id)  # attempt 1 returns late, after attempt 2 finished the job
    job = env.job(job_id)
    assert (job.status, job.store_attempts) == (JobStatus.SUCCEEDED, 2)
    ends = [h for h in job.history if h["to"] == "succeeded"]
    assert len(ends) == 1
    assert len(Ledger(env.store.redis).entries()) == 1


def test_a_late_failure_of_a_superseded_attempt_changes_nothing(env: Env) -> None:
    job_id = env.downloading_job()

    def superseded_then_fails(job: JobRecord) -> AbstractContextManager[VideoStream]:
        env.store.update(job_id, lambda r: r.model_copy(update={"store_attempts": 2}))  # attempt 2 started
        return failing_video(KeyError("late"))(job)

    env.provider.open_video = superseded_then_fails  # type: ignore[method-assign]
    env.pipeline.store_video(job_id)  # no StoreRetry: attempt 2 decides
    job = env.job(job_id)
    assert (job.status, job.store_attempts) == (JobStatus.DOWNLOADING, 2)


def test_a_job_past_its_store_deadline_ends_without_downloading(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(store_deadline_s=600))
    job_id = env.downloading_job()
    done = utcnow() - timedelta(seconds=601)
    env.store.update(job_id, lambda r: r.model_copy(update={"provider_done_at": done}))
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and job.error.code is ErrorCode.STORAGE
    assert "STORE_DEADLINE_S" in job.error.message
    assert env.provider.calls == []


def test_store_retries_and_the_store_lease_never_run_past_the_store_deadline(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(store_deadline_s=600, store_busy_s=1500, retry_base_s=100))
    job_id = env.downloading_job()
    done = utcnow() - timedelta(seconds=590)
    env.store.update(job_id, lambda r: r.model_copy(update={"provider_done_at": done}))
    env.provider.open_video = failing_video(KeyError("x"))  # type: ignore[method-assign,assignment]
    with pytest.raises(StoreRetry) as raised:
        env.pipeline.store_video(job_id)
    assert raised.value.countdown <= 10.5
    due = env.store.due_at(job_id)
    assert due is not None and due <= (done + timedelta(seconds=601)).timestamp()


def _failed_in_storage(env: Env) -> str:
    job_id = env.downloading_job()
    budget_keys = [keys.budget_counter_key("test")]
    env.store.update(job_id, lambda r: r.model_copy(update={"budget_keys": budget_keys}))
    real_storage = env.storage
    env.storage = BrokenStorage(real_storage, "put_video", ValueError("bucket does not exist"))
    for _ in (1, 2):
        with pytest.raises(StoreRetry):
            env.pipeline.store_video(job_id)
    env.pipeline.store_video(job_id)
    assert env.job(job_id).status is JobStatus.FAILED
    env.storage = real_storage
    return job_id


def test_store_retry_stores_a_failed_job_again_and_its_cost_stays_settled_once(env: Env) -> None:
    from producer.api import reopen_for_store
    from videoqueue.budget import to_micro

    job_id = _failed_in_storage(env)
    failed = env.job(job_id)
    assert failed.settled_at is not None and failed.cost_usd is not None
    settled = env.store.redis.hgetall(keys.budget_counter_key("test"))
    cost_stats = env.store.redis.hgetall(keys.STATS_COST)
    assert settled == {"reserved": str(-to_micro(failed.cost_estimate_usd)), "spent": str(to_micro(failed.cost_usd))}

    reopened = reopen_for_store(env.store, job_id)
    assert (reopened.status, reopened.store_attempts, reopened.store_retries) == (JobStatus.DOWNLOADING, 0, 1)
    assert reopened.error is None and env.store.due_at(job_id) is not None
    env.pipeline.store_video(job_id)  # what the store task the CLI sends does
    job = env.job(job_id)
    assert (job.status, job.store_attempts) == (JobStatus.SUCCEEDED, 1)
    assert env.stored_files() == sorted([f"{job_id}.json", f"{job_id}.mp4"])
    [entry] = Ledger(env.store.redis).entries()
    assert (entry.job_id, entry.status, entry.actual_usd) == (job_id, "succeeded", failed.cost_usd)
    assert entry.settled_at == failed.settled_at  # the day it was paid for stays
    assert env.store.redis.hgetall(keys.budget_counter_key("test")) == settled  # budgets not settled twice
    assert env.store.redis.hgetall(keys.STATS_COST) == cost_stats
    assert job.settled_at == failed.settled_at


def test_store_retry_starts_a_fresh_store_deadline(tmp_path: Path) -> None:
    from producer.api import reopen_for_store

    env = Env(tmp_path, make_settings(store_deadline_s=600))
    job_id = _failed_in_storage(env)
    # It failed long ago (past STORE_DEADLINE_S), but the provider still holds the video.
    done = utcnow() - timedelta(hours=2)
    env.store.update(job_id, lambda r: r.model_copy(update={"provider_done_at": done}))
    reopen_for_store(env.store, job_id)
    env.pipeline.store_video(job_id)
    assert env.job(job_id).status is JobStatus.SUCCEEDED


def test_store_retry_refuses_an_expired_video_and_a_job_that_did_not_fail_in_storage(env: Env) -> None:
    from producer.api import StoreRetryRefusedError, reopen_for_store

    job_id = _failed_in_storage(env)
    expired = utcnow() - timedelta(seconds=1)
    env.store.update(job_id, lambda r: r.model_copy(update={"result_expires_at": expired}))
    with pytest.raises(StoreRetryRefusedError, match="expired"):
        reopen_for_store(env.store, job_id)
    assert env.job(job_id).status is JobStatus.FAILED

    running = env.running_job()
    env.provider.get_results.append(state(TaskStatus.FAILED, error_code=ErrorCode.CONTENT_FILTERED))
    env.pipeline.poll(running, 1)
    assert env.job(running).status is JobStatus.FAILED
    with pytest.raises(StoreRetryRefusedError, match="did not fail in storage"):
        reopen_for_store(env.store, running)
    stored = env.downloading_job()
    env.pipeline.store_video(stored)
    with pytest.raises(StoreRetryRefusedError, match="succeeded, not failed"):
        reopen_for_store(env.store, stored)


# -------------------------------------------------------------------------- cancel


def request_cancel(env: Env, job_id: str) -> None:
    """What VideoQueue.cancel records before it sends the cancel task."""
    env.store.update(job_id, lambda r: r.model_copy(update={"cancel_requested_at": utcnow()}))


def test_cancel_of_a_queued_job(env: Env) -> None:
    job_id = env.new_job()
    request_cancel(env, job_id)
    env.pipeline.cancel(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.CANCELLED and job.finished_at is not None
    assert env.provider.calls == []
    env.pipeline.submit(job_id)  # the submit message still in the queue
    assert env.provider.calls == []


def test_cancel_without_a_request_does_nothing(env: Env) -> None:
    job_id = env.new_job()
    env.pipeline.cancel(job_id)
    assert env.job(job_id).status is JobStatus.QUEUED


def test_cancel_of_a_queued_task_the_provider_stops(env: Env) -> None:
    job_id = env.running_job()
    request_cancel(env, job_id)
    env.provider.get_results.append(state(TaskStatus.QUEUED))
    env.pipeline.cancel(job_id)
    assert env.provider.calls == [("get", "task-1"), ("cancel", "task-1")]
    job = env.job(job_id)
    assert (job.status, job.provider_status) == (JobStatus.CANCELLED, "cancelled")
    env.pipeline.poll(job_id, 1)  # the pending poll finds the job final
    assert env.provider.names() == ["get", "cancel"]


def test_cancel_of_a_task_that_already_finished_stores_it_and_never_deletes_it(env: Env) -> None:
    job_id = env.running_job()
    request_cancel(env, job_id)
    env.provider.get_results.append(succeeded(500_000))
    env.pipeline.cancel(job_id)
    assert env.provider.names() == ["get"]
    assert [s[0] for s in env.dispatch.take()] == ["store"]
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.CANCELLED and job.output_uri is not None and job.cost_usd == Decimal("1.2")


def test_cancel_of_a_rendering_task_follows_it_and_keeps_the_paid_video(env: Env) -> None:
    job_id = env.running_job()
    request_cancel(env, job_id)
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.cancel(job_id)
    job = env.job(job_id)
    assert (job.status, job.provider_status) == (JobStatus.RUNNING, "running")
    assert any("cancel requested" in n for n in job.notes)

    env.provider.get_results += [state(TaskStatus.RUNNING), succeeded(billed=500_000)]
    env.pipeline.poll(job_id, 1)
    assert env.job(job_id).status is JobStatus.RUNNING
    env.pipeline.poll(job_id, 2)
    assert env.provider.names() == ["get", "get", "get"]  # a rendering task is never cancelled
    assert [s[0] for s in env.dispatch.take()] == ["poll", "store"]
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.CANCELLED
    assert job.billed_units == 500_000
    assert job.cost_usd == Decimal("1.2")
    assert job.output_uri is not None
    assert env.stored_files() == [f"{job_id}.json", f"{job_id}.mp4"]


def test_poll_carries_out_a_pending_cancel(env: Env) -> None:
    job_id = env.running_job()
    request_cancel(env, job_id)  # the cancel message has not run yet
    env.provider.get_results.append(state(TaskStatus.QUEUED))
    env.pipeline.poll(job_id, 1)
    assert env.provider.calls == [("get", "task-1"), ("cancel", "task-1")]
    assert env.job(job_id).status is JobStatus.CANCELLED
    assert env.dispatch.sent == []


# ------------------------------------------------ regressions found in review


def test_rate_limits_do_not_use_up_the_submit_attempts(env: Env) -> None:
    job_id = env.new_job()
    for _ in range(5):
        env.provider.create_results.append(error(ErrorCode.RATE_LIMITED, "slow down", retry_after=1))
        env.pipeline.submit(job_id)
    env.provider.create_results.append(error(ErrorCode.UPSTREAM, "502 bad gateway"))
    env.pipeline.submit(job_id)
    # One upstream failure out of submit_max_attempts=3: the job must be retried, not failed.
    assert env.job(job_id).status is JobStatus.QUEUED


def test_a_failed_lookup_keeps_the_uncertain_intent(env: Env) -> None:
    job_id = env.new_job()
    env.provider.create_results.append(error(ErrorCode.TIMEOUT, "read timed out", request_sent=True))
    env.pipeline.submit(job_id)  # the create may have reached the provider
    env.provider.find_errors.append(error(ErrorCode.UPSTREAM, "503 on list tasks"))
    env.pipeline.submit(job_id)  # the lookup fails
    env.provider.found = "task-made-by-the-timed-out-call"
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["create", "find_created", "find_created"]
    assert env.job(job_id).provider_task_id == "task-made-by-the-timed-out-call"


def test_rate_limited_polls_after_an_error_do_not_count(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(error(ErrorCode.UPSTREAM, "503"))
    env.pipeline.poll(job_id, 1)
    for seq in range(2, 8):
        env.provider.get_results.append(error(ErrorCode.RATE_LIMITED, "429"))
        env.pipeline.poll(job_id, seq)
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING
    assert job.poll_errors == 1


def test_a_late_failure_of_an_expired_attempt_does_not_clobber_the_new_owner(env: Env) -> None:
    now = utcnow()
    # Worker A claimed the job long ago; its lease has run out while its create call hangs.
    job_id = env.new_job(
        status=JobStatus.SUBMITTING,
        submit_intent_at=now - timedelta(minutes=10),
        submit_lease_until=now - timedelta(minutes=7),
        attempts=1,
    )
    a_view = env.job(job_id)

    def a_create_returns_429() -> None:
        a_lease = now - timedelta(minutes=7)
        env.pipeline._submit_failed(a_view, error(ErrorCode.RATE_LIMITED, "slow down"), a_lease, still_uncertain=False)

    env.provider.on_create = a_create_returns_429  # runs while worker B's create is in flight
    env.pipeline.submit(job_id)  # worker B takes over
    assert "cancel" not in env.provider.names()
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING
    assert job.provider_task_id == "task-1"


def test_a_provider_that_cannot_be_built_fails_the_job_instead_of_stranding_it(env: Env) -> None:
    job_id = env.new_job()

    def no_key(name: str) -> FakeProvider:
        raise ProviderError(ErrorCode.AUTH, "BYTEPLUS_API_KEY is not set")

    env.pipeline.providers = no_key
    env.pipeline.submit(job_id)

    job = env.job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.error is not None and (job.error.code, job.error.message) == (
        ErrorCode.AUTH,
        "BYTEPLUS_API_KEY is not set",
    )


def _producer(env: Env, monkeypatch: pytest.MonkeyPatch) -> VideoQueue:
    """A producer on the pipeline's store and storage whose messages go nowhere."""
    vq = VideoQueue(
        env.settings, store=env.store, catalog=env.catalog, input_storage=StorageInputs(env.settings, env.storage)
    )
    monkeypatch.setattr(vq, "_send", lambda records: None)
    return vq


def test_uploaded_and_linked_images_reach_the_provider(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "first.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x01" * 32)
    vq = _producer(env, monkeypatch)
    [job] = vq.enqueue(
        [vq.prepare(VideoRequest(prompt="fox", image_file=str(image), last_frame_url="https://x/l.png"))]
    )

    env.pipeline.submit(job.id)

    assert env.provider.images == {
        "first_frame": ImageInput(data=image.read_bytes(), mime_type="image/png"),
        "last_frame": ImageInput(url="https://x/l.png"),
    }
    assert env.job(job.id).status is JobStatus.RUNNING


def test_an_uploaded_image_that_is_gone_fails_the_job_clearly(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "first.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x01" * 32)
    vq = _producer(env, monkeypatch)
    [job] = vq.enqueue([vq.prepare(VideoRequest(prompt="fox", image_file=str(image)))])
    (env.root / "inputs" / job.id / "first_frame.png").unlink()  # deleted by hand, or by a lifecycle rule

    env.pipeline.submit(job.id)

    failed = env.job(job.id)
    assert failed.status is JobStatus.FAILED and "create" not in env.provider.names()
    assert failed.error is not None
    uri = f"file://{env.root / 'inputs' / job.id / 'first_frame.png'}"
    assert failed.error.code is ErrorCode.INVALID_REQUEST
    # Where it was looked for, and the likely cause: a producer that put it on its own disk.
    assert failed.error.message.startswith(f"the uploaded first_frame image is not at {uri}: deleted since, or put")
    assert "producers and workers must share STORAGE_URL's storage" in failed.error.message
    assert failed.attempts == 0  # its images were never read whole: no create attempt counted


def test_one_ledger_entry_per_job_when_store_runs_twice_and_it_matches_the_manifest(env: Env) -> None:
    job_id = env.downloading_job(billed=103818)
    env.pipeline.store_video(job_id)
    env.pipeline.store_video(job_id)  # redelivered
    env.store.transition(job_id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)  # a late duplicate settle
    entries = Ledger(env.store.redis).entries()
    assert [e.job_id for e in entries] == [job_id]
    assert entries[0].actual_usd == env.job(job_id).cost_usd == Decimal("0.249163")
    manifest = json.loads((env.root / f"{job_id}.json").read_text())
    assert LedgerEntry.model_validate(manifest["ledger"]) == entries[0]


# ------------------------------- lost create answers: lookups that never guess (issue 11)


def uncertain_job(env: Env, **changes: Any) -> tuple[str, datetime]:
    """A job whose last create may have reached the provider (its answer was lost)."""
    intent = utcnow() - timedelta(minutes=5)
    job_id = env.new_job(
        status=JobStatus.SUBMITTING, attempts=1, submit_intent_at=intent, submit_lease_until=intent, **changes
    )
    return job_id, intent


def test_a_lookup_skips_tasks_other_jobs_recorded(env: Env) -> None:
    other = env.running_job()  # recorded task-1
    assert env.job(other).provider_task_id == "task-1"
    job_id, _ = uncertain_job(env)
    env.provider.found = "task-1"  # identical request: the listing shows the other job's task
    env.provider.also_found = ("task-mine",)
    env.pipeline.submit(job_id)
    assert env.job(job_id).provider_task_id == "task-mine"
    assert env.store.task_owners("byteplus", ["task-1", "task-mine"]) == {"task-1": other, "task-mine": job_id}


@pytest.mark.parametrize("case", ["two candidates", "listing incomplete"])
def test_a_lookup_that_cannot_tell_counts_and_charges_the_create_and_creates_again(env: Env, case: str) -> None:
    job_id, intent = uncertain_job(env)
    if case == "two candidates":
        env.provider.found, env.provider.also_found = "task-a", ("task-b",)
    else:
        env.provider.lookup_complete = False
    env.pipeline.submit(job_id)
    assert env.provider.calls == [("find_created", intent), ("create", job_id)]
    job = env.job(job_id)
    assert job.provider_task_id == "task-1" and job.uncertain_creates == 1
    assert job.uncertain_cost_usd == job.cost_estimate_usd
    assert any("charged at its estimate" in n for n in job.notes)


def test_a_complete_listing_without_the_task_creates_without_a_charge(env: Env) -> None:
    job_id, _ = uncertain_job(env)
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.provider_task_id == "task-1"
    assert (job.uncertain_creates, job.uncertain_cost_usd) == (0, None)


def test_an_uncertain_charge_reaches_the_ledger_and_the_budget_once(env: Env) -> None:
    env.settings = make_settings(budget_daily_usd=100)
    job_id, _ = uncertain_job(env)
    record = env.job(job_id)
    day_key = keys.budget_counter_key(f"day:{record.created_at.date().isoformat()}")
    env.store.update(job_id, lambda r: r.model_copy(update={"budget_keys": [day_key]}))
    env.store.redis.hset(day_key, "reserved", "1200000")
    env.provider.lookup_complete = False  # as Vertex AI: operations cannot be listed
    env.pipeline.submit(job_id)
    env.provider.get_results.append(succeeded(500_000))
    env.pipeline.poll(job_id, 1)
    env.pipeline.store_video(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.SUCCEEDED
    assert job.cost_usd == Decimal("1.2") and job.uncertain_cost_usd == job.cost_estimate_usd
    entry = _ledger_entry(env, job_id)
    assert entry is not None
    assert entry.actual_usd == Decimal("1.2") + job.cost_estimate_usd
    assert entry.uncertain_usd == job.cost_estimate_usd
    spent = int(env.store.redis.hget(day_key, "spent"))  # type: ignore[arg-type]
    assert Decimal(spent) / 1_000_000 == entry.actual_usd


def test_at_the_deadline_an_uncertain_create_gets_a_last_lookup_and_its_task_is_followed(env: Env) -> None:
    job_id, intent = uncertain_job(env, deadline_at=utcnow() - timedelta(seconds=1))
    env.provider.found = "task-found"
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.submit(job_id)
    assert env.provider.calls == [("find_created", intent), ("get", "task-found")]
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING and job.provider_task_id == "task-found"
    assert job.past_deadline_at is not None
    assert [s[0] for s in env.dispatch.sent] == ["poll"]


@pytest.mark.parametrize(("complete", "charged"), [(True, False), (False, True)])
def test_at_the_deadline_an_uncertain_create_with_no_task_found_expires(
    env: Env, complete: bool, charged: bool
) -> None:
    job_id, _ = uncertain_job(env, deadline_at=utcnow() - timedelta(seconds=1))
    env.provider.lookup_complete = complete
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.EXPIRED and "create" not in env.provider.names()
    assert (job.uncertain_cost_usd is not None) is charged
    assert (_ledger_entry(env, job_id) is not None) is charged


def test_a_submit_that_gives_up_after_an_uncertain_create_looks_once_more(env: Env) -> None:
    job_id, _ = uncertain_job(env, submit_errors=2)  # one more failure gives up (3 attempts)
    env.provider.find_errors.append(error(ErrorCode.UPSTREAM, "listing broke"))
    env.provider.found = "task-found"
    env.pipeline.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING and job.provider_task_id == "task-found"
    assert env.provider.names() == ["find_created", "find_created"]


def test_a_duplicate_made_after_a_lost_lease_is_cancelled_or_charged(env: Env) -> None:
    job_id = env.new_job()

    def another_worker_takes_over() -> None:
        env.store.update(job_id, lambda r: r.model_copy(update={"submit_lease_until": utcnow() + timedelta(hours=1)}))

    env.provider.on_create = another_worker_takes_over
    env.provider.cancel_results.append(False)  # already rendering
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["create", "cancel"]
    job = env.job(job_id)
    assert job.provider_task_id is None
    assert job.uncertain_cost_usd == job.cost_estimate_usd


def test_a_task_adopted_by_another_job_is_left_alone_and_the_job_looks_again(env: Env) -> None:
    job_id = env.new_job()
    other = env.new_job()

    def other_job_adopts_it() -> None:
        env.store.redis.set(keys.task_claim_key("byteplus", "task-1"), other)

    env.provider.on_create = other_job_adopts_it
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["create"]  # no cancel of a task in use
    job = env.job(job_id)
    assert job.status is JobStatus.SUBMITTING and job.submit_intent_at is not None
    assert [s[0] for s in env.dispatch.sent] == ["submit"]


def test_creates_the_provider_cannot_show_again_stop_at_uncertain_creates_max(env: Env) -> None:
    """Vertex AI lists no operations: every lost create answer may be a paid render nobody
    can fetch. The job stops buying more after UNCERTAIN_CREATES_MAX (2) of them."""
    job_id, _ = uncertain_job(env)
    env.provider.lookup_complete = False
    env.provider.create_results.append(error(ErrorCode.TIMEOUT, "read timed out"))  # answer lost again
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["find_created", "create"]
    env.store.update(job_id, lambda r: r.model_copy(update={"submit_lease_until": utcnow()}))
    env.pipeline.submit(job_id)
    assert env.provider.names() == ["find_created", "create", "find_created"]  # no third create
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.code is ErrorCode.SUBMIT_UNCERTAIN and "UNCERTAIN_CREATES_MAX" in job.error.message
    assert job.uncertain_creates == 2 and job.uncertain_cost_usd == 2 * job.cost_estimate_usd
    entry = _ledger_entry(env, job_id)
    assert entry is not None and entry.uncertain_usd == 2 * job.cost_estimate_usd


class RecordingLimits(ProviderLimits):
    """Fleet limits that record the back-offs asked for (a pipeline without a waiting room
    admits every job; the room's scripts are tests/unit/test_room.py's)."""

    def __init__(self) -> None:
        self.back_offs: list[float] = []

    def renew(self, provider: str, model: str, job_id: str) -> None:
        pass

    def stamp_create(self, provider: str, model: str, job_id: str) -> None:
        pass

    def back_off(self, provider: str, model: str, seconds: float) -> None:
        self.back_offs.append(seconds)


def test_a_create_is_counted_in_the_rate_window_when_it_is_sent_not_when_admitted(env: Env) -> None:
    room = env.use_room(ProviderLimits(env.store.redis, ModelLimits(5, 5), {}, 900.0))
    job_id = env.new_job()
    job = env.job(job_id)
    creates = keys.creates_key(job.provider, job.model)
    env.store.redis.zadd(creates, {"earlier-admission": 1.0})  # long out of the window
    assert room.take(job, now=time.time() - 30).go  # admitted half a minute ago (a busy worker)
    assert env.store.redis.zscore(creates, job_id) is not None
    env.pipeline.submit(job_id)
    assert env.job(job_id).status is JobStatus.RUNNING
    tokens: list[tuple[str, float]] = env.store.redis.zrange(creates, 0, -1, withscores=True)  # type: ignore[assignment]
    assert [t for t, _ in tokens if t.startswith(job_id)] != [job_id]  # the admission token is gone
    [(token, stamped)] = [(t, at) for t, at in tokens if t.startswith(job_id)]
    assert token.startswith(f"{job_id}:") and stamped > time.time() - 5  # stamped at the create


def test_a_long_retry_after_backs_the_model_off_for_at_most_retry_max_s(env: Env) -> None:
    limits = RecordingLimits()
    pipeline = Pipeline(
        settings=env.settings,
        store=env.store,
        catalog=env.catalog,
        providers=env._provider,
        storage=lambda: env.storage,
        dispatch=env.dispatch,
        limits=limits,
        rng=random.Random(1),
    )
    job_id = env.new_job()
    env.provider.create_results.append(error(ErrorCode.RATE_LIMITED, "slow down", retry_after=86400))
    pipeline.submit(job_id)
    assert limits.back_offs == [env.settings.retry_max_s]  # 300 s, not a day


# -------------------------------------------------------------------------- endpoints

OTHER_ENDPOINT = "http://127.0.0.1:8999/api/v3"  # a simulator, where the job's task does not exist
ARK_KEY = "ark-key-that-must-not-leak-93c1"


def mismatched_worker(env: Env) -> Pipeline:
    """A second worker on the same job store, configured for another BytePlus endpoint."""
    return Pipeline(
        settings=make_settings(byteplus_base_url=OTHER_ENDPOINT),
        store=env.store,
        catalog=env.catalog,
        providers=env._provider,
        storage=lambda: env.storage,
        dispatch=env.dispatch,
        rng=random.Random(7),
    )


def test_a_job_records_the_endpoint_its_task_was_created_with_never_the_key(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings(byteplus_api_key=ARK_KEY))
    job_id = env.running_job()
    job = env.job(job_id)
    mine = env.pipeline.endpoint("byteplus")
    assert (job.provider_endpoint, job.provider_fingerprint) == ("ark.ap-southeast.bytepluses.com", mine.fingerprint)
    assert ARK_KEY not in env.raw(job_id)


def test_a_worker_for_another_endpoint_leaves_the_poll_to_one_that_matches(env: Env) -> None:
    """Seen: jobs created on the demo's simulator, polled by a worker configured for another
    endpoint, all failed `not_found`."""
    job_id = env.running_job()
    env.provider.get_results.append(error(ErrorCode.NOT_FOUND, "task not found"))  # what the wrong endpoint says
    other = mismatched_worker(env)
    other.poll(job_id, 1)
    job = env.job(job_id)
    assert env.provider.calls == [] and job.status is JobStatus.RUNNING and job.error is None
    mine, theirs = env.pipeline.endpoint("byteplus"), other.endpoint("byteplus")
    assert job.waiting_for_endpoint == (
        f"waiting for a worker configured for endpoint host ark.ap-southeast.bytepluses.com (fingerprint "
        f"{mine.fingerprint}); this worker has endpoint host 127.0.0.1:8999 (fingerprint {theirs.fingerprint})"
    )
    [(kind, sent_id, seq, countdown)] = env.dispatch.take()
    assert (kind, sent_id, seq) == ("poll", job_id, 1) and 30 <= countdown <= 60  # the same poll, for another worker
    assert env.store.due_at(job_id) is not None  # the sweep knows it is waiting, not stranded

    env.provider.get_results[:] = [state(TaskStatus.RUNNING)]
    env.pipeline.poll(job_id, 1)  # the worker that matches
    assert env.provider.calls == [("get", "task-1")]
    job = env.job(job_id)
    assert job.waiting_for_endpoint is None and job.poll_seq == 2


def test_a_worker_for_another_endpoint_neither_cancels_nor_looks_up(env: Env) -> None:
    other = mismatched_worker(env)
    running = env.running_job()
    env.store.update(running, lambda r: r.model_copy(update={"cancel_requested_at": utcnow()}))
    other.cancel(running)
    assert env.provider.calls == [] and env.job(running).status is JobStatus.RUNNING

    intent = utcnow() - timedelta(minutes=5)
    uncertain = env.new_job(
        status=JobStatus.SUBMITTING,
        submit_intent_at=intent,
        submit_lease_until=intent,
        provider_endpoint="ark.ap-southeast.bytepluses.com",
        provider_fingerprint=env.pipeline.endpoint("byteplus").fingerprint,
    )
    env.dispatch.take()
    other.submit(uncertain)
    assert env.provider.calls == []  # no lookup, no second create elsewhere
    assert [kind for kind, *_ in env.dispatch.take()] == ["submit"]
    assert env.job(uncertain).status is JobStatus.SUBMITTING and env.job(uncertain).waiting_for_endpoint


def test_any_worker_creates_and_the_job_takes_its_endpoint(env: Env) -> None:
    other = mismatched_worker(env)
    job_id = env.new_job()
    other.submit(job_id)
    job = env.job(job_id)
    assert job.status is JobStatus.RUNNING and job.provider_endpoint == "127.0.0.1:8999"
    assert job.provider_fingerprint == other.endpoint("byteplus").fingerprint


def test_a_video_with_a_url_is_stored_by_any_worker(env: Env) -> None:
    job_id = env.downloading_job()
    mismatched_worker(env).store_video(job_id)
    assert env.job(job_id).status is JobStatus.SUCCEEDED


def test_a_job_no_matching_worker_takes_ends_after_its_follow_window(env: Env) -> None:
    job_id = env.running_job()
    gone = utcnow() - timedelta(seconds=env.settings.follow_past_deadline_s + 1)
    env.store.update(job_id, lambda r: r.model_copy(update={"deadline_at": gone}))
    mismatched_worker(env).poll(job_id, 1)
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None and job.error.code is ErrorCode.DEADLINE
    assert "no worker configured for endpoint host ark.ap-southeast.bytepluses.com" in job.error.message
    assert env.provider.calls == []
    # Its task may have finished (and been billed) where nobody here can ask: charged.
    assert job.uncertain_cost_usd == job.cost_estimate_usd and job.charged_usd == job.cost_estimate_usd
    assert any("was never followed to its end" in note for note in job.notes)


def _ledger_entry(env: Env, job_id: str) -> LedgerEntry | None:
    """The ledger's entry of one job, or None."""
    return next((e for e in Ledger(env.store.redis).entries() if e.job_id == job_id), None)


def test_a_store_over_its_soft_time_limit_is_retried_at_once(env: Env) -> None:
    """The transfer hit Celery's soft time limit: the attempt counts and the step is sent
    again with no delay (not after the back-off, nor after the lease and the sweep); once
    the attempts are used up the job fails as after any other failure."""
    job_id = env.downloading_job()
    _soft_time_limit(env)
    for attempt in (1, 2):
        with pytest.raises(StoreRetry) as retry:
            env.pipeline.store_video(job_id)
        assert retry.value.countdown == 0
        job = env.job(job_id)
        assert (job.status, job.store_attempts, job.store_lease_until) == (JobStatus.DOWNLOADING, attempt, None)
    env.pipeline.store_video(job_id)  # attempt 3 of STORE_MAX_ATTEMPTS=3
    job = env.job(job_id)
    assert job.status is JobStatus.FAILED and job.error is not None
    assert job.error.message.startswith("gave up after 3 attempts: SoftTimeLimitExceeded")


def test_other_store_failures_still_back_off(env: Env) -> None:
    job_id = env.downloading_job()
    _storage_step("put_video")(env)
    with pytest.raises(StoreRetry) as retry:
        env.pipeline.store_video(job_id)
    assert retry.value.countdown > 0
