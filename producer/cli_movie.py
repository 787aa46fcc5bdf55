"""`videoqueue movie STORYBOARD.json | status ID | cancel ID`: render a storyboard into one
film (producer/movie.py), follow it, stop it.

`register(app)` adds the `movie` group to a Typer app.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from producer.api import VideoQueue
from producer.movie import Movie
from videoqueue.budget import BudgetExceededError
from videoqueue.commands import fail as _fail
from videoqueue.errors import InvalidRequestError
from videoqueue.movies import UnknownMovieError, public_dict


class _MovieGroup(TyperGroup):
    """`movie FILE` is `movie submit FILE`: a first word that names no subcommand is the
    storyboard."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["submit", *args]
        return super().resolve_command(ctx, args)


movie_app = typer.Typer(
    cls=_MovieGroup,
    help=(
        "Movies: `videoqueue movie STORYBOARD.json` renders a storyboard's scenes (each from the last frame "
        "of the one before) and joins them; `status`, `cancel` follow and stop one."
    ),
)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def submit(
    storyboard: Annotated[str, typer.Argument(help='Storyboard JSON: {"scenes": [{"prompt": ...}, ...], ...}.')],
    as_json: Annotated[bool, typer.Option("--json", help="Print the movie as JSON.")] = False,
) -> None:
    """Submit a storyboard: every scene stored as a job (the whole estimate reserved), the
    first sent (all of them without continuity). Prints the movie id."""
    vq = VideoQueue()
    try:
        movie = vq.submit_movie(Movie.from_file(storyboard))
    except InvalidRequestError as exc:
        for field, message in exc.problems.items():
            sys.stderr.write(f"invalid {field}: {message}\n")
        raise _fail("nothing was enqueued") from None
    except BudgetExceededError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        _print_json(movie.model_dump(mode="json"))
        return
    sys.stdout.write(movie.id + "\n")


def status(
    movie_id: Annotated[str, typer.Argument(help="Movie id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the movie as JSON.")] = False,
) -> None:
    """A movie: its state, each scene's job, status and cost, the output and total cost."""
    from producer import movie as movies_api

    vq = VideoQueue()
    try:
        movie, jobs = movies_api.get(vq, movie_id)
    except UnknownMovieError as exc:
        raise _fail(str(exc)) from None
    data = public_dict(movie, jobs)
    if as_json:
        _print_json(data)
        return
    title = f" {movie.name!r}" if movie.name else ""
    sys.stdout.write(f"movie {movie.id}{title}: {movie.state.value}\n")
    for scene in data["scenes"]:
        cost = "-" if scene["cost_usd"] is None else f"${scene['cost_usd']:.4f}"
        tries = f" (attempt {len(scene['job_ids'])})" if len(scene["job_ids"]) > 1 else ""
        sys.stdout.write(f"  scene {scene['index'] + 1}: {scene['job_id']}  {scene['status']}  {cost}{tries}\n")
    if movie.error:
        sys.stdout.write(f"error: {movie.error}\n")
    if movie.output_uri:
        sys.stdout.write(f"output: {movie.output_uri}\nmanifest: {movie.manifest_uri}\n")
    if movie.total_cost_usd is not None:
        sys.stdout.write(f"total: ${movie.total_cost_usd:.4f}\n")
    else:
        sys.stdout.write(f"estimate: ${data['estimate_usd']:.4f}\n")


def cancel(movie_id: Annotated[str, typer.Argument(help="Movie id.")]) -> None:
    """Cancel a movie: the scenes not yet rendered are cancelled and their reservations
    released."""
    vq = VideoQueue()
    try:
        movie = vq.cancel_movie(movie_id)
    except UnknownMovieError as exc:
        raise _fail(str(exc)) from None
    sys.stdout.write(f"movie {movie.id}: {movie.state.value}\n")


def register(app: typer.Typer) -> None:
    """Add `movie FILE`, `movie status` and `movie cancel` to `app`."""
    movie_app.command(name="submit")(submit)
    movie_app.command(name="status")(status)
    movie_app.command(name="cancel")(cancel)
    app.add_typer(movie_app, name="movie")
