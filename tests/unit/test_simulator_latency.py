"""The simulator's latency profiles and the /_sim endpoints that time each task."""

from __future__ import annotations

import base64
import hashlib
import math
import random
import statistics
import time

import pytest
from starlette.testclient import TestClient

from simulator import SimConfig, create_app
from simulator.__main__ import config_from_args, parse_args
from simulator.ark import ArkSim
from simulator.latency import draw_render_s, median_render_s
from simulator.validation import parse_create

PRO_15 = "seedance-1-5-pro-251215"
VEO_FAST = "veo-3.1-fast-generate-001"


def test_realistic_medians_scale_with_duration_and_resolution() -> None:
    assert median_render_s(PRO_15, 5, "720p") == 45.0
    assert median_render_s(VEO_FAST, 5, "720p") == 40.0
    assert median_render_s(PRO_15, 10, "720p") == pytest.approx(45.0 * 1.7)
    assert median_render_s(PRO_15, 5, "1080p") > median_render_s(PRO_15, 5, "720p") > median_render_s(PRO_15, 5, "480p")
    assert median_render_s("some-new-model", 5, "720p") == 45.0


def test_realistic_draws_are_lognormal_around_the_median() -> None:
    config = SimConfig(latency_profile="realistic", latency_sigma=0.12)
    rng = random.Random(1)
    draws = [draw_render_s(config, PRO_15, 5, "720p", rng) for _ in range(4000)]
    logs = [math.log(d) for d in draws]
    assert statistics.median(draws) == pytest.approx(45.0, rel=0.02)
    assert statistics.stdev(logs) == pytest.approx(0.12, rel=0.05)
    scaled = SimConfig(latency_profile="realistic", latency_sigma=0.0, latency_scale=0.1)
    assert draw_render_s(scaled, PRO_15, 5, "720p", rng) == pytest.approx(4.5)


def test_fixed_profile_is_latency_plus_jitter() -> None:
    config = SimConfig(latency=2.0, latency_jitter=1.0)
    rng = random.Random(2)
    draws = [draw_render_s(config, PRO_15, 5, "720p", rng) for _ in range(200)]
    assert 2.0 <= min(draws) < max(draws) <= 3.0


def test_scheduler_uses_the_profile_and_markers_still_win() -> None:
    now = [1000.0]
    config = SimConfig(latency_profile="realistic", latency_sigma=0.0, concurrency_per_model=5)
    sim = ArkSim(config, clock=lambda: now[0])
    plain = sim.create(parse_create({"model": PRO_15, "content": [{"type": "text", "text": "x"}]}))
    marked = sim.create(parse_create({"model": PRO_15, "content": [{"type": "text", "text": "x [sim:latency=2]"}]}))
    assert plain.run_end == pytest.approx(1045.0)
    assert marked.run_end == pytest.approx(1002.0)


def test_finished_and_polls_endpoints_cover_both_providers() -> None:
    client = TestClient(create_app(SimConfig(latency=0.0)))
    started = time.time()
    ark_id = client.post(
        "/api/v3/contents/generations/tasks",
        json={"model": PRO_15, "content": [{"type": "text", "text": "a fox"}]},
        headers={"Authorization": "Bearer k"},
    ).json()["id"]
    op_name = client.post(
        f"/v1beta1/publishers/google/models/{VEO_FAST}:predictLongRunning",
        json={"instances": [{"prompt": "a fox"}]},
        headers={"x-goog-api-key": "k"},
    ).json()["name"]
    for _ in range(2):
        client.get(f"/api/v3/contents/generations/tasks/{ark_id}", headers={"Authorization": "Bearer k"})
    client.post(
        f"/v1beta1/publishers/google/models/{VEO_FAST}:fetchPredictOperation",
        json={"operationName": op_name},
        headers={"x-goog-api-key": "k"},
    )
    finished = client.get("/_sim/finished").json()
    assert set(finished) == {ark_id, op_name}
    assert all(started - 1 <= at <= time.time() for at in finished.values())
    assert client.get("/_sim/polls").json() == {ark_id: 2, op_name: 1}
    client.post("/_sim/reset")
    assert client.get("/_sim/finished").json() == {}


def test_latency_profile_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_LATENCY_PROFILE", "realistic")
    config = config_from_args(parse_args(["--latency-sigma", "0.25", "--latency-scale", "0.1"]))
    assert (config.latency_profile, config.latency_sigma, config.latency_scale) == ("realistic", 0.25, 0.1)
    with pytest.raises(ValueError, match="latency_profile"):
        SimConfig(latency_profile="slow")


def test_tasks_timeline_shows_the_images_a_create_sent() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x07" * 8
    inline = "data:image/png;base64," + base64.b64encode(png).decode()
    sim = ArkSim(SimConfig(latency=2.0), clock=lambda: 1000.0)
    content = [
        {"type": "text", "text": "fox"},
        {"type": "image_url", "image_url": {"url": inline}, "role": "first_frame"},
        {"type": "image_url", "image_url": {"url": "https://example.com/l.png"}, "role": "last_frame"},
    ]
    task = sim.create(parse_create({"model": PRO_15, "content": content}))
    assert sim.tasks_timeline()[task.id]["images"] == {
        "first_frame": f"sha256:{hashlib.sha256(png).hexdigest()}",
        "last_frame": "https://example.com/l.png",
    }


def test_tasks_timeline_has_each_tasks_create_start_and_finish() -> None:
    now = [1000.0]
    sim = ArkSim(SimConfig(latency=2.0, concurrency_per_model=1), clock=lambda: now[0])
    first = sim.create(parse_create({"model": PRO_15, "content": [{"type": "text", "text": "first"}]}))
    now[0] = 1000.5
    second = sim.create(parse_create({"model": PRO_15, "content": [{"type": "text", "text": "second"}]}))
    timeline = sim.tasks_timeline()
    assert list(timeline) == [first.id, second.id]
    assert timeline[first.id] == {
        "prompt": "first",
        "model": PRO_15,
        "created": 1000.0,
        "started": 1000.0,
        "finished": None,
        "status": "running",
        "images": {},
    }
    assert (timeline[second.id]["started"], timeline[second.id]["status"]) == (None, "queued")

    now[0] = 1010.0  # the first finishes at 1002, the second starts then (one slot) and ends at 1004
    sim.delete(first.id)  # a finished task forgotten by the provider stays in the timeline
    timeline = sim.tasks_timeline()
    assert timeline[first.id]["finished"] == 1002.0 and timeline[first.id]["status"] == "succeeded"
    assert (timeline[second.id]["created"], timeline[second.id]["started"]) == (1000.5, 1002.0)
    assert timeline[second.id]["finished"] == 1004.0
    sim.reset()
    assert sim.tasks_timeline() == {}


def test_tasks_endpoint_covers_both_providers_and_cancelled_tasks() -> None:
    client = TestClient(create_app(SimConfig(latency=0.0)))
    started = time.time()
    ark_id = client.post(
        "/api/v3/contents/generations/tasks",
        json={"model": PRO_15, "content": [{"type": "text", "text": "a fox [sim:hold]"}]},
        headers={"Authorization": "Bearer k"},
    ).json()["id"]
    op_name = client.post(
        f"/v1beta1/publishers/google/models/{VEO_FAST}:predictLongRunning",
        json={"instances": [{"prompt": "a hare"}]},
        headers={"x-goog-api-key": "k"},
    ).json()["name"]
    client.delete(f"/api/v3/contents/generations/tasks/{ark_id}", headers={"Authorization": "Bearer k"})
    tasks = client.get("/_sim/tasks").json()
    assert list(tasks) == [ark_id, op_name]
    assert (tasks[ark_id]["prompt"], tasks[ark_id]["status"], tasks[ark_id]["started"]) == (
        "a fox [sim:hold]",
        "cancelled",
        None,
    )
    assert (tasks[op_name]["prompt"], tasks[op_name]["model"], tasks[op_name]["status"]) == (
        "a hare",
        VEO_FAST,
        "succeeded",
    )
    for times in tasks.values():
        assert started - 1 <= times["created"] <= times["finished"] <= time.time()
