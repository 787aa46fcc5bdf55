"""The decisions of a movie's advance (videoqueue.movies.decide), the outbox of advances, a
scene's stored form and the gate of a waiting scene."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import fakeredis

from tests.unit.helpers import seedance_request
from videoqueue import keys, movies
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from videoqueue.movies import MovieRecord, MovieState, Scene
from videoqueue.resolved import ImageUpload


def job(job_id: str, status: JobStatus = JobStatus.QUEUED, **changes: Any) -> JobRecord:
    now = utcnow()
    return JobRecord(
        id=job_id,
        status=status,
        provider="byteplus",
        model="seedance-1-0-pro",
        request=seedance_request(),
        cost_estimate_usd=Decimal("0.5"),
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=1),
        **changes,
    )


def movie(*scene_jobs: list[str], continuity: bool = True, **changes: Any) -> MovieRecord:
    return MovieRecord(
        id="6f0d2b0e-4b7a-4f43-9a39-0d7f5b0c1a11",
        continuity=continuity,
        scenes=[Scene(index=i, job_ids=ids) for i, ids in enumerate(scene_jobs)],
        created_at=utcnow(),
        **changes,
    )


def failed(job_id: str) -> JobRecord:
    error = JobFailure(code=ErrorCode.CONTENT_FILTERED, message="sensitive content", provider_code="Sensitive")
    return job(job_id, JobStatus.FAILED, error=error)


def test_continuity_waits_for_the_scene_rendering() -> None:
    jobs = {"a": job("a", JobStatus.RUNNING), "b": job("b", after_job="a")}
    assert movies.decide(movie(["a"], ["b"]), jobs) == movies.Decision("wait", 0)


def test_a_scene_after_a_success_is_released() -> None:
    jobs = {"a": job("a", JobStatus.SUCCEEDED), "b": job("b", after_job="a"), "c": job("c", after_job="b")}
    assert movies.decide(movie(["a"], ["b"], ["c"]), jobs) == movies.Decision("release", 1)


def test_a_released_scene_is_waited_for() -> None:
    jobs = {"a": job("a", JobStatus.SUCCEEDED), "b": job("b"), "c": job("c", after_job="b")}
    assert movies.decide(movie(["a"], ["b"], ["c"]), jobs).action == "wait"


def test_a_failed_scene_is_retried_then_fails_the_movie_naming_it() -> None:
    first = movies.decide(movie(["a"], ["b"]), {"a": job("a", JobStatus.SUCCEEDED), "b": failed("b")})
    assert (first.action, first.scene) == ("retry", 1)
    jobs = {"a": job("a", JobStatus.SUCCEEDED), "b": failed("b"), "b2": failed("b2")}
    second = movies.decide(movie(["a"], ["b", "b2"]), jobs)
    assert (second.action, second.scene) == ("fail", 1)
    assert "scene 2 (job b2) failed after 2 attempts: sensitive content (Sensitive)" in second.reason


def test_no_retries_fails_at_once() -> None:
    decision = movies.decide(movie(["a"], scene_retries=0), {"a": failed("a")})
    assert decision.action == "fail"


def test_a_scene_cancelled_on_purpose_is_not_retried() -> None:
    cancelled = job("a", JobStatus.CANCELLED, cancel_requested_at=utcnow())
    assert movies.decide(movie(["a"], ["b"]), {"a": cancelled, "b": job("b", after_job="a")}).action == "fail"


def test_a_missing_job_fails_the_movie() -> None:
    assert movies.decide(movie(["a"]), {}).action == "fail"


def test_without_continuity_a_failure_decides_before_scenes_rendering() -> None:
    jobs = {"a": job("a", JobStatus.RUNNING), "b": failed("b")}
    assert movies.decide(movie(["a"], ["b"], continuity=False), jobs) == movies.Decision(
        "retry", 1, movies.failure_of(Scene(index=1, job_ids=["b"]), jobs["b"])
    )
    jobs["b"] = job("b", JobStatus.SUCCEEDED)
    assert movies.decide(movie(["a"], ["b"], continuity=False), jobs).action == "wait"


def test_all_succeeded_assembles_or_finishes() -> None:
    jobs = {"a": job("a", JobStatus.SUCCEEDED), "b": job("b", JobStatus.SUCCEEDED)}
    assert movies.decide(movie(["a"], ["b"]), jobs).action == "assemble"
    assert movies.decide(movie(["a"], ["b"], assemble=False), jobs).action == "finish"


def test_an_ended_movie_needs_nothing() -> None:
    jobs = {"a": failed("a")}
    assert movies.decide(movie(["a"], state=MovieState.CANCELLED), jobs).action == "none"


def test_manifest_totals_every_attempt() -> None:
    jobs = {
        "a": job("a", JobStatus.SUCCEEDED, cost_usd=Decimal("0.25")),
        "b": job("b", JobStatus.FAILED, cost_usd=Decimal("0.10")),
        "b2": job("b2", JobStatus.SUCCEEDED, cost_usd=Decimal("0.30")),
    }
    made = movies.manifest(movie(["a"], ["b", "b2"]), jobs, 10.0)
    assert [s["cost_usd"] for s in made["scenes"]] == [0.25, 0.4]
    assert made["total"] == 0.65
    assert [s["job_id"] for s in made["scenes"]] == ["a", "b2"]


def test_released_sets_the_first_frame_and_lets_the_scene_go() -> None:
    frame = ImageUpload(file="f.png", mime_type="image/png", bytes=3, sha256="0" * 64, uri="file:///x/f.png")
    waiting = job("b", after_job="a")
    out = movies.released(frame, timedelta(hours=1))(waiting.model_copy(deep=True))
    assert out is not None
    assert out.after_job is None and out.request.images["first_frame"] == frame and out.next_due_at is not None
    assert movies.released(frame, timedelta(hours=1))(out) is None  # a second run changes nothing


def test_cancel_scene_ends_a_queued_one_and_marks_one_at_the_provider() -> None:
    now = utcnow()
    assert movies.cancel_scene(now)(job("a")).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    running = movies.cancel_scene(now)(job("b", JobStatus.RUNNING))
    assert running is not None and running.status is JobStatus.RUNNING and running.cancel_requested
    assert movies.cancel_scene(now)(job("c", JobStatus.SUCCEEDED)) is None


def test_scene_fields_round_trip_the_stored_form_and_are_left_out_at_their_default() -> None:
    plain = job("a")
    assert '"mv"' not in plain.to_store_json()
    scene = job("b", movie_id="m", scene=2, after_job="a")
    raw = scene.to_store_json()
    assert '"mv":"m"' in raw and '"aj":"a"' in raw
    assert JobRecord.from_store_json(raw, scene.id) == scene


def test_the_outbox_sends_owed_advances_and_forgets_done_ones() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    pipe = client.pipeline()
    movies.owe_advance(pipe, "m1")
    pipe.execute()
    seen = movies.owed_at(client, "m1")
    assert seen is not None
    sent: list[str] = []
    assert movies.send_due(client, sent.append, seen - 1) == []
    assert movies.send_due(client, sent.append, seen + 1) == ["m1"]
    later = movies.owed_at(client, "m1")
    assert later is not None and later > seen  # put back in case that send is lost too
    movies.advanced(client, "m1", seen)  # a later owe came meanwhile: kept
    assert movies.owed_at(client, "m1") == later
    movies.advanced(client, "m1", later)
    assert client.zcard(keys.MOVIES_DUE) == 0


def test_update_is_a_compare_and_set() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    record = movie(["a"])
    pipe = client.pipeline()
    movies.put_new(pipe, record)
    pipe.execute()
    ended = movies.update(client, record.id, movies.end(MovieState.FAILED, error="scene 1 failed"))
    assert ended is not None and ended.finished_at is not None
    assert movies.update(client, record.id, movies.end(MovieState.CANCELLED)) is None
    stored = movies.get(client, record.id)
    assert stored is not None and stored.state is MovieState.FAILED and stored.error == "scene 1 failed"
