"""Provider callbacks: the URL and its token, the settings, the safety-net poll delay and
the receiver's answers (its app over Starlette's test client, the job store on fakeredis).
The receiver run as a process with real workers: tests/integration/test_callbacks.py."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient

from tests.unit.helpers import seedance_request, walk_to
from tests.unit.test_pipeline import Env, make_settings, state, succeeded
from videoqueue.job import JobRecord, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.settings import Settings, describe_invalid
from worker.callback_url import callback_token, callback_url, callbacks_on, token_matches
from worker.callbacks import create_app
from worker.providers.base import TaskStatus
from worker.schedule import safety_poll_delay

SECRET = "callback-test-secret"
BASE = "https://cb.example.com/hooks"


def settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {"_env_file": None, "callback_base_url": BASE, "callback_secret": SECRET}
    return Settings(**{**values, **changes})


def test_the_url_carries_the_job_id_and_its_hmac() -> None:
    url = callback_url(settings(), "job-1")
    token = callback_token(SECRET, "job-1")
    assert url == f"{BASE}/callbacks/byteplus/job-1/{token}"
    assert len(token) == 43 and "=" not in token and "/" not in token and "+" not in token
    assert token_matches(SECRET, "job-1", token)
    assert not token_matches(SECRET, "job-2", token)
    assert not token_matches("other-secret", "job-1", token)
    assert callback_url(Settings(_env_file=None), "job-1") is None


def test_callbacks_are_on_for_modelark_only_and_only_with_a_base_url() -> None:
    assert callbacks_on(settings(), "byteplus")
    assert not callbacks_on(settings(), "veo")
    assert not callbacks_on(Settings(_env_file=None), "byteplus")


def test_the_secret_is_required_with_the_base_url_and_never_shown() -> None:
    with pytest.raises(ValueError) as caught:
        Settings(_env_file=None, callback_base_url=BASE)
    assert "CALLBACK_SECRET" in describe_invalid(caught.value)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CALLBACK_BASE_URL"):
        Settings(_env_file=None, callback_base_url="cb.example.com", callback_secret=SECRET)
    shown = repr(settings())
    assert SECRET not in shown
    with pytest.raises(ValueError) as short:
        Settings(_env_file=None, callback_base_url=BASE, callback_secret="short-key")
    described = describe_invalid(short.value)  # type: ignore[arg-type]
    assert "at least 16 characters" in described and "short-key" not in described


def test_the_safety_poll_is_slow_and_never_past_the_deadline() -> None:
    rng = random.Random(1)
    s = settings(callback_safety_poll_s=300)
    assert 240 <= safety_poll_delay(s, rng) <= 360
    assert safety_poll_delay(s, rng, seconds_to_deadline=10) == 10.5


# -- the receiver ---------------------------------------------------------------------------


@pytest.fixture
def store() -> JobStore:
    return JobStore(fakeredis.FakeRedis(decode_responses=True))


@pytest.fixture
def sent() -> list[tuple[str, int]]:
    return []


@pytest.fixture
def client(store: JobStore, sent: list[tuple[str, int]]) -> TestClient:
    return TestClient(create_app(settings(), store, lambda job_id, seq: sent.append((job_id, seq))))


def running_job(store: JobStore, job_id: str = "job-1", task_id: str = "cgt-1", seq: int = 3) -> JobRecord:
    now = datetime.now(UTC)
    record = JobRecord(
        id=job_id,
        status=JobStatus.QUEUED,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request=seedance_request(),
        cost_estimate_usd=Decimal("0.1"),
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=2),
    )
    store.create_many([record])
    moved = walk_to(store, job_id, JobStatus.RUNNING, provider_task_id=task_id)
    assert moved is not None

    def at_seq(r: JobRecord) -> JobRecord:
        r.poll_seq = seq
        return r

    updated = store.update(job_id, at_seq)
    assert updated is not None
    return updated


def post(client: TestClient, job_id: str, body: Any, token: str | None = None) -> Any:
    token = token if token is not None else callback_token(SECRET, job_id)
    return client.post(f"/callbacks/byteplus/{job_id}/{token}", json=body)


def test_a_final_status_of_the_jobs_task_sends_its_poll_once(
    client: TestClient, store: JobStore, sent: list[tuple[str, int]]
) -> None:
    running_job(store)
    before = store.get("job-1")
    response = post(client, "job-1", {"id": "cgt-1", "status": "succeeded"})
    assert response.status_code == 200
    assert sent == [("job-1", 3)]
    # A duplicate sends nothing more.
    assert post(client, "job-1", {"id": "cgt-1", "status": "succeeded"}).status_code == 202
    assert sent == [("job-1", 3)]
    assert store.get("job-1") == before  # the callback changed nothing of the job


def test_a_bad_token_is_refused_whatever_the_job(
    client: TestClient, store: JobStore, sent: list[tuple[str, int]]
) -> None:
    running_job(store)
    other = callback_token(SECRET, "job-2")
    assert post(client, "job-1", {"id": "cgt-1", "status": "succeeded"}, token=other).status_code == 403
    assert post(client, "nope", {"id": "cgt-1", "status": "succeeded"}, token="x").status_code == 403
    assert sent == []


@pytest.mark.parametrize("body", [None, [], {"id": "cgt-1"}, {"id": 1, "status": "succeeded"}, "x"])
def test_a_body_that_is_not_a_task_is_400(client: TestClient, store: JobStore, body: Any) -> None:
    running_job(store)
    assert post(client, "job-1", body).status_code == 400
    token = callback_token(SECRET, "job-1")
    assert client.post(f"/callbacks/byteplus/job-1/{token}", content=b"\xff{").status_code == 400


def test_an_unknown_job_is_404(client: TestClient) -> None:
    assert post(client, "job-9", {"id": "cgt-1", "status": "succeeded"}).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"id": "cgt-other", "status": "succeeded"},
        {"id": "cgt-1", "status": "running"},
        {"id": "cgt-1", "status": "queued"},
    ],
)
def test_nothing_to_learn_sends_no_poll(
    client: TestClient, store: JobStore, sent: list[tuple[str, int]], body: dict[str, str]
) -> None:
    running_job(store)
    assert post(client, "job-1", body).status_code == 202
    assert sent == []


def test_a_job_not_running_gets_no_poll(client: TestClient, store: JobStore, sent: list[tuple[str, int]]) -> None:
    running_job(store)
    walk_to(store, "job-1", JobStatus.DOWNLOADING, video_url="http://x/v.mp4")
    assert post(client, "job-1", {"id": "cgt-1", "status": "succeeded"}).status_code == 202
    assert sent == []


def test_a_poll_not_sent_can_be_sent_by_the_next_callback(store: JobStore) -> None:
    sent: list[tuple[str, int]] = []
    broker_up = False

    def send(job_id: str, seq: int) -> None:
        if not broker_up:
            raise OSError("broker unreachable")
        sent.append((job_id, seq))

    client = TestClient(create_app(settings(), store, send))
    running_job(store)
    body = {"id": "cgt-1", "status": "succeeded"}
    assert post(client, "job-1", body).status_code == 503
    broker_up = True
    assert post(client, "job-1", body).status_code == 200
    assert sent == [("job-1", 3)]


def test_a_body_too_large_is_413(client: TestClient, store: JobStore) -> None:
    running_job(store)
    token = callback_token(SECRET, "job-1")
    assert client.post(f"/callbacks/byteplus/job-1/{token}", content=b" " * (65 * 1024)).status_code == 413


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"ok": True}


# -- the poll step with callbacks on (tests/unit/test_pipeline.py's scripted provider) -------


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, make_settings(callback_base_url=BASE, callback_secret=SECRET, callback_safety_poll_s=300))


def test_with_callbacks_the_regular_polls_of_modelark_jobs_are_the_safety_net(env: Env) -> None:
    job_id = env.new_job()
    env.pipeline.submit(job_id)
    assert env.dispatch.take() == [("poll", job_id, 1, 300.0)]
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.poll(job_id, 1)
    assert env.dispatch.take() == [("poll", job_id, 2, 300.0)]


def test_the_callbacks_poll_and_the_regular_one_make_one_chain(env: Env) -> None:
    job_id = env.running_job()
    # A callback (a lie, or a status that was not final after all) sends poll 1 at once:
    # it finds the task running and schedules poll 2.
    env.provider.get_results.append(state(TaskStatus.RUNNING))
    env.pipeline.poll(job_id, 1)
    assert env.dispatch.take() == [("poll", job_id, 2, 300.0)]
    assert env.job(job_id).poll_seq == 2
    # The regular poll 1, when due, is behind: dropped without a status call.
    env.pipeline.poll(job_id, 1)
    assert env.dispatch.take() == [] and env.provider.names() == ["get"]


def test_a_callbacks_poll_that_sees_the_end_leaves_the_regular_one_nothing_to_do(env: Env) -> None:
    job_id = env.running_job()
    env.provider.get_results.append(succeeded())
    env.pipeline.poll(job_id, 1)
    assert env.job(job_id).status is JobStatus.DOWNLOADING
    assert env.dispatch.take() == [("store", job_id, None, 0)]
    env.pipeline.store_video(job_id)
    assert env.job(job_id).status is JobStatus.SUCCEEDED
    env.dispatch.take()
    env.pipeline.poll(job_id, 1)  # the regular poll, due minutes later
    assert env.dispatch.take() == [] and env.provider.names() == ["get", "open_video"]
