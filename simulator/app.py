"""The Starlette application: ModelArk and Vertex AI Veo APIs, video files and ``/_sim``
control endpoints."""

from __future__ import annotations

import asyncio
import hashlib
from json import JSONDecodeError
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from simulator.ark import ArkSim, Task, ark_routes
from simulator.callbacks import sending_callbacks
from simulator.clips import Shape, clip, last_frame_png, variant_of
from simulator.config import SimConfig
from simulator.mp4 import UNDECODABLE, task_video, video_response
from simulator.scheduler import Job
from simulator.timeline import timeline_routes
from simulator.vertex import vertex_routes

# The 8-byte PNG signature, an IHDR chunk of a 1x1 image, and IEND: enough to sniff as PNG.
SAMPLE_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class ApiDelay:
    """ASGI middleware: waits `api_delay` seconds before every provider API call (not
    the /_sim control endpoints, not video files or Cloud Storage objects)."""

    def __init__(self, app: ASGIApp, sim: ArkSim) -> None:
        self.app = app
        self.sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        delay = self.sim.config.api_delay
        if delay and scope["type"] == "http" and not scope["path"].startswith(("/_sim", "/files/", "/storage/")):
            await asyncio.sleep(delay)
        await self.app(scope, receive, send)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def media_digests(sim: ArkSim, images: dict[str, str], job: object) -> dict[str, Any]:
    """What `/_sim/tasks/{id}` adds to a task's timeline entry, to compare frames across
    tasks: `images_sha256` (by role, the sha256 of each image the create sent: inline
    ones, and links to a last frame this simulator serves; None for other links),
    `video_sha256` and `last_frame_sha256` of its clip (None if it has no clip yet)."""
    digests: dict[str, str | None] = {}
    for role, seen in images.items():
        if seen.startswith("sha256:"):
            digests[role] = seen.removeprefix("sha256:")
            continue
        name = urlsplit(seen).path.rpartition("/files/")[2]
        linked = sim.tasks.get(name.removesuffix(".png")) if name.endswith(".png") else None
        if isinstance(linked, Task) and linked.spec.return_last_frame:
            digests[role] = _sha256(last_frame_png(linked.shape, variant_of(linked.id)))
        else:
            digests[role] = None
    shape = getattr(job, "shape", None)
    found: dict[str, Any] = {"images_sha256": digests, "video_sha256": None, "last_frame_sha256": None}
    if isinstance(job, Job) and isinstance(shape, Shape):
        variant = variant_of(job.id)
        found["video_sha256"] = _sha256(clip(shape, variant))
        found["last_frame_sha256"] = _sha256(last_frame_png(shape, variant))
    return found


def create_app(config: SimConfig | None = None) -> Starlette:
    """Build a simulator app; its state lives in ``app.state.sim``, an ArkSim whose
    scheduler the Vertex AI routes share."""
    sim = ArkSim(config or SimConfig())

    async def video(request: Request) -> Response:
        sim.advance()
        task = sim.tasks.get(request.path_params["task_id"])
        if not isinstance(task, Task) or task.status != "succeeded":
            return JSONResponse({"error": {"code": "NoSuchKey"}}, status_code=404)
        if request.method == "GET":
            sim.counters["video_downloads_total"] += 1
        # The first request for a shape makes its clips (about 0.1 s a clip): off the loop.
        if task.spec.markers.badvideo:
            data = UNDECODABLE
        else:
            data = await asyncio.to_thread(task_video, task.id, task.shape)
        return video_response(data, sim.config.video_pad_bytes, sim.config.video_trickle_s)

    async def last_frame(request: Request) -> Response:
        sim.advance()
        task = sim.tasks.get(request.path_params["task_id"])
        if not isinstance(task, Task) or task.status != "succeeded" or not task.spec.return_last_frame:
            return JSONResponse({"error": {"code": "NoSuchKey"}}, status_code=404)
        png = await asyncio.to_thread(last_frame_png, task.shape, variant_of(task.id))
        return Response(png, media_type="image/png")

    async def image(request: Request) -> Response:
        # A stand-in for the images users link to as first or last frames.
        return Response(SAMPLE_PNG, media_type="image/png")

    async def task_media(request: Request) -> Response:
        entry = sim.tasks_timeline().get(request.path_params["task_id"])
        if entry is None:
            return JSONResponse({"error": "no such task"}, status_code=404)
        job = next((j for j in sim.tasks.values() if j.public_id == request.path_params["task_id"]), None)
        media = await asyncio.to_thread(media_digests, sim, entry["images"], job)
        return JSONResponse({**entry, **media})

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def creates(request: Request) -> Response:
        # What each ModelArk create received, oldest first: its prompt and images (role,
        # URL or data: URI), for tests that check what a worker sent (a movie's frames).
        return JSONResponse(
            [
                {"id": task.id, "prompt": task.spec.prompt, "images": [list(image) for image in task.spec.images]}
                for task in sim.ark_tasks()
            ]
        )

    async def reset(request: Request) -> Response:
        sim.reset()
        return JSONResponse({})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def get_config(request: Request) -> Response:
        return JSONResponse(sim.config.public_dict())

    async def set_config(request: Request) -> Response:
        try:
            changes = await request.json()
        except (JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "body is not valid JSON"}, status_code=400)
        if not isinstance(changes, dict):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        try:
            new = sim.update_config(changes)
        except ValidationError as err:
            detail = err.errors(include_url=False, include_input=False, include_context=False)
            return JSONResponse({"error": detail}, status_code=400)
        return JSONResponse(new.public_dict())

    routes: list[BaseRoute] = [
        Mount("/api/v3", routes=ark_routes(sim)),
        *vertex_routes(sim),
        Route("/files/{task_id}.mp4", video, methods=["GET"]),
        Route("/files/{task_id}.png", last_frame, methods=["GET"]),
        Route("/_sim/image.png", image, methods=["GET", "HEAD"]),
        Route("/_sim/stats", stats, methods=["GET"]),
        Route("/_sim/creates", creates, methods=["GET"]),
        Route("/_sim/tasks/{task_id:path}", task_media, methods=["GET"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/health", health, methods=["GET"]),
        Route("/_sim/config", get_config, methods=["GET"]),
        Route("/_sim/config", set_config, methods=["POST"]),
        *timeline_routes(sim),
    ]
    app = Starlette(routes=routes, lifespan=sending_callbacks)
    app.add_middleware(ApiDelay, sim=sim)
    app.state.sim = sim
    return app
