"""``/_sim`` endpoints that tell when each task was created, started and finished and how
often it was polled, so a benchmark can measure detection latency, slot use, admission
order and poll cost exactly."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.scheduler import Scheduler


def timeline_routes(sim: Scheduler) -> list[Route]:
    """``GET /_sim/finished``: {task id or Veo operation name: unix time it finished};
    ``GET /_sim/polls``: {task id or operation name: status calls it received};
    ``GET /_sim/tasks``: {task id or operation name: {prompt, model, created, started,
    finished, status, images}} for every task since the last reset, in creation order (unix times;
    None for a moment not yet reached; kept after a DELETE)."""

    async def finished(request: Request) -> Response:
        return JSONResponse(sim.finished())

    async def polls(request: Request) -> Response:
        return JSONResponse(sim.status_calls())

    async def tasks(request: Request) -> Response:
        return JSONResponse(sim.tasks_timeline())

    return [
        Route("/_sim/tasks", tasks, methods=["GET"]),
        Route("/_sim/finished", finished, methods=["GET"]),
        Route("/_sim/polls", polls, methods=["GET"]),
    ]
