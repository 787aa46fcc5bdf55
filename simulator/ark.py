"""In-memory ModelArk content-generation tasks and the ``/api/v3`` routes serving them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from json import JSONDecodeError
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.clips import Shape
from simulator.scheduler import STATUSES, Job, Scheduler
from simulator.validation import ApiError, TaskSpec, completion_tokens, invalid, parse_create

MAX_PAGE_SIZE = 500
INTERNAL_ERROR = "The service encountered an unexpected internal error."
# The failure of a bare [sim:fail] marker.
DEFAULT_FAIL_CODE = "OutputVideoSensitiveContentDetected"


@dataclass(kw_only=True)
class Task(Job[TaskSpec]):
    """One content-generation task and its simulated fate."""

    seed: int
    tokens: int
    # The base of its video URL, as the create saw it (a callback has no request of its own).
    base: str = ""

    @property
    def shape(self) -> Shape:
        """What its video is made for (simulator/clips.py)."""
        return Shape(self.spec.duration, self.spec.ratio)

    @property
    def error(self) -> dict[str, str] | None:
        """The error object of a failed task, else None."""
        if self.status != "failed":
            return None
        markers = self.spec.markers
        if not markers.fail:
            return {"code": "InternalServiceError", "message": INTERNAL_ERROR}
        code = markers.fail_code or DEFAULT_FAIL_CODE
        if code == DEFAULT_FAIL_CODE:
            return {"code": code, "message": "The generated video may contain sensitive content."}
        return {"code": code, "message": f"Simulated failure: {code}"}

    def to_json(self, public_base: str) -> dict[str, Any]:
        """Render the task like GET /contents/generations/tasks/{id} does."""
        spec = self.spec
        data: dict[str, Any] = {
            "id": self.id,
            "model": spec.model,
            "status": self.status,
            "error": self.error,
            "created_at": int(self.created),
            "updated_at": int(self.updated),
            "seed": self.seed,
            "resolution": spec.resolution,
            "ratio": spec.ratio,
            "duration": spec.duration,
            "framespersecond": 24,
            "service_tier": spec.service_tier,
            "execution_expires_after": spec.execution_expires_after,
            "generate_audio": spec.generate_audio,
            "draft": False,
        }
        if self.status == "succeeded":
            data["content"] = {"video_url": f"{public_base}/files/{self.id}.mp4"}
            if spec.return_last_frame:
                data["content"]["last_frame_url"] = f"{public_base}/files/{self.id}.png"
            data["usage"] = {"completion_tokens": self.tokens, "total_tokens": self.tokens}
        return data


class ArkSim(Scheduler):
    """The shared scheduler plus the ModelArk task operations."""

    # Called when a callback is queued in `outbox` (simulator/callbacks.py wakes on it).
    callback_queued: Callable[[], None] | None = None

    def check_create_faults(self, spec: TaskSpec) -> None:
        """Raise the injected 429/500 for this create attempt, if any (no task is created)."""
        fault = self.create_fault(spec.prompt, spec.markers)
        if fault == 429:
            raise ApiError(
                429,
                "RateLimitExceeded.EndpointRPMExceeded",
                "The request has exceeded the RPM rate limit of the endpoint. Please try again later.",
                type_="TooManyRequests",
                headers={"Retry-After": f"{self.config.retry_after_s:g}"},
            )
        if fault is not None:
            raise internal_error()

    def reset(self) -> None:
        """Forget every job, counter and callback not yet sent; reseed the random source."""
        super().reset()
        # (callback URL, task body) of each status change of a task that asked for
        # callbacks, oldest first, until simulator/callbacks.py sends them.
        self.outbox: list[tuple[str, dict[str, Any]]] = []

    def create(self, spec: TaskSpec, base: str = "") -> Task:
        """Create a queued task and start it at once if its model has a free slot;
        `base`: the base URL its video link will have."""
        now = self.advance()
        task_id = self._new_id(now)
        seed = spec.seed if spec.seed is not None else self.rng.randint(0, 2**31 - 1)
        tokens = completion_tokens(spec.resolution, spec.ratio, spec.duration)
        task = Task(id=task_id, spec=spec, created=now, updated=now, seed=seed, tokens=tokens, base=base)
        self.admit(task, spec.execution_expires_after)
        return task

    def status_changed(self, job: Any) -> None:
        """Queue the callback of a task that asked for them: the task as a status call
        would return it now."""
        if isinstance(job, Task) and job.spec.callback_url:
            self.outbox.append((job.spec.callback_url, job.to_json(self.config.public_url or job.base)))
            if self.callback_queued is not None:
                self.callback_queued()

    def _new_id(self, now: float) -> str:
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S")
        while True:
            task_id = f"cgt-{stamp}-{self.rng.getrandbits(32):08x}"
            if task_id not in self.tasks:
                return task_id

    def ark_tasks(self) -> list[Task]:
        """Return the ModelArk tasks in creation order (other providers' jobs left out)."""
        return [task for task in self.tasks.values() if isinstance(task, Task)]

    def get(self, task_id: str) -> Task:
        """Return a task, or raise the 404 ResourceNotFound error."""
        self.advance()
        task = self.tasks.get(task_id)
        if not isinstance(task, Task):
            message = f"The specified task {task_id} is not found."
            raise ApiError(404, "ResourceNotFound", message, type_="NotFound", param="task_id")
        return task

    def delete(self, task_id: str) -> None:
        """Cancel a queued task, refuse a running one, forget a finished one."""
        task = self.get(task_id)
        if task.status == "running":
            raise ApiError(
                400,
                "InvalidAction.TaskRunning",
                f"The task {task_id} is running and cannot be cancelled.",
                type_="BadRequest",
                param="task_id",
            )
        if task.status == "queued":
            self.cancel(task)
        else:
            self.forget(task_id)


def internal_error() -> ApiError:
    """Return the 500 InternalServiceError error."""
    return ApiError(500, "InternalServiceError", INTERNAL_ERROR, type_="InternalServerError")


def public_base(sim: ArkSim, request: Request) -> str:
    """Return the base URL that video links point at."""
    return sim.config.public_url or f"{request.url.scheme}://{request.url.netloc}"


# -- HTTP ------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _authenticated(sim: ArkSim, handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        request_id = uuid.uuid4().hex
        try:
            _check_auth(sim, request)
            response = await handler(request)
        except ApiError as err:
            response = err.response()
        response.headers["X-Request-Id"] = request_id
        return response

    return endpoint


def _check_auth(sim: ArkSim, request: Request) -> None:
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    expected = sim.config.api_key
    if scheme.lower() != "bearer" or not key or (expected is not None and key != expected):
        raise ApiError(
            401,
            "AuthenticationError",
            "The API key in the request is missing or invalid.",
            type_="Unauthorized",
        )


def _int_query(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(name, f"{raw!r} is not an integer") from None
    if not low <= value <= high:
        raise invalid(name, f"{value} is outside {low}..{high}")
    return value


def ark_routes(sim: ArkSim) -> list[Route]:
    """Return the ModelArk task routes, to be mounted under ``/api/v3``."""

    async def create_task(request: Request) -> Response:
        sim.counters["create_attempts_total"] += 1
        try:
            body = await request.json()
        except (JSONDecodeError, UnicodeDecodeError):
            raise invalid("body", "the request body is not valid JSON") from None
        spec = parse_create(body)
        sim.check_create_faults(spec)
        task = sim.create(spec, public_base(sim, request))
        if spec.markers.slowcreate:
            await asyncio.sleep(spec.markers.slowcreate)
        return JSONResponse({"id": task.id})

    async def get_task(request: Request) -> Response:
        sim.counters["gets_total"] += 1
        task = sim.get(request.path_params["task_id"])
        if sim.poll_fault(task):
            raise internal_error()
        return JSONResponse(task.to_json(public_base(sim, request)))

    async def list_tasks(request: Request) -> Response:
        sim.counters["lists_total"] += 1
        page_num = _int_query(request, "page_num", 1, 1, 10**9)
        page_size = _int_query(request, "page_size", 10, 1, MAX_PAGE_SIZE)
        query = request.query_params
        status = query.get("filter.status") or None
        if status is not None and status not in STATUSES:
            raise invalid("filter.status", f"{status!r} is not one of {', '.join(STATUSES)}")
        model = query.get("filter.model") or None
        tier = query.get("filter.service_tier") or None
        ids = set(query.getlist("filter.task_ids"))
        sim.advance()
        matches = [
            task
            for task in reversed(sim.ark_tasks())
            if (status is None or task.status == status)
            and (model is None or task.spec.model == model)
            and (tier is None or task.spec.service_tier == tier)
            and (not ids or task.id in ids)
        ]
        start = (page_num - 1) * page_size
        base = public_base(sim, request)
        items = [task.to_json(base) for task in matches[start : start + page_size]]
        return JSONResponse({"items": items, "total": len(matches)})

    async def delete_task(request: Request) -> Response:
        sim.counters["deletes_total"] += 1
        sim.delete(request.path_params["task_id"])
        return JSONResponse({})

    path = "/contents/generations/tasks"
    return [
        Route(path, _authenticated(sim, create_task), methods=["POST"]),
        Route(path, _authenticated(sim, list_tasks), methods=["GET"]),
        Route(path + "/{task_id}", _authenticated(sim, get_task), methods=["GET"]),
        Route(path + "/{task_id}", _authenticated(sim, delete_task), methods=["DELETE"]),
    ]
