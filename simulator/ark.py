"""In-memory ModelArk content-generation tasks and the ``/api/v3`` routes serving them.

The task lifecycle is evaluated lazily: every request first replays, in time order, all
start/finish/expire events due up to "now". Transitions therefore happen at their exact
times (a queued task starts the instant a slot frees) without a background ticker, and
the single asyncio thread never sees a half-updated state.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from json import JSONDecodeError
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.config import SimConfig
from simulator.validation import (
    STATUSES,
    ApiError,
    TaskSpec,
    completion_tokens,
    invalid,
    parse_create,
)

ACTIVE = ("queued", "running")
MAX_PAGE_SIZE = 500
INTERNAL_ERROR = "The service encountered an unexpected internal error."

# Heap event kinds; at equal times a finish wins over an expiry.
_FINISH, _EXPIRE = 0, 1


@dataclass
class Task:
    """One content-generation task and its simulated fate."""

    id: str
    spec: TaskSpec
    created: float
    updated: float
    seed: int
    tokens: int
    status: str = "queued"
    run_end: float | None = None
    outcome: str = "succeeded"
    error: dict[str, str] | None = None
    gets: int = 0

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
            data["usage"] = {"completion_tokens": self.tokens, "total_tokens": self.tokens}
        return data


class ArkSim:
    """Task store, scheduler, fault injection and counters of the emulated service."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget every task and counter; reseed the random source."""
        self.rng = random.Random(self.config.seed)
        self.tasks: dict[str, Task] = {}
        self._events: list[tuple[float, int, int, str]] = []
        self._fifo: defaultdict[str, deque[str]] = defaultdict(deque)
        self._running: Counter[str] = Counter()
        self._seq = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.counters: Counter[str] = Counter()
        self.creates_by_prompt: Counter[str] = Counter()
        self.attempts_by_prompt: Counter[str] = Counter()

    def update_config(self, changes: dict[str, Any]) -> SimConfig:
        """Apply config changes (raises pydantic.ValidationError) and reschedule."""
        self.advance()
        self.config = self.config.updated(changes)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        now = self._clock()
        for model in list(self._fifo):
            self._fill(model, now)
        return self.config

    # -- lifecycle -------------------------------------------------------------------------

    def advance(self) -> float:
        """Apply every transition due up to now; return now."""
        now = self._clock()
        while self._events and self._events[0][0] <= now:
            at, kind, _, task_id = heapq.heappop(self._events)
            task = self.tasks.get(task_id)
            if task is None:
                continue
            if kind == _FINISH and task.status == "running" and task.run_end == at:
                self._settle(task, at, task.outcome)
            elif kind == _EXPIRE and task.status in ACTIVE:
                self._settle(task, at, "expired")
        return now

    def _push(self, at: float, kind: int, task_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, kind, self._seq, task_id))

    def _fill(self, model: str, now: float) -> None:
        queue = self._fifo[model]
        while queue and self._running[model] < self.config.concurrency_per_model:
            task = self.tasks.get(queue.popleft())
            if task is not None and task.status == "queued":
                self._start(task, now)

    def _start(self, task: Task, now: float) -> None:
        cfg, markers = self.config, task.spec.markers
        if markers.latency is not None:
            latency = markers.latency
        else:
            latency = cfg.latency + self.rng.uniform(0, cfg.latency_jitter)
        if markers.fail_code is not None:
            code = markers.fail_code
            message = (
                "The generated video may contain sensitive content."
                if code == "OutputVideoSensitiveContentDetected"
                else f"Simulated failure: {code}"
            )
            task.outcome, task.error = "failed", {"code": code, "message": message}
        elif markers.expire:
            task.outcome = "expired"
        elif cfg.fail_rate and self.rng.random() < cfg.fail_rate:
            task.outcome = "failed"
            task.error = {"code": "InternalServiceError", "message": INTERNAL_ERROR}
        elif cfg.expire_rate and self.rng.random() < cfg.expire_rate:
            task.outcome = "expired"
        task.status, task.updated, task.run_end = "running", now, now + latency
        self._running[task.spec.model] += 1
        self._push(task.run_end, _FINISH, task.id)

    def _settle(self, task: Task, at: float, status: str) -> None:
        was_running = task.status == "running"
        task.status, task.updated = status, at
        if status != "failed":
            task.error = None
        self.in_flight -= 1
        if was_running:
            self._running[task.spec.model] -= 1
            self._fill(task.spec.model, at)

    # -- operations ------------------------------------------------------------------------

    def check_create_faults(self, spec: TaskSpec) -> None:
        """Raise the injected 429/500 for this create attempt, if any (no task is created)."""
        self.attempts_by_prompt[spec.prompt] += 1
        attempt = self.attempts_by_prompt[spec.prompt]
        cfg, markers = self.config, spec.markers
        if attempt <= markers.create429 or (cfg.create_429_rate and self.rng.random() < cfg.create_429_rate):
            raise ApiError(
                429,
                "RateLimitExceeded.EndpointRPMExceeded",
                "The request has exceeded the RPM rate limit of the endpoint. Please try again later.",
                type_="TooManyRequests",
                headers={"Retry-After": "1"},
            )
        if attempt <= markers.create429 + markers.create500 or (
            cfg.create_5xx_rate and self.rng.random() < cfg.create_5xx_rate
        ):
            raise internal_error()

    def create(self, spec: TaskSpec) -> Task:
        """Create a queued task and start it at once if its model has a free slot."""
        now = self.advance()
        task_id = self._new_id(now)
        seed = spec.seed if spec.seed is not None else self.rng.randint(0, 2**31 - 1)
        tokens = completion_tokens(spec.resolution, spec.ratio, spec.duration)
        task = Task(task_id, spec, now, now, seed, tokens)
        self.tasks[task_id] = task
        self.counters["creates_total"] += 1
        self.creates_by_prompt[spec.prompt] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._push(now + spec.execution_expires_after, _EXPIRE, task_id)
        if not spec.markers.hold:
            self._fifo[spec.model].append(task_id)
            self._fill(spec.model, now)
        return task

    def _new_id(self, now: float) -> str:
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d%H%M%S")
        while True:
            task_id = f"cgt-{stamp}-{self.rng.getrandbits(32):08x}"
            if task_id not in self.tasks:
                return task_id

    def get(self, task_id: str) -> Task:
        """Return a task, or raise the 404 ResourceNotFound error."""
        self.advance()
        task = self.tasks.get(task_id)
        if task is None:
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
            task.status, task.updated = "cancelled", self._clock()
            self.in_flight -= 1
        else:
            del self.tasks[task_id]

    def stats(self) -> dict[str, Any]:
        """Return the counters exposed at /_sim/stats."""
        self.advance()
        by_status = dict.fromkeys(STATUSES, 0)
        for task in self.tasks.values():
            by_status[task.status] += 1
        return {
            "creates_total": self.counters["creates_total"],
            "create_attempts_total": self.counters["create_attempts_total"],
            "creates_by_prompt": dict(self.creates_by_prompt),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_status": by_status,
            "gets_total": self.counters["gets_total"],
            "lists_total": self.counters["lists_total"],
            "deletes_total": self.counters["deletes_total"],
            "video_downloads_total": self.counters["video_downloads_total"],
        }


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
        task = sim.create(spec)
        if spec.markers.slowcreate:
            await asyncio.sleep(spec.markers.slowcreate)
        return JSONResponse({"id": task.id})

    async def get_task(request: Request) -> Response:
        sim.counters["gets_total"] += 1
        task = sim.get(request.path_params["task_id"])
        task.gets += 1
        rate = sim.config.get_5xx_rate
        if task.gets <= task.spec.markers.get500 or (rate and sim.rng.random() < rate):
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
            for task in reversed(sim.tasks.values())
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
