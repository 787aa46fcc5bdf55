"""Movies: an ordered list of scenes rendered as jobs, one after another (continuity: scene
n + 1 starts from the last frame of scene n) or all at once, then joined into one MP4.

A movie is a record `keys.movie_key(id)` (JSON, `MovieRecord`) naming each scene's jobs
(its attempts, the last the current one) and the jobs themselves: every scene is a job
stored at submit, in one transaction, so the whole movie's estimate is reserved against
the budgets then. With continuity every scene after the first is stored with `after_job`
set: the submit step leaves it alone until the movie's advance gives it its first frame
and clears it.

What moves a movie on is `videoqueue.movie_advance(movie_id)` (worker.steps.movie), owed by
every final move of a scene: the move's own script writes the movie into `keys.MOVIES_DUE`
(an outbox, as the webhooks' deliveries: a worker killed after the move loses nothing), the
worker sends the task after the move and the sweep sends those overdue. The advance is
idempotent: it reads the movie and its jobs and `decide`s one thing to do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict

from videoqueue import keys, retention
from videoqueue.errors import RequestError
from videoqueue.job import JobRecord, JobStatus, Usd, created_now, utcnow

ADVANCE_GRACE_S = 30.0
"""How long after a scene's final move the sweep sends the movie's advance itself, if it is
still owed: the worker sends it at once, so this is only a crash's."""


class UnknownMovieError(RequestError, LookupError):
    """No movie has this id (or its record expired)."""


class MovieState(StrEnum):
    """Where a movie is: `rendering` until every scene succeeded (and was joined), then
    `succeeded`; `failed` when a scene failed past its retries; `cancelled`."""

    RENDERING = "rendering"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for the states a movie never leaves."""
        return self is not MovieState.RENDERING


class Scene(BaseModel):
    """One scene: its place (0 first) and its jobs, first attempt first."""

    model_config = ConfigDict(extra="forbid")

    index: int
    job_ids: list[str]

    @property
    def job_id(self) -> str:
        """The job of its latest attempt."""
        return self.job_ids[-1]


class MovieRecord(BaseModel):
    """A movie as the store holds it. `total_cost_usd`: what its scenes' jobs were charged
    (every attempt), set when it ends; `output_uri`/`manifest_uri`: the joined MP4 and its
    manifest, with `assemble`."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str | None = None
    tags: tuple[str, ...] = ()
    continuity: bool = True
    assemble: bool = True
    scene_retries: int = 1
    scenes: list[Scene]
    state: MovieState = MovieState.RENDERING
    error: str | None = None
    output_uri: str | None = None
    manifest_uri: str | None = None
    total_cost_usd: Usd | None = None
    created_at: datetime
    finished_at: datetime | None = None

    def job_ids(self) -> list[str]:
        """Every job of the movie, scene by scene, attempts in order."""
        return [job_id for scene in self.scenes for job_id in scene.job_ids]


# --- what to do next ---------------------------------------------------------------------

Action = Literal["none", "wait", "release", "retry", "fail", "assemble", "finish"]


@dataclass(frozen=True)
class Decision:
    """What the advance does: `release` scene `scene` (its first frame from the scene
    before, then its submit), `retry` it (a new job, a new seed), `fail` the movie (`reason`
    names the scene and the provider's words), `assemble` or `finish` it (every scene
    succeeded), `wait` for a scene still rendering, or `none` (the movie has ended)."""

    action: Action
    scene: int | None = None
    reason: str = ""


def decide(movie: MovieRecord, jobs: Mapping[str, JobRecord]) -> Decision:
    """The one next thing to do for `movie`, from its scenes' current jobs (`jobs` by id;
    one missing fails the movie). Scenes are looked at in order: with continuity the
    first scene not yet succeeded decides; without, a failed scene decides before those
    still rendering."""
    if movie.state.is_final:
        return Decision("none")
    rendering = False
    for scene in movie.scenes:
        job = jobs.get(scene.job_id)
        if job is not None and job.status is JobStatus.SUCCEEDED:
            continue
        if job is None or job.status.is_final:
            why = failure_of(scene, job)
            if job is None or job.cancel_requested:
                return Decision("fail", scene.index, why)  # gone, or cancelled on purpose: not retried
            if len(scene.job_ids) <= movie.scene_retries:
                return Decision("retry", scene.index, why)
            return Decision("fail", scene.index, why)
        if job.after_job is not None and job.status is JobStatus.QUEUED:
            # Every scene before it succeeded (else the loop had stopped there).
            return Decision("release", scene.index)
        if movie.continuity:
            return Decision("wait", scene.index)
        rendering = True
    if rendering:
        return Decision("wait")
    return Decision("assemble" if movie.assemble else "finish")


def failure_of(scene: Scene, job: JobRecord | None) -> str:
    """Why a scene's latest job did not give a video, naming the scene (1 first, as people
    count), its job and the provider's reason."""
    attempts = len(scene.job_ids)
    tried = f" after {attempts} attempts" if attempts > 1 else ""
    if job is None:
        return f"scene {scene.index + 1} failed{tried}: its job {scene.job_id} is gone"
    reason = job.error.message if job.error else job.status.value
    code = f" ({job.error.provider_code})" if job.error and job.error.provider_code else ""
    return f"scene {scene.index + 1} (job {job.id}) {job.status.value}{tried}: {reason}{code}"


def scene_costs(movie: MovieRecord, jobs: Mapping[str, JobRecord]) -> list[Decimal]:
    """What each scene's jobs were charged (every attempt), scene by scene."""
    costs: list[Decimal] = []
    for scene in movie.scenes:
        total = Decimal(0)
        for job_id in scene.job_ids:
            job = jobs.get(job_id)
            if job is not None and job.charged_usd is not None:
                total += job.charged_usd
        costs.append(total)
    return costs


def manifest(
    movie: MovieRecord, jobs: Mapping[str, JobRecord], duration_s: float | None, copied: bool | None = None
) -> dict[str, Any]:
    """The movie's manifest (`<movie_id>.json`): each scene's index, job, cost; the total;
    the film's duration (s) and whether the scenes were joined by stream copy (`copied`,
    False: re-encoded)."""
    costs = scene_costs(movie, jobs)
    return {
        "movie_id": movie.id,
        "name": movie.name,
        "tags": list(movie.tags),
        "duration_s": duration_s,
        "stream_copy": copied,
        "scenes": [
            {"index": scene.index, "job_id": scene.job_id, "attempts": scene.job_ids, "cost_usd": float(cost)}
            for scene, cost in zip(movie.scenes, costs, strict=True)
        ],
        "total": float(sum(costs, Decimal(0))),
    }


# --- the records -------------------------------------------------------------------------


def get(client: redis.Redis, movie_id: str) -> MovieRecord | None:
    """The movie's record, or None."""
    raw: str | bytes | None = client.get(keys.movie_key(movie_id))  # type: ignore[assignment]
    return MovieRecord.model_validate_json(raw) if raw else None


def put_new(pipe: Any, movie: MovieRecord) -> None:
    """Queue the new movie's record on a MULTI pipeline (the scenes' create transaction)."""
    pipe.set(keys.movie_key(movie.id), movie.model_dump_json(exclude_defaults=True))


def update(
    client: redis.Redis, movie_id: str, mutate: Callable[[MovieRecord], MovieRecord | None]
) -> MovieRecord | None:
    """Compare-and-set of a movie's record (WATCH, GET, MULTI, SET): `mutate` sees the
    current record and returns the new one, or None to leave it; runs again if the record
    changed meanwhile. Returns what was stored, or None. An ended movie's record expires
    JOB_RETENTION_S later, as its scenes' records do."""
    key = keys.movie_key(movie_id)

    def attempt(pipe: Any) -> MovieRecord | None:
        raw = pipe.get(key)
        if not raw:
            return None
        changed = mutate(MovieRecord.model_validate_json(raw))
        if changed is None:
            return None
        if changed.state.is_final and changed.finished_at is None:
            changed.finished_at = utcnow()
        pipe.multi()
        pipe.set(key, changed.model_dump_json(exclude_defaults=True))
        seconds = retention.retention_s() if changed.state.is_final else 0
        if seconds > 0:  # an ended movie goes with its scenes' records (JOB_RETENTION_S)
            pipe.expire(key, seconds)
        return changed

    stored: MovieRecord | None = client.transaction(attempt, key, value_from_callable=True)  # type: ignore[arg-type,assignment]
    return stored


def end(state: MovieState, **changes: Any) -> Callable[[MovieRecord], MovieRecord | None]:
    """The mutation ending a movie still rendering in `state`, setting `changes`."""

    def mutate(movie: MovieRecord) -> MovieRecord | None:
        if movie.state.is_final:
            return None
        return movie.model_copy(update={**changes, "state": state})

    return mutate


# --- the outbox of advances -----------------------------------------------------------------


def owe_advance(multi: Any, movie_id: str) -> None:
    """Queue, with a scene's final move, that the movie's advance is owed."""
    multi.zadd(keys.MOVIES_DUE, {movie_id: time.time() + ADVANCE_GRACE_S})


def owed_at(client: redis.Redis, movie_id: str) -> float | None:
    """When the sweep sends the movie's owed advance, or None if none is owed."""
    score: float | None = client.zscore(keys.MOVIES_DUE, movie_id)  # type: ignore[assignment]
    return score


_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


def advanced(client: redis.Redis, movie_id: str, seen: float | None) -> None:
    """The advance owed when it read `seen` (`owed_at`) is done: take the movie out of the
    outbox, unless a later move owed it again meanwhile (the score changed)."""
    if seen is None:
        return
    client.eval(_SETTLE, 1, keys.MOVIES_DUE, movie_id, repr(seen))


def send_due(client: redis.Redis, send: Callable[[str], object], now: float, limit: int = 100) -> list[str]:
    """Send the advance of every movie owed one past its time (the sweep), each put back
    `ADVANCE_GRACE_S` later in case this one is lost too."""
    ids: list[str] = client.zrangebyscore(keys.MOVIES_DUE, "-inf", now, start=0, num=limit)  # type: ignore[assignment]
    sent: list[str] = []
    for member in ids:
        movie_id = member.decode() if isinstance(member, bytes) else member
        client.zadd(keys.MOVIES_DUE, {movie_id: now + ADVANCE_GRACE_S}, xx=True)
        send(movie_id)
        sent.append(movie_id)
    return sent


# --- scenes as jobs ----------------------------------------------------------------------


def attempt_id(movie_id: str, scene: int, attempt: int) -> str:
    """The job id of a retried scene's attempt (attempt 1 is the first retry): fixed, so an
    advance that runs twice makes the job once (the second create finds it stored)."""
    return str(uuid.uuid5(uuid.UUID(movie_id), f"scene {scene} attempt {attempt}"))


def retry_record(old: JobRecord, new_id: str, seed: int, budget_keys: Callable[[JobRecord], list[str]]) -> JobRecord:
    """A scene's next attempt: the old job's request with a new `seed`, a fresh queued
    record (the same estimate and time allowed), `retry_of` the old job. Its images are the
    old job's references: the caller copies uploaded ones under the new id."""
    now = created_now()
    record = JobRecord(
        id=new_id,
        status=JobStatus.QUEUED,
        provider=old.provider,
        model=old.model,
        request=old.request.model_copy(update={"seed": seed}),
        cost_estimate_usd=old.cost_estimate_usd,
        billed_unit=old.billed_unit,
        created_at=now,
        updated_at=now,
        deadline_at=now + (old.deadline_at - old.created_at),
        retry_of=old.id,
        movie_id=old.movie_id,
        scene=old.scene,
    )
    record.budget_keys = budget_keys(record)
    return record


def retried_by(new_id: str) -> Callable[[JobRecord], JobRecord | None]:
    """The mutation naming a scene's next attempt on the job it retries (`retried_by`, as
    `videoqueue retry` does); declined when already named."""

    def mutate(record: JobRecord) -> JobRecord | None:
        if new_id in record.retried_by:
            return None
        record.retried_by = [*record.retried_by, new_id]
        return record

    return mutate


def released(first_frame: Any, allowed: timedelta) -> Callable[[JobRecord], JobRecord | None]:
    """The mutation letting a waiting scene go: its first frame (`first_frame`, an
    ImageSource) set, `after_job` cleared, due now, and its deadline from now (it waited
    for the scenes before it). Declined when it is no longer waiting."""

    def mutate(record: JobRecord) -> JobRecord | None:
        if record.after_job is None or record.status is not JobStatus.QUEUED:
            return None
        now = utcnow()
        images = {**record.request.images, "first_frame": first_frame}
        record.request = record.request.model_copy(update={"images": images})
        record.after_job = None
        record.next_due_at = now
        record.deadline_at = now + allowed
        return record

    return mutate


def cancel_scene(now: datetime) -> Callable[[JobRecord], JobRecord | None]:
    """The mutation stopping a scene's job: a queued one (waiting or not) ends `cancelled`
    at once; one further on is marked `cancel_requested` (a worker cancels it at the
    provider: send TASK_CANCEL). Declined when final or already so marked."""

    def mutate(record: JobRecord) -> JobRecord | None:
        if record.status.is_final or record.cancel_requested:
            return None
        record.cancel_requested_at = now
        if record.status is JobStatus.QUEUED:
            record.status = JobStatus.CANCELLED
        return record

    return mutate


def public_dict(movie: MovieRecord, jobs: Mapping[str, JobRecord]) -> dict[str, Any]:
    """The movie for people and scripts: its record with each scene's job status, cost."""
    data = movie.model_dump(mode="json")
    for scene, out in zip(movie.scenes, data["scenes"], strict=True):
        job = jobs.get(scene.job_id)
        out["job_id"] = scene.job_id
        out["status"] = job.status.value if job else None
        out["cost_usd"] = float(job.charged_usd) if job and job.charged_usd is not None else None
        out["error"] = job.error.message if job and job.error else None
    data["estimate_usd"] = float(sum((j.cost_estimate_usd for i in movie.job_ids() if (j := jobs.get(i))), Decimal(0)))
    return data
