"""The movie step (worker.steps.movie) and the submit step's gate of a waiting scene, on a
pipeline with fakes (tests/unit/test_pipeline.py's Env)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producer import api
from producer.api import VideoQueue
from tests.unit.test_pipeline import Env, make_settings
from videoqueue import keys, movies
from videoqueue.job import JobStatus, utcnow
from videoqueue.movies import MovieRecord, MovieState, Scene

MOVIE_ID = "0b6a0a53-7f57-4b8e-9a4f-51c5d8e0a7c2"


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path, make_settings())


def _movie(env: Env, *job_ids: str) -> MovieRecord:
    record = MovieRecord(
        id=MOVIE_ID,
        scenes=[Scene(index=i, job_ids=[job_id]) for i, job_id in enumerate(job_ids)],
        created_at=utcnow(),
    )
    pipe = env.store.redis.pipeline()
    movies.put_new(pipe, record)
    pipe.execute()
    return record


def test_a_waiting_scene_is_not_submitted_nor_due(env: Env) -> None:
    first = env.new_job()
    waiting = env.new_job(after_job=first, movie_id="m", scene=1)
    assert env.store.due_at(waiting) is None  # the sweep has nothing to recover
    env.pipeline.submit(waiting)
    assert env.job(waiting).status is JobStatus.QUEUED and env.provider.calls == []
    assert env.dispatch.take() == []


def test_a_scene_whose_video_is_gone_fails_the_movie_once_and_stops_the_rest(env: Env) -> None:
    # A scene that succeeded, but whose video is no longer in storage.
    first = env.new_job(movie_id=MOVIE_ID, status=JobStatus.SUCCEEDED, output_uri=(env.root / "gone.mp4").as_uri())
    second = env.new_job(after_job=first, movie_id=MOVIE_ID, scene=1)
    movie = _movie(env, first, second)

    assert env.pipeline.movie_advance(movie.id) == "release"  # which failed the movie

    stored = movies.get(env.store.redis, movie.id)
    assert stored is not None and stored.state is MovieState.FAILED
    assert stored.error is not None and "is gone" in stored.error
    assert env.job(second).status is JobStatus.CANCELLED and env.provider.calls == []
    assert env.store.redis.zcard(keys.MOVIES_DUE) == 1  # owed by the second scene's end, meanwhile
    assert env.pipeline.movie_advance(movie.id) == "none"  # a second run changes nothing
    assert env.store.redis.zcard(keys.MOVIES_DUE) == 0


class _RefusingApp:
    """A Celery app whose broker refuses every message."""

    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[None]:
        yield None

    def send_task(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")


def test_a_movie_the_broker_refuses_leaves_nothing_stored(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "producer_app_for", lambda settings: _RefusingApp())
    vq = VideoQueue(env.settings, store=env.store, catalog=env.catalog)
    scenes = [{"prompt": f"scene {i}", "duration": 5} for i in range(3)]
    with pytest.raises(api.EnqueueError):
        vq.submit_movie({"scenes": scenes})
    assert vq.list() == []
    assert env.store.redis.keys("*movie:*") == []
