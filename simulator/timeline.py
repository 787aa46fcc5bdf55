"""``/_sim`` endpoints that tell when each task finished and how often it was polled, so a
benchmark can measure detection latency and poll cost exactly."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator.scheduler import Scheduler


def timeline_routes(sim: Scheduler) -> list[Route]:
    """``GET /_sim/finished``: {task id or Veo operation name: unix time it finished};
    ``GET /_sim/polls``: {task id or operation name: status calls it received}."""

    async def finished(request: Request) -> Response:
        return JSONResponse(sim.finished())

    async def polls(request: Request) -> Response:
        return JSONResponse(sim.status_calls())

    return [
        Route("/_sim/finished", finished, methods=["GET"]),
        Route("/_sim/polls", polls, methods=["GET"]),
    ]
