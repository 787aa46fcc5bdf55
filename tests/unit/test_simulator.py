"""The ModelArk simulator, driven over HTTP by the real BytePlus SDK."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from byteplussdkarkruntime import Ark
from byteplussdkarkruntime._exceptions import (
    ArkAPITimeoutError,
    ArkAuthenticationError,
    ArkBadRequestError,
    ArkInternalServerError,
    ArkNotFoundError,
    ArkRateLimitError,
)

from simulator import SimConfig, create_app
from simulator.__main__ import config_from_args, parse_args
from simulator.ark import ArkSim
from simulator.clips import Shape
from simulator.mp4 import DEFAULT_SHAPE, free_box_header, task_video
from simulator.validation import completion_tokens, parse_create
from worker import media

PRO_15 = "seedance-1-5-pro-251215"
PRO_10 = "seedance-1-0-pro-250528"
TEST_CONFIG: dict[str, Any] = {
    **SimConfig().model_dump(),
    "latency": 0.3,
    "seed": 1234,
}


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """Serve one simulator for the module on a free port, in a background thread."""
    app = create_app(SimConfig.model_validate(TEST_CONFIG))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    """An httpx client for control endpoints and downloads; resets the simulator first."""
    with httpx.Client(base_url=base_url, timeout=5) as client:
        client.post("/_sim/reset").raise_for_status()
        client.post("/_sim/config", json=TEST_CONFIG).raise_for_status()
        yield client


@pytest.fixture
def ark(base_url: str, http: httpx.Client) -> Any:
    """The real SDK client pointed at the simulator (no retries)."""
    return Ark(base_url=f"{base_url}/api/v3", api_key="test-key", max_retries=0, timeout=5)


def set_config(http: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = http.post("/_sim/config", json=changes)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def stats(http: httpx.Client) -> dict[str, Any]:
    data: dict[str, Any] = http.get("/_sim/stats").json()
    return data


def create(ark: Any, prompt: str = "a cat surfing", model: str = PRO_15, **kwargs: Any) -> str:
    params: dict[str, Any] = {
        "duration": 5,
        "ratio": "16:9",
        "resolution": "720p",
        "generate_audio": model == PRO_15,
        "seed": None,
        **kwargs,
    }
    task = ark.content_generation.tasks.create(model=model, content=[{"type": "text", "text": prompt}], **params)
    task_id: str = task.id
    return task_id


def wait_for(ark: Any, task_id: str, *statuses: str, timeout: float = 5) -> tuple[Any, list[str]]:
    """Poll until the task reaches one of ``statuses``; return it and the statuses seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        task = ark.content_generation.tasks.get(task_id=task_id)
        if not seen or seen[-1] != task.status:
            seen.append(task.status)
        if task.status in statuses:
            return task, seen
        assert time.monotonic() < deadline, f"{task_id} stuck; saw {seen}"
        time.sleep(0.03)


def test_task_succeeds_and_video_downloads(ark: Any, http: httpx.Client, base_url: str) -> None:
    task_id = create(ark)
    assert task_id.startswith("cgt-") and len(task_id) == len("cgt-20250101000000-0123abcd")

    task, seen = wait_for(ark, task_id, "succeeded", "failed", "expired")
    assert seen[-2:] == ["running", "succeeded"]
    assert task.model == PRO_15 and task.error is None
    assert task.usage.completion_tokens == 103818 == task.usage.total_tokens
    assert (task.duration, task.ratio, task.resolution) == (5, "16:9", "720p")
    assert task.framespersecond == 24 and task.generate_audio is True and task.draft is False
    assert task.service_tier == "default" and task.execution_expires_after == 172800
    assert isinstance(task.seed, int) and task.updated_at >= task.created_at > 0

    video_url: str = task.content.video_url
    assert video_url == f"{base_url}/files/{task_id}.mp4"
    response = http.get(video_url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "video/mp4"
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.content[4:8] == b"ftyp"
    assert stats(http)["video_downloads_total"] == 1


def test_concurrency_per_model_keeps_extras_queued(ark: Any, http: httpx.Client) -> None:
    set_config(http, concurrency_per_model=2, latency=0.4)
    ids = [create(ark, f"job {n}") for n in range(4)]
    other = create(ark, "other model", model=PRO_10)

    statuses = [ark.content_generation.tasks.get(task_id=i).status for i in ids]
    assert statuses == ["running", "running", "queued", "queued"]
    assert ark.content_generation.tasks.get(task_id=other).status == "running"
    current = stats(http)
    assert current["in_flight"] == 5 and current["max_in_flight"] == 5

    _, seen = wait_for(ark, ids[3], "succeeded")
    assert seen[0] == "queued" and "running" in seen
    for task_id in ids:
        assert ark.content_generation.tasks.get(task_id=task_id).status == "succeeded"
    current = stats(http)
    assert current["in_flight"] == 0 and current["max_in_flight"] == 5
    assert current["by_status"]["succeeded"] == 5 and current["creates_total"] == 5


def test_invalid_parameters_are_400_naming_the_parameter(ark: Any, http: httpx.Client) -> None:
    with pytest.raises(ArkBadRequestError) as bad_duration:
        create(ark, duration=13)
    assert bad_duration.value.status_code == 400
    assert bad_duration.value.code == "InvalidParameter"
    assert bad_duration.value.param == "duration"
    assert "`duration`" in bad_duration.value.message

    with pytest.raises(ArkBadRequestError) as audio:
        create(ark, model=PRO_10, generate_audio=True)
    assert audio.value.param == "generate_audio"

    with pytest.raises(ArkBadRequestError) as ratio:
        create(ark, ratio="2:1")
    assert ratio.value.param == "ratio"

    with pytest.raises(ArkBadRequestError) as image:
        ark.content_generation.tasks.create(
            model=PRO_15,
            content=[
                {"type": "text", "text": "x"},
                {"type": "image_url", "image_url": {"url": "ftp://x"}, "role": "first_frame"},
            ],
        )
    assert image.value.param == "content"

    with pytest.raises(ArkNotFoundError) as model:
        create(ark, model="seedance-9")
    assert model.value.code == "InvalidEndpointOrModel.NotFound"
    assert model.value.param == "model"
    assert stats(http)["creates_total"] == 0


def test_defaults_apply_when_fields_are_null(ark: Any) -> None:
    task_id = ark.content_generation.tasks.create(
        model=PRO_10,
        content=[
            {"type": "text", "text": "defaults"},
            {"type": "image_url", "image_url": {"url": "https://x/a.png"}, "role": "first_frame"},
        ],
        service_tier="flex",
    ).id
    task = ark.content_generation.tasks.get(task_id=task_id)
    assert (task.duration, task.resolution, task.ratio) == (5, "720p", "16:9")
    assert task.generate_audio is False and task.service_tier == "flex"


def test_api_key_is_checked(ark: Any, http: httpx.Client, base_url: str) -> None:
    response = http.get("/api/v3/contents/generations/tasks")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AuthenticationError"

    assert set_config(http, api_key="secret")["api_key"] == "***"
    with pytest.raises(ArkAuthenticationError) as err:
        create(ark)
    assert err.value.type == "Unauthorized"
    good = Ark(base_url=f"{base_url}/api/v3", api_key="secret", max_retries=0, timeout=5)
    assert create(good).startswith("cgt-")


def test_unknown_task_is_404(ark: Any) -> None:
    with pytest.raises(ArkNotFoundError) as err:
        ark.content_generation.tasks.get(task_id="cgt-20250101000000-deadbeef")
    assert err.value.code == "ResourceNotFound" and err.value.param == "task_id"
    with pytest.raises(ArkNotFoundError):
        ark.content_generation.tasks.delete("cgt-20250101000000-deadbeef")


def test_delete_cancels_queued_refuses_running_forgets_finished(ark: Any) -> None:
    held = create(ark, "wait [sim:hold]")
    time.sleep(0.4)
    assert ark.content_generation.tasks.get(task_id=held).status == "queued"
    ark.content_generation.tasks.delete(held)
    assert ark.content_generation.tasks.get(task_id=held).status == "cancelled"
    ark.content_generation.tasks.delete(held)
    with pytest.raises(ArkNotFoundError):
        ark.content_generation.tasks.get(task_id=held)

    running = create(ark, "slow [sim:latency=30]")
    with pytest.raises(ArkBadRequestError) as err:
        ark.content_generation.tasks.delete(running)
    assert err.value.code == "InvalidAction.TaskRunning"


def test_fail_and_expire_markers(ark: Any, http: httpx.Client) -> None:
    failed = create(ark, "[sim:fail] nsfw")
    custom = create(ark, "[sim:fail=ContentPolicy] [sim:latency=0.05]")
    expired = create(ark, "[sim:expire]")

    task, _ = wait_for(ark, failed, "failed")
    assert task.error.code == "OutputVideoSensitiveContentDetected"
    assert task.error.message == "The generated video may contain sensitive content."
    assert task.content is None and task.usage is None
    task, _ = wait_for(ark, custom, "failed")
    assert (task.error.code, task.error.message) == (
        "ContentPolicy",
        "Simulated failure: ContentPolicy",
    )
    task, _ = wait_for(ark, expired, "expired")
    assert task.error is None
    assert http.get(f"/files/{failed}.mp4").status_code == 404


def test_execution_expires_after_expires_queued_tasks(ark: Any) -> None:
    task_id = create(ark, "[sim:hold]", execution_expires_after=1)
    task, seen = wait_for(ark, task_id, "expired", timeout=3)
    assert seen == ["queued", "expired"]
    assert task.updated_at - task.created_at in (0, 1, 2)


def test_create429_marker_then_success(ark: Any, http: httpx.Client) -> None:
    prompt = "busy [sim:create429=1]"
    with pytest.raises(ArkRateLimitError) as err:
        create(ark, prompt)
    assert err.value.code == "RateLimitExceeded.EndpointRPMExceeded"
    assert err.value.response.headers["retry-after"] == "1"
    assert create(ark, prompt)
    current = stats(http)
    assert current["creates_by_prompt"] == {prompt: 1}
    assert (current["creates_total"], current["create_attempts_total"]) == (1, 2)


def test_retry_after_of_a_429_is_configurable(ark: Any, http: httpx.Client) -> None:
    set_config(http, retry_after_s=500)
    with pytest.raises(ArkRateLimitError) as err:
        create(ark, "busy [sim:create429=1]")
    assert err.value.response.headers["retry-after"] == "500"


def test_video_trickle_spreads_the_download_over_the_set_time(ark: Any, http: httpx.Client) -> None:
    set_config(http, latency=0.0, video_trickle_s=1.0)
    task, _ = wait_for(ark, create(ark), "succeeded")
    started = time.monotonic()
    body = http.get(f"/files/{task.id}.mp4", timeout=10).content
    took = time.monotonic() - started
    assert body == task_video(task.id, DEFAULT_SHAPE)
    assert 0.9 <= took < 3.0


def test_get500_marker(ark: Any) -> None:
    task_id = create(ark, "flaky [sim:get500=1]")
    with pytest.raises(ArkInternalServerError) as err:
        ark.content_generation.tasks.get(task_id=task_id)
    assert err.value.code == "InternalServiceError"
    assert ark.content_generation.tasks.get(task_id=task_id).id == task_id


def test_random_fault_rates(ark: Any, http: httpx.Client) -> None:
    set_config(http, create_5xx_rate=1.0)
    with pytest.raises(ArkInternalServerError):
        create(ark)
    set_config(http, create_5xx_rate=0.0, fail_rate=1.0, latency=0.0)
    task, _ = wait_for(ark, create(ark), "failed")
    assert task.error.code == "InternalServiceError"
    assert stats(http)["creates_total"] == 1


def test_slowcreate_provokes_client_timeout(base_url: str, http: httpx.Client) -> None:
    impatient = Ark(base_url=f"{base_url}/api/v3", api_key="k", max_retries=0, timeout=0.2)
    with pytest.raises(ArkAPITimeoutError):
        create(impatient, "[sim:slowcreate=1]")
    assert stats(http)["creates_total"] == 1


def test_list_filters_and_orders_newest_first(ark: Any) -> None:
    first, second, third = (create(ark, f"list {n}") for n in range(3))
    create(ark, "held [sim:hold]", model=PRO_10)
    tasks = ark.content_generation.tasks

    page = tasks.list(task_ids=[first, third])
    assert page.total == 2
    assert [item.id for item in page.items] == [third, first]

    page = tasks.list(page_size=2, page_num=2)
    assert page.total == 4
    assert [item.id for item in page.items] == [second, first]

    assert tasks.list(status="queued", model=PRO_10).total == 1
    assert tasks.list(service_tier="flex").total == 0
    with pytest.raises(ArkBadRequestError) as err:
        tasks.list(page_size=501)
    assert err.value.param == "page_size"


def test_video_padding_appends_a_free_box(ark: Any, http: httpx.Client) -> None:
    pad = 200_000
    set_config(http, video_pad_bytes=pad, latency=0.0)
    task, _ = wait_for(ark, create(ark), "succeeded")
    response = http.get(task.content.video_url)
    video = task_video(task.id, DEFAULT_SHAPE)
    base = len(video)
    assert len(response.content) == int(response.headers["content-length"]) == base + pad
    assert response.content[:base] == video
    assert response.content[base : base + 8] == pad.to_bytes(4, "big") + b"free"
    assert response.content[base + 8 :].count(0) == pad - 8


def test_stats_in_flight_and_reset(ark: Any, http: httpx.Client) -> None:
    ids = [create(ark, "[sim:hold]") for _ in range(3)]
    ark.content_generation.tasks.delete(ids[0])
    current = stats(http)
    assert (current["in_flight"], current["max_in_flight"]) == (2, 3)
    assert current["by_status"]["queued"] == 2 and current["deletes_total"] == 1
    assert current["creates_by_prompt"] == {"[sim:hold]": 3}

    assert http.post("/_sim/reset").json() == {}
    current = stats(http)
    assert current["creates_total"] == current["in_flight"] == current["max_in_flight"] == 0
    with pytest.raises(ArkNotFoundError):
        ark.content_generation.tasks.get(task_id=ids[1])
    assert http.get("/_sim/health").json() == {"ok": True}


def test_scheduler_replays_due_events_in_time_order() -> None:
    now = [1000.0]
    sim = ArkSim(SimConfig(latency=1.0, concurrency_per_model=2), clock=lambda: now[0])
    spec = parse_create({"model": PRO_15, "content": [{"type": "text", "text": "x"}]})
    tasks = [sim.create(spec) for _ in range(5)]
    assert [task.status for task in tasks] == ["running"] * 2 + ["queued"] * 3

    now[0] = 1002.5
    sim.advance()
    assert [task.status for task in tasks] == ["succeeded"] * 4 + ["running"]
    assert [task.updated for task in tasks] == [1001.0, 1001.0, 1002.0, 1002.0, 1002.0]
    assert (sim.in_flight, sim.max_in_flight) == (1, 5)


def test_tokens_and_box_headers() -> None:
    assert completion_tokens("720p", "16:9", 5) == 103818
    assert completion_tokens("480p", "adaptive", 4) == completion_tokens("480p", "16:9", 4)
    assert free_box_header(16) == b"\x00\x00\x00\x10free"
    assert free_box_header(2**33) == b"\x00\x00\x00\x01free" + (2**33).to_bytes(8, "big")


def test_cli_options_fall_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_LATENCY", "0.5")
    monkeypatch.setenv("SIM_CREATE_429_RATE", "0.25")
    monkeypatch.setenv("SIM_PORT", "9999")
    args = parse_args(["--latency", "1.5", "--concurrency-per-model", "3", "--api-key", "k"])
    config = config_from_args(args)
    assert args.port == 9999
    assert (config.latency, config.create_429_rate) == (1.5, 0.25)
    assert (config.concurrency_per_model, config.api_key) == (3, "k")


def test_api_delay_slows_provider_calls_but_not_control_endpoints(http: httpx.Client, ark: Any) -> None:
    set_config(http, api_delay=0.3)
    try:
        started = time.monotonic()
        ark.content_generation.tasks.list()
        api_seconds = time.monotonic() - started
        started = time.monotonic()
        http.get("/_sim/stats").raise_for_status()
        control_seconds = time.monotonic() - started
    finally:
        set_config(http, api_delay=0)
    assert api_seconds >= 0.3
    assert control_seconds < 0.3


def test_videos_are_real_clips_of_the_requested_shape(ark: Any, http: httpx.Client) -> None:
    set_config(http, latency=0.0)
    task, _ = wait_for(ark, create(ark, duration=4, ratio="9:16"), "succeeded")
    body = http.get(task.content.video_url).content
    assert body == task_video(task.id, Shape(4, "9:16"))
    info = media.probe(io.BytesIO(body))
    assert abs(info.duration_s - 4) < 0.1 and (info.width, info.height) == (160, 284) and info.has_audio
    assert getattr(task.content, "last_frame_url", None) is None  # not asked for


def test_return_last_frame_serves_the_videos_last_frame(ark: Any, http: httpx.Client) -> None:
    set_config(http, latency=0.0)
    task, _ = wait_for(ark, create(ark, return_last_frame=True), "succeeded")
    assert task.content.last_frame_url == f"{str(http.base_url).rstrip('/')}/files/{task.id}.png"
    response = http.get(task.content.last_frame_url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    video = http.get(task.content.video_url).content
    assert response.content == media.last_frame_png(io.BytesIO(video))
    # The next scene starts from it, linked or inline: /_sim/tasks/{id} shows its sha256 either way.
    digest = hashlib.sha256(response.content).hexdigest()
    inline = "data:image/png;base64," + base64.b64encode(response.content).decode()
    for url in (task.content.last_frame_url, inline):
        content = [{"type": "text", "text": "next scene"}, {"type": "image_url", "image_url": {"url": url}}]
        following = ark.content_generation.tasks.create(model=PRO_15, content=content).id
        shown = http.get(f"/_sim/tasks/{following}").json()
        assert shown["images_sha256"] == {"first_frame": digest}
    assert http.get(f"/_sim/tasks/{task.id}").json()["last_frame_sha256"] == digest
    assert http.get("/_sim/tasks/cgt-unknown").status_code == 404


def test_no_last_frame_unless_asked(ark: Any, http: httpx.Client) -> None:
    set_config(http, latency=0.0)
    task, _ = wait_for(ark, create(ark), "succeeded")
    assert http.get(f"/files/{task.id}.png").status_code == 404
