"""Movies on the producer side: a storyboard (`Movie`) validated, stored as one job per scene
in one transaction with the movie's record, and sent (videoqueue.movies holds the record and
what moves it on; the worker's movie step carries it out).

A storyboard file is JSON: `{"name": "...", "scenes": [{"prompt": "...", "duration": 5},
...], "continuity": true, "assemble": true, "scene_retries": 1, "tags": [...]}`; each scene
takes the fields of a VideoRequest.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from producer.request import VideoRequest
from videoqueue import keys, movies
from videoqueue.errors import InvalidRequestError
from videoqueue.job import JobRecord, utcnow
from videoqueue.movies import MovieRecord, MovieState, UnknownMovieError

if TYPE_CHECKING:
    from producer.api import PreparedJob, VideoQueue

MAX_SCENES = 100


class Movie(BaseModel):
    """A storyboard: `scenes` in order (each a VideoRequest; without an image of its own
    unless given, and with continuity none after the first may have one: it starts from
    the last frame of the scene before), `continuity` (scenes render one after another,
    each from the last frame of the one before; else all at once), `assemble` (join the
    stored scenes into `<movie_id>.mp4`), `scene_retries` (a failed scene is tried again
    this many times, each with a new seed), `name`, `tags` (added to every scene's)."""

    model_config = ConfigDict(extra="forbid")

    scenes: list[VideoRequest] = Field(min_length=1, max_length=MAX_SCENES)
    continuity: bool = True
    assemble: bool = True
    scene_retries: int = Field(default=1, ge=0, le=5)
    name: str | None = Field(default=None, max_length=200)
    tags: tuple[str, ...] = Field(default=(), strict=False)

    @classmethod
    def parse(cls, data: Movie | Mapping[str, Any]) -> Movie:
        """A Movie from itself or a dict of its fields (a storyboard file's JSON); raises
        InvalidRequestError naming each bad field (`scenes[2].duration`)."""
        if isinstance(data, Movie):
            return data
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            problems: dict[str, str] = {}
            for error in exc.errors():
                where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
                problems[where or "movie"] = error["msg"]
            raise InvalidRequestError(problems) from None

    @classmethod
    def from_file(cls, path: str | Path) -> Movie:
        """The storyboard in a JSON file; InvalidRequestError when it is not one."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequestError({"storyboard": f"{path}: {exc}"}) from None
        if not isinstance(data, dict):
            raise InvalidRequestError({"storyboard": f"{path}: not a JSON object"})
        return cls.parse(data)


def prepare(vq: VideoQueue, movie: Movie) -> tuple[MovieRecord, list[PreparedJob]]:
    """Validate every scene as a job would be (`VideoQueue.prepare_many`) and build the
    movie's record and its scenes' jobs, storing nothing. Raises InvalidRequestError naming
    each problem (`scenes[2].image_url`)."""
    requests = [scene.model_copy(update={"tags": (*movie.tags, *scene.tags)}) for scene in movie.scenes]
    problems: dict[str, str] = {}
    try:
        jobs = vq.prepare_many(requests)
    except InvalidRequestError as exc:
        raise InvalidRequestError({f"scenes{field}": why for field, why in exc.problems.items()}) from None
    for index, job in enumerate(jobs):
        request = job.record.request
        if request.client_job_id:
            problems[f"scenes[{index}].client_job_id"] = "a movie's scene takes no client job id (the movie has an id)"
        if not movie.continuity or index == 0:
            continue
        spec = vq.catalog.models[job.record.model]
        if "first_frame" not in spec.image_roles:
            problems[f"scenes[{index}].model"] = (
                f"{spec.id} takes no first-frame image, which continuity needs (choose a model that does, "
                "or set continuity to false)"
            )
        elif "first_frame" in request.images:
            problems[f"scenes[{index}].image_url"] = (
                "with continuity this scene starts from the last frame of the scene before: give it no image "
                "(or set continuity to false)"
            )
    if problems:
        raise InvalidRequestError(problems)
    movie_id = str(uuid.uuid4())
    previous: JobRecord | None = None
    for index, job in enumerate(jobs):
        record = job.record
        record.movie_id = movie_id
        record.scene = index
        if movie.continuity and previous is not None:
            record.after_job = previous.id
        previous = record
    made = MovieRecord(
        id=movie_id,
        name=movie.name,
        tags=movie.tags,
        continuity=movie.continuity,
        assemble=movie.assemble,
        scene_retries=movie.scene_retries,
        scenes=[movies.Scene(index=i, job_ids=[job.record.id]) for i, job in enumerate(jobs)],
        created_at=utcnow(),
    )
    return made, jobs


def submit(vq: VideoQueue, movie: Movie | Mapping[str, Any]) -> MovieRecord:
    """Validate `movie`, then store every scene's job and the movie's record in one
    transaction (the whole estimate reserved against the budgets: BudgetExceededError
    stores nothing) and send the scenes that may start: the first with continuity, all
    without. Raises InvalidRequestError before anything is stored; EnqueueError (nothing
    left stored) when the broker refuses the first messages."""
    from producer.api import EnqueueError

    record, jobs = prepare(vq, Movie.parse(movie))
    records = vq._upload([(job.record, job.images) for job in jobs])
    try:
        vq.store.create_many(records, vq.budget, also=lambda pipe: movies.put_new(pipe, record))
    except BaseException:
        vq._discard_inputs(records)
        raise
    try:
        vq._send([r for r in records if r.after_job is None])
    except EnqueueError:
        # The scenes nothing was sent for are withdrawn (`_send`); the waiting ones go too,
        # and the movie unless a scene was sent (without continuity): then it fails, naming
        # a withdrawn scene, when the advance of a sent one finds it gone.
        waiting = [r for r in records if r.after_job is not None]
        for job in waiting:
            vq.store.delete(job.id)
        vq._discard_inputs(waiting)
        if not any(vq.store.get_many([r.id for r in records])):
            vq.store.redis.delete(keys.movie_key(record.id))
        raise
    return record


def get(vq: VideoQueue, movie_id: str) -> tuple[MovieRecord, dict[str, JobRecord]]:
    """The movie and its scenes' jobs (by id). Raises UnknownMovieError."""
    movie = movies.get(vq.store.redis, movie_id)
    if movie is None:
        raise UnknownMovieError(f"no movie {movie_id}")
    ids = movie.job_ids()
    jobs = {job.id: job for job in vq.store.get_many(ids) if job is not None}
    return movie, jobs


def cancel(vq: VideoQueue, movie_id: str) -> MovieRecord:
    """Mark the movie cancelled and cancel its scenes not yet rendered (queued ones end at
    once, releasing their reservations; those at the provider are cancelled there). A movie
    that has ended stays as it is. Raises UnknownMovieError."""
    movie, _ = get(vq, movie_id)
    ended = movies.update(vq.store.redis, movie_id, movies.end(MovieState.CANCELLED, error="cancelled by the producer"))
    for scene in (ended or movie).scenes:
        if ended is not None:
            vq.cancel(scene.job_id)
    return ended or movie
