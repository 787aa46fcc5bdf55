"""Client job ids as idempotency keys, and `VideoQueue.retry`, on fakeredis (the message to
the broker is the one thing left out: `_send` records what it would send)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from producer import BudgetExceededError, InvalidRequestError, JobStatus, Settings, VideoQueue, VideoRequest
from producer.api import RetryRefusedError
from tests.unit.helpers import seedance_request, walk_to
from videoqueue.jobstore import DuplicateClientJobIdError, JobStore, request_differences
from videoqueue.keys import client_key, job_key
from videoqueue.resolved import ImageUrl

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def redis_client(server: fakeredis.FakeServer) -> Any:
    return fakeredis.FakeRedis(server=server, decode_responses=True)


def _queue(redis_client: Any, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[VideoQueue, list[str]]:
    vq = VideoQueue(Settings(_env_file=None, **settings), store=JobStore(redis_client))
    sent: list[str] = []
    monkeypatch.setattr(vq, "_send", lambda records: sent.extend(r.id for r in records))
    return vq, sent


def _state(redis_client: Any) -> dict[str, Any]:
    return {key: redis_client.dump(key) for key in redis_client.keys("*")}


def test_an_identical_request_returns_the_stored_job_and_reserves_nothing_again(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq, sent = _queue(redis_client, monkeypatch, budget_daily_usd=Decimal(100))
    first = vq.submit(VideoRequest(prompt="a fox", client_job_id="order-1"))
    before = _state(redis_client)
    # Defaults filled in (model, resolution, the seed derived from the client id) are equal.
    again = vq.submit(VideoRequest(prompt="a fox", client_job_id="order-1", duration=5, provider="byteplus"))
    assert again.id == first.id and again.request == first.request
    assert _state(redis_client) == before  # no record, no reservation, no input added
    assert sent == [first.id]


def test_a_different_request_with_a_used_id_is_refused_naming_the_fields(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq, sent = _queue(redis_client, monkeypatch)
    first = vq.submit(VideoRequest(prompt="a fox", client_job_id="order-2"))
    before = _state(redis_client)
    with pytest.raises(DuplicateClientJobIdError) as info:
        vq.submit(VideoRequest(prompt="a fox", client_job_id="order-2", duration=10, ratio="9:16"))
    assert isinstance(info.value, InvalidRequestError)
    [conflict] = info.value.conflicts
    assert (conflict.client_job_id, conflict.job_id) == ("order-2", first.id)
    assert conflict.differences == {"duration": (5, 10), "ratio": ("16:9", "9:16")}
    assert info.value.problems["client_job_id"] == (
        f"client job id 'order-2' was already used by job {first.id} for a different request: "
        'duration (5 stored, 10 now), ratio ("16:9" stored, "9:16" now)'
    )
    assert _state(redis_client) == before and sent == [first.id]


def test_a_batch_returns_identical_items_and_refuses_whole_when_one_differs(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq, sent = _queue(redis_client, monkeypatch)
    first = vq.submit(VideoRequest(prompt="one", client_job_id="b-1"))
    jobs = vq.submit_many(
        [VideoRequest(prompt="one", client_job_id="b-1"), VideoRequest(prompt="two", client_job_id="b-2")]
    )
    assert jobs[0].id == first.id and jobs[1].id != first.id
    assert sent == [first.id, jobs[1].id]
    before = _state(redis_client)
    with pytest.raises(DuplicateClientJobIdError) as info:
        vq.submit_many(
            [
                VideoRequest(prompt="one", client_job_id="b-1"),
                VideoRequest(prompt="new"),
                VideoRequest(prompt="new too", client_job_id="b-3"),
                VideoRequest(prompt="two", client_job_id="b-2", duration=8),
            ]
        )
    assert [(c.client_job_id, list(c.differences)) for c in info.value.conflicts] == [("b-2", ["duration"])]
    assert _state(redis_client) == before and len(sent) == 2


def test_two_producers_racing_with_one_client_id_store_one_job(redis_client: Any, server: fakeredis.FakeServer) -> None:
    """Producer A reads the client id as free; B stores its job before A's EXEC; A's
    transaction is retried and returns B's job."""
    settings = Settings(_env_file=None)
    a = VideoQueue(settings, store=JobStore(redis_client))
    b = VideoQueue(settings, store=JobStore(fakeredis.FakeRedis(server=server, decode_responses=True)))
    request = VideoRequest(prompt="race", client_job_id="race-1")
    theirs = b.prepare(request).record
    ours = a.prepare(request).record
    raced: list[bool] = []
    real_pipeline = redis_client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_get = pipe.get

        def get(name: str) -> Any:
            value = real_get(name)
            if name == client_key("race-1") and not raced:
                raced.append(True)
                b.store.create_many([theirs])
            return value

        pipe.get = get
        return pipe

    redis_client.pipeline = pipeline
    existing = a.store.create_many([ours])
    assert raced and existing == {ours.id: theirs}
    assert redis_client.keys(job_key("*")) == [job_key(theirs.id)]


def test_request_differences_compare_every_field() -> None:
    stored = seedance_request(
        "x",
        model="m",
        images={"first_frame": ImageUrl(url="http://a/1.png")},
        tags=("a",),
    )
    assert request_differences(stored, stored.model_copy()) == {}
    assert request_differences(stored, stored.model_copy(update={"tags": ("a", "b"), "seed": 1})) == {
        "seed": (None, 1),
        "tags": (["a"], ["a", "b"]),
    }


def _fail(vq: VideoQueue, job_id: str, status: JobStatus = JobStatus.FAILED) -> None:
    assert walk_to(vq.store, job_id, status) is not None


def test_retry_makes_a_linked_job_with_the_same_request_and_inputs(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    image = tmp_path / "first.png"
    image.write_bytes(PNG)
    store = tmp_path / "store"
    vq, sent = _queue(redis_client, monkeypatch, storage_url=f"file://{store}")
    old = vq.submit(VideoRequest(prompt="a fox", image_file=str(image), client_job_id="r-1"))
    with pytest.raises(RetryRefusedError, match="it is queued, not finished"):
        vq.retry(old.id)
    _fail(vq, old.id)

    new = vq.retry(old.id)
    assert new.retry_of == old.id and new.status is JobStatus.QUEUED
    # The same request; the image is the new job's own copy, under its own key.
    assert new.request.json_fields() == old.request.json_fields()
    assert vq.get(old.id).retried_by == [new.id]
    assert (store / "inputs" / new.id / "first_frame.png").read_bytes() == PNG
    assert (store / "inputs" / old.id / "first_frame.png").read_bytes() == PNG
    assert redis_client.get(client_key("r-1")) == new.id  # the client id names the newest attempt
    assert vq.submit(VideoRequest(prompt="a fox", image_file=str(image), client_job_id="r-1")).id == new.id
    assert sent == [old.id, new.id]

    with pytest.raises(RetryRefusedError, match=f"already retried by {new.id}"):
        vq.retry(old.id)
    third = vq.retry(old.id, again=True)
    assert vq.get(old.id).retried_by == [new.id, third.id]

    _fail(vq, third.id, JobStatus.EXPIRED)
    (store / "inputs" / third.id / "first_frame.png").unlink()
    before = _state(redis_client)
    with pytest.raises(RetryRefusedError, match=r"first frame image 'first\.png' is no longer stored"):
        vq.retry(third.id)
    assert _state(redis_client) == before


def test_retry_refuses_a_succeeded_job_and_undoes_its_link_when_the_budget_refuses(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq, _ = _queue(redis_client, monkeypatch, budget_daily_usd=Decimal("0.5"))
    done = vq.submit(VideoRequest(prompt="done", duration=4, resolution="480p"))
    _fail(vq, done.id, JobStatus.SUCCEEDED)
    with pytest.raises(RetryRefusedError, match="it succeeded"):
        vq.retry(done.id)
    cancelled = vq.submit(VideoRequest(prompt="stopped", duration=4, resolution="480p"))
    _fail(vq, cancelled.id, JobStatus.CANCELLED)
    while True:
        try:
            vq.submit(VideoRequest(prompt="fill", duration=4, resolution="480p"))
        except BudgetExceededError:
            break
    with pytest.raises(BudgetExceededError):
        vq.retry(cancelled.id)
    assert vq.get(cancelled.id).retried_by == []
