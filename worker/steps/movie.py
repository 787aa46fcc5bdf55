"""The movie step: `videoqueue.movie_advance(movie_id)`, owed by every final move of a scene
(videoqueue.movies). It reads the movie and its jobs and carries out what
`movies.decide` says, again until there is nothing left to do now: let the next scene go
with the last frame of the one before as its first frame, retry a failed scene as a new
job with a new seed, fail the movie (stopping the scenes not yet rendered), or join the
stored scenes into `<movie_id>.mp4` with its manifest `<movie_id>.json`.

Idempotent: each action is a compare-and-set or writes what a second run writes again (the
first frame to the same key, a retried scene's job under a fixed id).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from videoqueue import inputs, movies
from videoqueue.errors import BudgetExceededError, StorageError
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobExistsError
from videoqueue.movies import Decision, MovieRecord, MovieState
from videoqueue.resolved import ImageRole, ImageSource, ImageUpload
from worker import media
from worker.download import stream_url
from worker.providers import download_client
from worker.providers.base import ProviderError
from worker.steps.base import log
from worker.steps.cancel import CancelStep

_CHUNK = 1 << 20
_PNG = b"\x89PNG\r\n\x1a\n"


class VideoGoneError(StorageError):
    """A scene's stored video is no longer where its record says."""


class MovieStep(CancelStep):
    """Moves movies on; a cancel-step subclass because a failed movie stops its scenes
    still at the provider."""

    def movie_advance(self, movie_id: str) -> str:
        """Do what the movie needs now; returns the actions carried out, comma separated, or
        the decision that stopped it (`wait`, `none`), for Flower."""
        client = self.store.redis
        seen = movies.owed_at(client, movie_id)
        done: list[str] = []
        action = "none"
        for _ in range(64):  # each round settles one scene; a movie has far fewer
            movie = movies.get(client, movie_id)
            if movie is None:
                break
            jobs = self._jobs(movie)
            decision = movies.decide(movie, jobs)
            action = decision.action
            if action in ("none", "wait"):
                break
            self._carry_out(movie, jobs, decision)
            done.append(action)
            if action in ("fail", "assemble", "finish"):
                break
        movies.advanced(client, movie_id, seen)
        return ",".join(done) or action

    def _jobs(self, movie: MovieRecord) -> dict[str, JobRecord]:
        ids = movie.job_ids()
        return {job.id: job for job in self.store.get_many(ids) if job is not None}

    def _carry_out(self, movie: MovieRecord, jobs: dict[str, JobRecord], decision: Decision) -> None:
        log.info("movie advance", extra={"movie_id": movie.id, "action": decision.action, "scene": decision.scene})
        try:
            self._do(movie, jobs, decision)
        except (media.MediaError, VideoGoneError) as exc:
            # Nothing a later run could change: a stored scene that cannot be decoded or joined, or is gone.
            self._fail_movie(movie, jobs, f"cannot {decision.action} the movie: {exc}")

    def _do(self, movie: MovieRecord, jobs: dict[str, JobRecord], decision: Decision) -> None:
        if decision.action == "release" and decision.scene is not None:
            self._release(movie, jobs, decision.scene)
        elif decision.action == "retry" and decision.scene is not None:
            self._retry(movie, jobs, decision.scene)
        elif decision.action == "fail":
            self._fail_movie(movie, jobs, decision.reason)
        elif decision.action == "assemble":
            self._assemble(movie, jobs)
        elif decision.action == "finish":
            total = sum(movies.scene_costs(movie, jobs), Decimal(0))
            movies.update(self.store.redis, movie.id, movies.end(MovieState.SUCCEEDED, total_cost_usd=total))

    # --- continuity ----------------------------------------------------------------------

    def _release(self, movie: MovieRecord, jobs: dict[str, JobRecord], index: int) -> None:
        """Give scene `index` the last frame of the scene before as its first frame, then
        send its submit."""
        job = jobs[movie.scenes[index].job_id]
        before = jobs[movie.scenes[index - 1].job_id]
        png = self._last_frame(before)
        key = inputs.input_object_key(job.id, "first_frame", "image/png")
        uri = self.inputs.put(key, png, "image/png")
        source = ImageUpload(
            file=f"scene-{index}-first-frame.png",
            mime_type="image/png",
            bytes=len(png),
            sha256=hashlib.sha256(png).hexdigest(),
            uri=uri,
        )
        self.store.update(job.id, movies.released(source, job.deadline_at - job.created_at))
        # Sent again by a second run: the submit step's lease makes one create.
        self.dispatch.submit(job.id, countdown=0.0)

    def _last_frame(self, job: JobRecord) -> bytes:
        """The last frame of a stored scene, as PNG: the provider's (ModelArk returns it when
        asked, `JobRecord.last_frame_url`), else, or if it is gone, decoded from the stored
        video (Veo)."""
        if job.last_frame_url:
            try:
                with stream_url(download_client(self.settings), job.last_frame_url) as stream:
                    png = b"".join(stream.chunks)
                if png.startswith(_PNG):
                    return png
                log.warning("the provider's last frame is no PNG: decoding the video", extra={"job_id": job.id})
            except ProviderError as exc:
                log.warning(
                    "the provider's last frame is gone: decoding the video",
                    extra={"job_id": job.id, "reason": str(exc)},
                )

        if not job.output_uri:
            raise VideoGoneError(f"job {job.id} succeeded without a stored video")
        data = self.inputs.read(job.output_uri)
        if data is None:
            raise VideoGoneError(f"the video of job {job.id} is gone from {job.output_uri}")
        with tempfile.TemporaryDirectory(prefix="vq-movie-") as tmp:
            path = Path(tmp) / "scene.mp4"
            path.write_bytes(data)
            return media.last_frame_png(path)

    # --- failures --------------------------------------------------------------------------

    def _retry(self, movie: MovieRecord, jobs: dict[str, JobRecord], index: int) -> None:
        """Scene `index` again as a new job (its id fixed by the attempt), a new seed, its
        uploaded images copied under the new id; recorded on the movie, then sent."""
        scene = movie.scenes[index]
        old = jobs[scene.job_id]
        new_id = movies.attempt_id(movie.id, index, len(scene.job_ids))
        policy = self.settings.budget_policy()
        record = movies.retry_record(
            old, new_id, self.rng.randrange(1, 2**31), policy.keys_for if policy is not None else lambda _r: []
        )
        images: dict[ImageRole, ImageSource] = dict(record.request.images)
        for role, source in record.request.images.items():
            if isinstance(source, ImageUpload) and source.uri:
                data = self.inputs.read(source.uri)
                if data is None:
                    self._fail_movie(movie, jobs, f"{movies.failure_of(scene, old)}; its input image is gone")
                    return
                key = inputs.input_object_key(new_id, role, source.mime_type)
                images[role] = source.model_copy(update={"uri": self.inputs.put(key, data, source.mime_type)})
        record.request = record.request.model_copy(update={"images": images})
        try:
            self.store.create_many([record], policy)
        except JobExistsError:
            pass  # a run before this one made it
        except BudgetExceededError as exc:
            self._fail_movie(movie, jobs, f"{movies.failure_of(scene, old)}; its retry is over budget: {exc}")
            return

        def add(current: MovieRecord) -> MovieRecord | None:
            ids = current.scenes[index].job_ids
            if new_id in ids or ids[-1] != old.id:
                return None
            current.scenes[index].job_ids.append(new_id)
            return current

        movies.update(self.store.redis, movie.id, add)
        self.store.update(old.id, movies.retried_by(new_id))
        log.info("movie scene retried", extra={"movie_id": movie.id, "scene": index, "job_id": new_id})
        self.dispatch.submit(new_id, countdown=0.0)

    def _fail_movie(self, movie: MovieRecord, jobs: dict[str, JobRecord], reason: str) -> None:
        """End the movie `failed` with `reason`, then stop every scene not yet rendered
        (their final moves release their budget reservations)."""
        if movies.update(self.store.redis, movie.id, movies.end(MovieState.FAILED, error=reason)) is None:
            return
        log.warning("movie failed", extra={"movie_id": movie.id, "reason": reason})
        self.stop_scenes(movie)
        total = sum(movies.scene_costs(movie, self._jobs(movie)), Decimal(0))
        movies.update(self.store.redis, movie.id, lambda m: m.model_copy(update={"total_cost_usd": total}))

    def stop_scenes(self, movie: MovieRecord) -> None:
        """Cancel the movie's scenes still active: queued ones end at once, those at the
        provider are cancelled there (the cancel step)."""
        now = utcnow()
        for scene in movie.scenes:
            stopped = self.store.update(scene.job_id, movies.cancel_scene(now))
            if stopped is not None and stopped.status is not JobStatus.CANCELLED:
                self.cancel(stopped.id)

    # --- assembly ----------------------------------------------------------------------------

    def _assemble(self, movie: MovieRecord, jobs: dict[str, JobRecord]) -> None:
        """Join the stored scenes into `<movie_id>.mp4` and write `<movie_id>.json`."""
        storage = self.storage()
        with tempfile.TemporaryDirectory(prefix="vq-movie-") as tmp:
            paths: list[Path] = []
            for scene in movie.scenes:
                job = jobs[scene.job_id]
                data = self.inputs.read(job.output_uri) if job.output_uri else None
                if data is None:
                    raise VideoGoneError(f"the video of scene {scene.index + 1} (job {job.id}) is gone")
                path = Path(tmp) / f"scene-{scene.index:03d}.mp4"
                path.write_bytes(data)
                paths.append(path)
            out = Path(tmp) / "movie.mp4"
            joined = media.join(paths, out)
            stored = storage.put_video(f"{movie.id}.mp4", _chunks(out), out.stat().st_size)
        manifest = movies.manifest(movie, jobs, joined.duration_s, joined.copied)
        manifest_uri = storage.put_json(f"{movie.id}.json", manifest).uri
        total = sum(movies.scene_costs(movie, jobs), Decimal(0))
        movies.update(
            self.store.redis,
            movie.id,
            movies.end(MovieState.SUCCEEDED, output_uri=stored.uri, manifest_uri=manifest_uri, total_cost_usd=total),
        )
        log.info("movie assembled", extra={"movie_id": movie.id, "uri": stored.uri, "copied": joined.copied})


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            yield chunk
