"""The simulator's ModelArk callbacks: a create with `callback_url` gets the task POSTed
there at each status change, with the delay, loss and duplicates the config asks for."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from byteplussdkarkruntime import Ark
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from simulator import SimConfig, create_app
from simulator.__main__ import config_from_args, parse_args

PRO_15 = "seedance-1-5-pro-251215"


def serve(app: Any) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


received: list[tuple[str, dict[str, Any], float]] = []


@pytest.fixture(scope="module")
def receiver() -> Iterator[str]:
    """A receiver recording every callback: (path, body, time received)."""

    async def record(request: Request) -> Response:
        received.append((request.url.path, await request.json(), time.time()))
        return JSONResponse({})

    yield from serve(Starlette(routes=[Route("/cb/{name}", record, methods=["POST"])]))


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    yield from serve(create_app(SimConfig(latency=0.3, seed=7)))


@pytest.fixture
def http(sim_url: str) -> Iterator[httpx.Client]:
    received.clear()
    with httpx.Client(base_url=sim_url, timeout=5) as client:
        client.post("/_sim/reset").raise_for_status()
        client.post(
            "/_sim/config", json={"callback_delay_s": 0, "callback_loss_rate": 0, "callback_duplicate_rate": 0}
        ).raise_for_status()
        yield client


def create(sim_url: str, callback_url: str | None) -> str:
    ark = Ark(base_url=f"{sim_url}/api/v3", api_key="k", max_retries=0, timeout=5)
    created = ark.content_generation.tasks.create(
        model=PRO_15, content=[{"type": "text", "text": "a fox"}], callback_url=callback_url
    )
    return str(created.id)


def wait_received(count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(received) < count:
        assert time.monotonic() < deadline, f"{len(received)} callbacks, expected {count}"
        time.sleep(0.02)


def test_each_status_change_is_posted_with_the_task_as_a_status_call_returns_it(
    http: httpx.Client, sim_url: str, receiver: str
) -> None:
    task_id = create(sim_url, f"{receiver}/cb/one")
    wait_received(2)
    time.sleep(0.2)  # nothing more comes
    assert [(path, body["id"], body["status"]) for path, body, _ in received] == [
        ("/cb/one", task_id, "running"),
        ("/cb/one", task_id, "succeeded"),
    ]
    final = received[1][1]
    # Sent when the task finished, not when someone next asked: nobody asked.
    assert http.get("/_sim/stats").json()["gets_total"] == 0
    assert final["content"]["video_url"] == f"{sim_url}/files/{task_id}.mp4"
    assert final["usage"]["completion_tokens"] > 0
    assert http.get("/_sim/stats").json()["callbacks_sent_total"] == 2


def test_a_task_without_callback_url_calls_nobody(http: httpx.Client, sim_url: str, receiver: str) -> None:
    create(sim_url, None)
    time.sleep(0.6)
    assert received == []


def test_loss_and_duplicates(http: httpx.Client, sim_url: str, receiver: str) -> None:
    http.post("/_sim/config", json={"callback_loss_rate": 1.0}).raise_for_status()
    create(sim_url, f"{receiver}/cb/lost")
    time.sleep(0.6)
    assert received == []
    assert http.get("/_sim/stats").json()["callbacks_lost_total"] == 2

    http.post("/_sim/config", json={"callback_loss_rate": 0, "callback_duplicate_rate": 1.0}).raise_for_status()
    task_id = create(sim_url, f"{receiver}/cb/twice")
    wait_received(4)
    assert sorted(body["status"] for _, body, _ in received) == ["running", "running", "succeeded", "succeeded"]
    assert {body["id"] for _, body, _ in received} == {task_id}


def test_delay(http: httpx.Client, sim_url: str, receiver: str) -> None:
    http.post("/_sim/config", json={"callback_delay_s": 0.5}).raise_for_status()
    task_id = create(sim_url, f"{receiver}/cb/late")
    wait_received(2)
    finished = http.get("/_sim/finished").json()[task_id]
    assert received[1][2] - finished >= 0.5


def test_a_bad_callback_url_is_refused(sim_url: str, http: httpx.Client) -> None:
    body = {"model": PRO_15, "content": [{"type": "text", "text": "x"}], "callback_url": "ftp://x"}
    response = http.post("/api/v3/contents/generations/tasks", json=body, headers={"Authorization": "Bearer k"})
    assert response.status_code == 400


def test_command_line_options() -> None:
    args = parse_args(["--callback-delay-s", "0.2", "--callback-loss-rate", "0.3", "--callback-duplicate-rate", "0.1"])
    config = config_from_args(args)
    assert (config.callback_delay_s, config.callback_loss_rate, config.callback_duplicate_rate) == (0.2, 0.3, 0.1)
