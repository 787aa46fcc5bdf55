"""Movies end to end (videoqueue.movies, worker.steps.movie): real workers, the simulator over
HTTP (real decodable MP4s), storage local and S3 (moto over HTTP)."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from producer import BudgetExceededError, InvalidRequestError, JobStatus, VideoQueue
from producer.movie import Movie
from tests.integration.conftest import S3Server, Stack
from tests.integration.helpers import local_path, read_manifest, wait_for
from videoqueue.movies import MovieRecord, MovieState
from worker.media import last_frame_png, probe

pytestmark = pytest.mark.integration

DURATIONS = [4, 5, 4, 6]


def _storyboard(**changes: Any) -> Movie:
    scenes = [
        {"prompt": f"scene {i + 1}: a fox walks on through the snow", "duration": d} for i, d in enumerate(DURATIONS)
    ]
    return Movie.parse({"name": "fox", "scenes": scenes, **changes})


def _wait_movie(vq: VideoQueue, movie_id: str, timeout: float = 240) -> MovieRecord:
    wait_for(lambda: vq.movie(movie_id).state.is_final, timeout, f"movie {movie_id} to end")
    return vq.movie(movie_id)


def _creates(stack: Stack) -> dict[str, dict[str, Any]]:
    """What each create the simulator received carried, by prompt."""
    response = httpx.get(f"{stack.simulator.url}/_sim/creates", timeout=5)
    response.raise_for_status()
    return {c["prompt"]: c for c in response.json()}


def _data_uri_bytes(uri: str) -> bytes:
    head, _, data = uri.partition(",")
    assert head.startswith("data:image/png;base64"), head
    return base64.b64decode(data)


def _pixels(png: bytes) -> bytes:
    with av.open(io.BytesIO(png), "r") as container:
        return bytes(next(container.decode(video=0)).reformat(format="rgb24").planes[0])


def _check_movie(vq: VideoQueue, stack: Stack, movie: MovieRecord, read: Any) -> None:
    assert movie.state is MovieState.SUCCEEDED, movie.error
    jobs = vq.get_many([s.job_id for s in movie.scenes])
    assert [j.status for j in jobs] == [JobStatus.SUCCEEDED] * len(DURATIONS)
    # Each later scene was sent the last frame of the scene before as its first frame.
    creates = _creates(stack)
    first = creates[jobs[0].request.prompt]
    assert first["images"] == []
    for before, after in itertools.pairwise(jobs):
        sent = creates[after.request.prompt]["images"]
        assert [role for role, _ in sent] == ["first_frame"]
        assert before.output_uri is not None
        # ModelArk's own last frame, asked for at create (return_last_frame).
        assert before.last_frame_url is not None
        last_frame = httpx.get(before.last_frame_url, timeout=5).content
        assert _data_uri_bytes(sent[0][1]) == last_frame
        # ... which is the stored video's last frame, as the worker decodes it for Veo.
        assert _pixels(last_frame) == _pixels(last_frame_png(read(before.output_uri)))
    # The joined film decodes, has sound, and lasts as long as its scenes together.
    assert movie.output_uri is not None and movie.manifest_uri is not None
    assert movie.output_uri.endswith(f"{movie.id}.mp4") and movie.manifest_uri.endswith(f"{movie.id}.json")
    film = read(movie.output_uri)
    info = probe(film)
    assert info.has_audio
    scenes_s = sum(probe(read(j.output_uri or "")).duration_s for j in jobs)
    assert abs(info.duration_s - scenes_s) <= 0.1, (info.duration_s, scenes_s)
    with av.open(str(film), "r") as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    manifest = json.loads(read(movie.manifest_uri).read_bytes())
    assert [s["job_id"] for s in manifest["scenes"]] == [j.id for j in jobs]
    costs = [j.cost_usd for j in jobs]
    assert all(c is not None and c > 0 for c in costs)
    assert manifest["total"] == pytest.approx(float(sum(c for c in costs if c is not None)))
    assert movie.total_cost_usd == sum((c for c in costs if c is not None), Decimal(0))


def test_a_four_scene_movie_with_continuity_into_a_local_folder(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=2)
    vq = local_stack.queue()
    submitted = vq.submit_movie(_storyboard())
    jobs = vq.get_many([s.job_id for s in submitted.scenes])
    # Every scene is stored (its estimate reserved) at submit; only the first is sent.
    assert [j.after_job for j in jobs] == [None, *(j.id for j in jobs[:-1])]

    movie = _wait_movie(vq, submitted.id)

    _check_movie(vq, local_stack, movie, local_path)
    assert read_manifest(local_path(movie.manifest_uri or ""))["stream_copy"] is True  # one codec: copied


def test_a_four_scene_movie_with_continuity_into_s3(s3_stack: tuple[Stack, S3Server, str], tmp_path: Any) -> None:
    stack, s3, bucket = s3_stack
    stack.start_worker(concurrency=2)
    vq = stack.queue()
    client = s3.client()

    def read(uri: str) -> Any:
        key = uri.removeprefix(f"s3://{bucket}/")
        path = tmp_path / key.replace("/", "_")
        path.write_bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        return path

    movie = _wait_movie(vq, vq.submit_movie(_storyboard()).id)

    _check_movie(vq, stack, movie, read)
    assert json.loads(read(movie.manifest_uri or "").read_bytes())["stream_copy"] is True


def test_scenes_of_different_sizes_are_re_encoded_into_one_film(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=2)
    vq = local_stack.queue()
    board = _storyboard()
    board.scenes[2] = board.scenes[2].model_copy(update={"ratio": "1:1"})  # another size: no stream copy

    movie = _wait_movie(vq, vq.submit_movie(board).id)

    assert movie.state is MovieState.SUCCEEDED, movie.error
    assert read_manifest(local_path(movie.manifest_uri or ""))["stream_copy"] is False
    jobs = vq.get_many([s.job_id for s in movie.scenes])
    film = probe(local_path(movie.output_uri or ""))
    assert film.has_audio
    assert abs(film.duration_s - sum(probe(local_path(j.output_uri or "")).duration_s for j in jobs)) <= 0.1


def test_a_veo_movie_takes_each_first_frame_from_the_stored_video(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=2)
    vq = local_stack.queue()
    scenes = [
        {"prompt": f"veo scene {i + 1}: waves on a beach", "provider": "veo", "duration": d}
        for i, d in enumerate([4, 6, 4])
    ]

    movie = _wait_movie(vq, vq.submit_movie({"scenes": scenes}).id)

    assert movie.state is MovieState.SUCCEEDED, movie.error
    jobs = vq.get_many([s.job_id for s in movie.scenes])
    for before, after in itertools.pairwise(jobs):
        assert before.last_frame_url is None  # Veo gives none: the worker decodes the stored video
        response = httpx.get(f"{local_stack.simulator.url}/_sim/tasks/{after.provider_task_id}", timeout=30)
        response.raise_for_status()
        sent = response.json()["images_sha256"]["first_frame"]
        assert sent == hashlib.sha256(last_frame_png(local_path(before.output_uri or ""))).hexdigest()
    film = probe(local_path(movie.output_uri or ""))
    assert film.has_audio
    assert abs(film.duration_s - sum(probe(local_path(j.output_uri or "")).duration_s for j in jobs)) <= 0.1


def test_a_failing_scene_is_retried_then_fails_the_movie_naming_it(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=2)
    vq = local_stack.queue()
    board = _storyboard()
    scenes = [s.model_copy() for s in board.scenes[:3]]
    scenes[1] = scenes[1].model_copy(update={"prompt": "scene 2: the fox meets a wolf [sim:fail]"})
    submitted = vq.submit_movie(board.model_copy(update={"scenes": scenes}))

    movie = _wait_movie(vq, submitted.id)

    assert movie.state is MovieState.FAILED
    scene = movie.scenes[1]
    assert len(scene.job_ids) == 2  # retried once (scene_retries 1), with a new seed
    first, retry = vq.get_many(scene.job_ids)
    assert first.status is retry.status is JobStatus.FAILED
    assert retry.retry_of == first.id and retry.request.seed != first.request.seed
    assert first.retried_by == [retry.id]
    assert movie.error is not None and movie.error.startswith(f"scene 2 (job {retry.id}) failed after 2 attempts")
    assert "sensitive content" in movie.error
    # The scene after it never started, and its reservation is released.
    third = vq.get(movie.scenes[2].job_id)
    assert third.status is JobStatus.CANCELLED and third.provider_task_id is None
    assert vq.get(movie.scenes[0].job_id).status is JobStatus.SUCCEEDED


def test_cancel_mid_movie(local_stack: Stack) -> None:
    local_stack.start_worker(concurrency=2)
    vq = local_stack.queue()
    submitted = vq.submit_movie(_storyboard())
    first_id, second_id = submitted.scenes[0].job_id, submitted.scenes[1].job_id
    wait_for(lambda: vq.get(first_id).status is JobStatus.SUCCEEDED, 120, "scene 1 to render")
    wait_for(lambda: vq.get(second_id).after_job is None, 60, "scene 2 to be let go")

    cancelled = vq.cancel_movie(submitted.id)

    assert cancelled.state is MovieState.CANCELLED
    wait_for(lambda: all(j.status.is_final for j in vq.get_many(submitted.job_ids())), 120, "scenes to end")
    jobs = vq.get_many(submitted.job_ids())
    assert jobs[0].status is JobStatus.SUCCEEDED
    assert jobs[1].status in {JobStatus.CANCELLED, JobStatus.SUCCEEDED}  # it may have rendered meanwhile
    assert [j.status for j in jobs[2:]] == [JobStatus.CANCELLED] * 2
    assert all(j.provider_task_id is None for j in jobs[2:])  # never sent to the provider
    movie = vq.movie(submitted.id)
    assert movie.state is MovieState.CANCELLED and movie.output_uri is None
    # Nothing is left reserved: every job ended, so every reservation was settled.
    assert all(j.settled_at is not None for j in jobs)


def test_the_whole_movie_is_reserved_against_the_budget_at_submit(local_stack: Stack) -> None:
    vq = local_stack.queue(budget_daily_usd=Decimal("1.00"))
    estimate = sum(r.record.cost_estimate_usd for r in vq.prepare_many(_storyboard().scenes))
    assert Decimal("0.50") < estimate  # four scenes: more than half the cap

    with pytest.raises(BudgetExceededError):
        vq.submit_movie(_storyboard(tags=("over",)).model_copy(update={"scenes": _storyboard().scenes * 2}))
    assert vq.list() == [] and local_stack.keys("*movie:*") == []  # nothing stored

    movie = vq.submit_movie(_storyboard())  # no worker: nothing renders, all of it reserved
    with pytest.raises(BudgetExceededError):
        vq.submit_movie(_storyboard())
    cancelled = vq.cancel_movie(movie.id)
    assert cancelled.state is MovieState.CANCELLED
    assert [j.status for j in vq.get_many(movie.job_ids())] == [JobStatus.CANCELLED] * len(DURATIONS)
    vq.submit_movie(_storyboard())  # the cancel released every scene's reservation


def test_a_storyboard_is_checked_before_anything_is_stored(local_stack: Stack) -> None:
    vq = local_stack.queue()
    board = {
        "scenes": [
            {"prompt": "one", "duration": 5},
            {"prompt": "two", "duration": 5, "image_url": f"{local_stack.simulator.url}/_sim/image.png"},
            {"prompt": "three", "duration": 99},
        ]
    }
    with pytest.raises(InvalidRequestError) as raised:
        vq.submit_movie(board)
    assert "scenes[2].duration" in raised.value.problems
    with pytest.raises(InvalidRequestError) as raised:
        vq.submit_movie({"scenes": board["scenes"][:2]})
    assert "scenes[1].image_url" in raised.value.problems
    assert local_stack.keys("*movie:*") == []
    assert vq.list() == []


def test_the_cli_submits_follows_and_cancels_a_movie(local_stack: Stack, tmp_path: Path) -> None:
    local_stack.start_worker(concurrency=2)
    cli = str(Path(sys.executable).with_name("videoqueue"))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [cli, *args], env=local_stack.env(), capture_output=True, text=True, timeout=120, check=False
        )

    board = tmp_path / "storyboard.json"
    board.write_text(
        json.dumps({"name": "cli", "scenes": [{"prompt": "one", "duration": 4}, {"prompt": "two", "duration": 4}]})
    )
    submitted = run("movie", str(board))
    assert submitted.returncode == 0, submitted.stderr
    movie_id = submitted.stdout.strip()
    vq = local_stack.queue()
    movie = _wait_movie(vq, movie_id)
    assert movie.state is MovieState.SUCCEEDED, movie.error

    shown = run("movie", "status", movie_id, "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["state"] == "succeeded" and [s["status"] for s in data["scenes"]] == ["succeeded", "succeeded"]
    assert data["output_uri"] == movie.output_uri
    text = run("movie", "status", movie_id)
    assert f"movie {movie_id} 'cli': succeeded" in text.stdout and "total: $" in text.stdout

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"scenes": [{"prompt": "one", "duration": 99}]}))
    refused = run("movie", str(bad))
    assert refused.returncode == 2 and "invalid scenes[0].duration" in refused.stderr
    ended = run("movie", "cancel", movie_id)  # an ended movie stays as it is
    assert ended.returncode == 0 and ended.stdout.strip() == f"movie {movie_id}: succeeded"
    assert run("movie", "status", "no-such-movie").returncode == 2
