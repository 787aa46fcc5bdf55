"""`make demo`: start a worker (and, without a BytePlus key, the simulator), enqueue three
Seedance jobs through the producer API, show their progress, and print for each job its
status, where its video is stored and what it cost; then a 3-scene movie (each scene from
the last frame of the one before, joined into one MP4) next to the clips.

The demo is a deployment of its own, namespace `demo` (VQ_DEMO_NAMESPACE to choose
another), whatever VQ_NAMESPACE the shell or `.env` names: a real fleet on the same Redis
never takes its jobs, and its worker never takes the fleet's."""

from __future__ import annotations

import os
import sys
import time
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.status import Status
from rich.table import Table

from producer import JobRecord, Settings, VideoQueue, VideoRequest
from producer.movie import Movie
from simulator.stack import ManagedProcess, free_port, start_simulator, start_worker
from videoqueue import namespace
from videoqueue.movies import MovieRecord, MovieState

RUN_DIR = Path(".run")
DEMO_NAMESPACE = "demo"
DEMO_REQUESTS = [
    VideoRequest(prompt="A red fox trotting through fresh snow at dawn, cinematic", duration=5, tags=("demo",)),
    VideoRequest(prompt="Product shot: a glass perfume bottle turning on a marble plinth", duration=4, ratio="1:1"),
    VideoRequest(prompt="Storyboard: a paper boat sailing down a rainy city gutter", duration=6, audio=False),
]

DEMO_MOVIE = Movie(
    name="paper boat",
    tags=("demo",),
    scenes=[
        VideoRequest(prompt="A paper boat is set down in a rainy city gutter", duration=4),
        VideoRequest(prompt="The paper boat rushes past parked bicycles in the stream", duration=4),
        VideoRequest(prompt="The paper boat drifts out into a calm harbour at sunset", duration=5),
    ],
)

console = Console()


def _table(records: list[JobRecord]) -> Table:
    table = Table("job", "status", "provider task", "estimate", "cost")
    for r in records:
        table.add_row(
            r.id[:8],
            r.status.value + (f" ({r.error.code}: {r.error.message})" if r.error else ""),
            r.provider_task_id or "-",
            f"${r.cost_estimate_usd:.4f}",
            f"${r.cost_usd:.4f}" if r.cost_usd is not None else "-",
        )
    return table


def main() -> int:
    """Run the demo; exit code 0 when all three jobs succeeded (2: a bad VQ_DEMO_NAMESPACE)."""
    demo_namespace = os.environ.get("VQ_DEMO_NAMESPACE") or DEMO_NAMESPACE
    if not namespace.is_valid(demo_namespace):
        print(f"error: VQ_DEMO_NAMESPACE {namespace.RULE}", file=sys.stderr)
        return 2
    settings = Settings(vq_namespace=demo_namespace)
    env = dict(os.environ) | {"VQ_NAMESPACE": demo_namespace}
    port = free_port()
    if settings.byteplus_api_key is None:
        # The simulator's stand-in images are on loopback: the URL guard trusts exactly it.
        allow = ",".join(filter(None, [settings.fetch_allow_hosts, f"127.0.0.1:{port}"]))
        settings = settings.model_copy(update={"fetch_allow_hosts": allow})
        env |= {"FETCH_ALLOW_HOSTS": allow}
    started: list[ManagedProcess] = []
    try:
        if settings.byteplus_api_key is None:
            console.print(f"No BYTEPLUS_API_KEY: using the simulator on port {port} (no cost, no network).")
            started.append(start_simulator(port, RUN_DIR, ["--latency", "6", "--latency-jitter", "4"]))
            env |= {
                "BYTEPLUS_BASE_URL": f"http://127.0.0.1:{port}/api/v3",
                "BYTEPLUS_API_KEY": "demo-simulator-key",
                "POLL_INITIAL_S": env.get("POLL_INITIAL_S", "5"),
                "POLL_MIN_S": env.get("POLL_MIN_S", "1"),
                "POLL_MAX_S": env.get("POLL_MAX_S", "3"),
            }
        else:
            console.print(f"BYTEPLUS_API_KEY is set: talking to {settings.byteplus_base_url} (real cost).")
        console.print(
            f"Namespace {demo_namespace!r}: keys {namespace.key_prefix(demo_namespace)}*, queues "
            f"{', '.join(namespace.queues(demo_namespace))}; other deployments on this Redis are not touched."
        )
        console.print(f"Videos go to {settings.storage_url}; worker log in {RUN_DIR / 'demo-worker.log'}.")
        started.append(start_worker("demo-worker", env, RUN_DIR, concurrency=2))

        vq = VideoQueue(settings)
        jobs = vq.submit_many(DEMO_REQUESTS)
        console.print(f"Enqueued {len(jobs)} jobs; estimated total ${sum(j.cost_estimate_usd for j in jobs):.4f}.")
        movie = vq.submit_movie(DEMO_MOVIE)
        console.print(f"Enqueued movie {movie.id[:8]} ({len(movie.scenes)} scenes, one after another).")
        with Live(_table(jobs), console=console, refresh_per_second=4) as live:
            done = vq.wait(
                [j.id for j in jobs], timeout=settings.job_deadline_s + 60, on_update=lambda r: live.update(_table(r))
            )
        with console.status("Rendering the movie's scenes one after another, then joining them...") as status:
            movie = _wait_movie(vq, movie.id, settings.job_deadline_s * len(movie.scenes) + 60, status)
    finally:
        for proc in reversed(started):
            proc.stop()

    print()
    for job in done:
        cost = f"${job.cost_usd:.4f}" if job.cost_usd is not None else "nothing charged"
        where = job.output_uri or (f"{job.error.code}: {job.error.message}" if job.error else "-")
        print(f"{job.id}  {job.status.value:<10} {cost:>9}  {where}")
    total = sum((j.cost_usd or Decimal(0) for j in done), Decimal(0))
    print(f"Total cost: ${total:.4f}")
    print()
    where = movie.output_uri or movie.error or movie.state.value
    movie_cost = f"${movie.total_cost_usd:.4f}" if movie.total_cost_usd is not None else "-"
    print(f"Movie {movie.id}  {movie.state.value:<10} {movie_cost:>9}  {where}")
    if movie.manifest_uri:
        print(f"  manifest: {movie.manifest_uri}")
    # The demo's jobs live in its own namespace: a shell on another one would not find them.
    print(
        f"Look them up with: VQ_NAMESPACE={demo_namespace} videoqueue status {' '.join(j.id[:8] for j in done)}"
        " (`make stack` keeps a local fleet running)"
    )
    ok = all(j.status.value == "succeeded" for j in done) and movie.state is MovieState.SUCCEEDED
    return 0 if ok else 1


def _wait_movie(vq: VideoQueue, movie_id: str, timeout: float, status: Status) -> MovieRecord:
    """The movie once it has ended (or as it is at `timeout` seconds), its progress shown."""
    give_up = time.monotonic() + timeout
    while True:
        movie = vq.movie(movie_id)
        if movie.state.is_final or time.monotonic() >= give_up:
            return movie
        done = sum(1 for j in vq.get_many([s.job_id for s in movie.scenes]) if j.status.value == "succeeded")
        status.update(f"Movie {movie_id[:8]}: {done} of {len(movie.scenes)} scenes rendered...")
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
