"""The simulator's Vertex AI Veo API, driven over HTTP by the real google-genai SDK."""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import google.oauth2.credentials
import httpx
import pytest
import uvicorn
from google import genai
from google.genai import errors, types

from simulator import SimConfig, create_app
from simulator.__main__ import config_from_args, parse_args
from simulator.clips import Shape, clips
from simulator.scheduler import Scheduler
from simulator.vertex import RAI_REASON, Operation
from worker import media

FAST = "veo-3.1-fast-generate-001"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16
OP_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
EXPRESS_RESOURCE = f"publishers/google/models/{FAST}"
PROJECT_RESOURCE = f"projects/proj/locations/us-central1/publishers/google/models/{FAST}"
TEST_CONFIG: dict[str, Any] = {**SimConfig().model_dump(), "latency": 0.2, "seed": 99}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Scheduler]]:
    """Serve one simulator for the module on a free port, in a background thread."""
    app = create_app(SimConfig.model_validate(TEST_CONFIG))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "simulator did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", app.state.sim
    server.should_exit = True
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def base_url(served: tuple[str, Scheduler]) -> str:
    return served[0]


@pytest.fixture(scope="module")
def sim(served: tuple[str, Scheduler]) -> Scheduler:
    return served[1]


def _options(base_url: str) -> types.HttpOptions:
    return types.HttpOptions(base_url=f"{base_url}/", timeout=5000)


# One client per mode for the whole module: a collected client closes connections in use.
@pytest.fixture(scope="module")
def express(base_url: str) -> genai.Client:
    """The SDK in Vertex AI express mode (API key)."""
    return genai.Client(vertexai=True, api_key="KEY", http_options=_options(base_url))


@pytest.fixture(scope="module")
def project(base_url: str) -> genai.Client:
    """The SDK in Vertex AI project mode (OAuth bearer token)."""
    credentials = google.oauth2.credentials.Credentials(token="tok")  # type: ignore[no-untyped-call]
    return genai.Client(
        vertexai=True,
        project="proj",
        location="us-central1",
        credentials=credentials,
        http_options=_options(base_url),
    )


@pytest.fixture(autouse=True)
def http(base_url: str) -> Iterator[httpx.Client]:
    """An httpx client for control endpoints and raw calls; resets the simulator first."""
    with httpx.Client(base_url=base_url, timeout=5) as client:
        client.post("/_sim/reset").raise_for_status()
        client.post("/_sim/config", json=TEST_CONFIG).raise_for_status()
        yield client


def set_config(http: httpx.Client, **changes: Any) -> dict[str, Any]:
    response = http.post("/_sim/config", json=changes)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def stats(http: httpx.Client) -> dict[str, Any]:
    data: dict[str, Any] = http.get("/_sim/stats").json()
    return data


def generate(
    client: genai.Client,
    prompt: str | None = "a fox",
    model: str = FAST,
    image: types.Image | None = None,
    **config: Any,
) -> str:
    """Start a Veo operation; return its name."""
    operation = client.models.generate_videos(
        model=model,
        source=types.GenerateVideosSource(prompt=prompt, image=image),
        config=types.GenerateVideosConfig(**config),
    )
    assert operation.name and not operation.done
    return operation.name


def fetch(client: genai.Client, name: str) -> types.GenerateVideosOperation:
    """Poll an operation rebuilt from its name, as a worker does."""
    return client.operations.get(types.GenerateVideosOperation.model_validate({"name": name}))


def wait_done(client: genai.Client, name: str, timeout: float = 5) -> types.GenerateVideosOperation:
    deadline = time.monotonic() + timeout
    while True:
        operation = fetch(client, name)
        if operation.done:
            return operation
        assert time.monotonic() < deadline, f"{name} never finished"
        time.sleep(0.03)


def served_video(sim: Scheduler, name: str, sample: int = 0) -> bytes:
    """The clip the simulator serves as video `sample` of operation `name`."""
    op = sim.tasks[name.rpartition("/")[2]]
    assert isinstance(op, Operation)
    return op.video(sample)


def test_text_to_video_in_express_mode(express: genai.Client, http: httpx.Client, sim: Scheduler) -> None:
    clips(Shape(6, "9:16"))  # made once per shape (simulator/clips.py), not timed below
    name = generate(express, duration_seconds=6, aspect_ratio="9:16", generate_audio=True, seed=7)
    assert re.fullmatch(f"{EXPRESS_RESOURCE}/operations/{OP_ID}", name)
    assert fetch(express, name).done is None
    assert stats(http)["in_flight"] == 1

    started = time.monotonic()
    operation = wait_done(express, name)
    assert time.monotonic() - started < 1
    assert operation.error is None and operation.response is not None
    assert operation.response.rai_media_filtered_count == 0
    assert operation.response.rai_media_filtered_reasons is None
    videos = operation.response.generated_videos or []
    assert len(videos) == 1 and videos[0].video is not None
    assert videos[0].video.video_bytes == served_video(sim, name)
    assert videos[0].video.mime_type == "video/mp4" and videos[0].video.uri is None
    current = stats(http)
    assert current["by_status"]["succeeded"] == 1 and current["in_flight"] == 0
    assert current["creates_total"] == 1 and current["vertex_fetches_total"] >= 2


def test_image_to_video_in_project_mode(project: genai.Client, sim: Scheduler) -> None:
    name = generate(
        project,
        prompt=None,
        image=types.Image(image_bytes=PNG, mime_type="image/png"),
        last_frame=types.Image(image_bytes=JPEG, mime_type="image/jpeg"),
        number_of_videos=2,
        resolution="1080p",
        person_generation="allow_adult",
        negative_prompt="blur",
    )
    assert re.fullmatch(f"{PROJECT_RESOURCE}/operations/{OP_ID}", name)
    spec = sim.tasks[name.rpartition("/")[2]].spec
    assert (spec.images, spec.resolution, spec.duration, spec.generate_audio) == (
        ("image", "lastFrame"),
        "1080p",
        8,
        False,
    )

    operation = wait_done(project, name)
    assert operation.response is not None
    videos = operation.response.generated_videos or []
    assert [v.video.video_bytes for v in videos if v.video] == [served_video(sim, name, n) for n in (0, 1)]
    assert served_video(sim, name, 0) != served_video(sim, name, 1)


def test_storage_uri_answers_gcs_uris(express: genai.Client, http: httpx.Client, sim: Scheduler) -> None:
    name = generate(express, output_gcs_uri="gs://bucket/prefix/", number_of_videos=2)
    operation = wait_done(express, name)
    assert operation.response is not None
    videos = [v.video for v in operation.response.generated_videos or [] if v.video]
    op_id = name.rpartition("/")[2]
    assert [v.uri for v in videos] == [f"gs://bucket/prefix/{op_id}/sample_{n}.mp4" for n in range(2)]
    assert all(v.video_bytes is None and v.mime_type == "video/mp4" for v in videos)
    # The objects, by the Cloud Storage JSON API's media download: the same clips as inline.
    for n in range(2):
        path = f"/storage/v1/b/bucket/o/{quote(f'prefix/{op_id}/sample_{n}.mp4', safe='')}?alt=media"
        assert http.get(path).content == served_video(sim, name, n)
    assert http.get(f"/storage/v1/b/bucket/o/prefix%2F{op_id}%2Fsample_2.mp4?alt=media").status_code == 404


def test_fail_marker_is_the_safety_filter(express: genai.Client, http: httpx.Client) -> None:
    operation = wait_done(express, generate(express, "[sim:fail] nsfw"))
    assert operation.error is None and operation.response is not None
    assert operation.response.generated_videos is None
    assert operation.response.rai_media_filtered_count == 1
    assert operation.response.rai_media_filtered_reasons == [RAI_REASON]
    assert stats(http)["by_status"]["failed"] == 1


def test_reasonsonly_marker_sends_the_filter_reasons_without_a_count(express: genai.Client) -> None:
    operation = wait_done(express, generate(express, "[sim:fail] [sim:reasonsonly] nsfw"))
    assert operation.error is None and operation.response is not None
    assert operation.response.generated_videos is None
    assert operation.response.rai_media_filtered_count is None
    assert operation.response.rai_media_filtered_reasons == [RAI_REASON]


def test_fail_code_and_expire_markers_end_with_an_error(project: genai.Client) -> None:
    failed = generate(project, "[sim:fail=INTERNAL]")
    quota = generate(project, "[sim:fail=RESOURCE_EXHAUSTED] [sim:latency=0.05]")
    expired = generate(project, "[sim:expire]")
    assert wait_done(project, failed).error == {"code": 13, "message": "Simulated failure: INTERNAL"}
    assert wait_done(project, quota).error == {"code": 8, "message": "Simulated failure: RESOURCE_EXHAUSTED"}
    operation = wait_done(project, expired)
    assert operation.error == {"code": 4, "message": "Operation timed out."} and operation.response is None


def test_invalid_requests_are_400_naming_the_field(express: genai.Client, http: httpx.Client) -> None:
    with pytest.raises(errors.ClientError) as err:
        generate(express, duration_seconds=5)
    assert (err.value.code, err.value.status) == (400, "INVALID_ARGUMENT")
    assert err.value.message and "durationSeconds" in err.value.message

    cases: list[tuple[dict[str, Any], str]] = [
        ({"aspect_ratio": "1:1"}, "aspectRatio"),
        ({"number_of_videos": 5}, "sampleCount"),
        ({"resolution": "480p"}, "resolution"),
        ({"person_generation": "everyone"}, "personGeneration"),
        ({"output_gcs_uri": "s3://bucket"}, "storageUri"),
        ({"last_frame": types.Image(image_bytes=PNG, mime_type="image/png")}, "lastFrame"),
    ]
    for config, field in cases:
        with pytest.raises(errors.ClientError) as err:
            generate(express, **config)
        assert err.value.code == 400 and field in (err.value.message or ""), field
    with pytest.raises(errors.ClientError) as err:
        generate(express, model="veo-3.0-generate-001", resolution="4k")
    assert "resolution" in (err.value.message or "")
    with pytest.raises(errors.ClientError) as err:
        generate(express, "[sim:fail=Nope]")
    assert "prompt" in (err.value.message or "")
    with pytest.raises(errors.ClientError) as err:
        generate(express, image=types.Image(image_bytes=PNG, mime_type="image/gif"))
    assert "mimeType" in (err.value.message or "")
    assert stats(http)["creates_total"] == 0


def test_garbage_image_is_400(project: genai.Client, http: httpx.Client) -> None:
    with pytest.raises(errors.ClientError) as err:
        generate(project, image=types.Image(image_bytes=b"not an image", mime_type="image/png"))
    assert (err.value.code, err.value.status) == (400, "INVALID_ARGUMENT")
    assert err.value.message == "The provided image is not valid."

    url = f"/v1beta1/{EXPRESS_RESOURCE}:predictLongRunning"
    body = {"instances": [{"image": {"bytesBase64Encoded": "%%%", "mimeType": "image/png"}}]}
    response = http.post(url, json=body, headers={"x-goog-api-key": "k"})
    assert response.status_code == 400 and "bytesBase64Encoded" in response.json()["error"]["message"]
    response = http.post(url, json={"instances": [{}]}, headers={"x-goog-api-key": "k"})
    assert response.status_code == 400 and "prompt" in response.json()["error"]["message"]


def test_credentials_are_checked(express: genai.Client, http: httpx.Client) -> None:
    body = {"instances": [{"prompt": "x"}]}
    response = http.post(f"/v1beta1/{EXPRESS_RESOURCE}:predictLongRunning", json=body)
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "code": 401,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "UNAUTHENTICATED",
        }
    }
    response = http.post(f"/v1beta1/{PROJECT_RESOURCE}:predictLongRunning", json=body)
    assert (response.status_code, response.json()["error"]["status"]) == (401, "UNAUTHENTICATED")

    assert set_config(http, google_api_key="secret")["google_api_key"] == "***"
    with pytest.raises(errors.ClientError) as err:
        generate(express)
    assert (err.value.code, err.value.status) == (401, "UNAUTHENTICATED")
    response = http.post(f"/v1/{EXPRESS_RESOURCE}:predictLongRunning?key=secret", json=body)
    assert response.status_code == 200 and response.json()["name"].startswith(EXPRESS_RESOURCE)


def test_unknown_model_and_operation_are_404(express: genai.Client, project: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as err:
        generate(project, model="veo-9.0-generate-001")
    assert (err.value.code, err.value.status) == (404, "NOT_FOUND")
    assert err.value.message == (
        "Publisher Model `projects/proj/locations/us-central1/publishers/google/models/veo-9.0-generate-001` "
        "was not found or your project does not have access to it."
    )
    with pytest.raises(errors.ClientError) as err:
        fetch(express, f"{EXPRESS_RESOURCE}/operations/00000000-0000-4000-8000-000000000000")
    assert (err.value.code, err.value.status) == (404, "NOT_FOUND")
    # An operation is found only under the resource that created it.
    name = generate(express)
    with pytest.raises(errors.ClientError):
        fetch(project, name)


def test_create429_marker_then_success(express: genai.Client, http: httpx.Client) -> None:
    prompt = "busy [sim:create429=1]"
    with pytest.raises(errors.ClientError) as err:
        generate(express, prompt)
    assert (err.value.code, err.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert err.value.message and err.value.message.startswith("Quota exceeded for aiplatform.googleapis.com/")
    generate(express, prompt)
    current = stats(http)
    assert current["creates_by_prompt"] == {prompt: 1}
    assert (current["creates_total"], current["create_attempts_total"]) == (1, 2)


def test_get500_marker_then_success(project: genai.Client) -> None:
    name = generate(project, "flaky [sim:get500=1]")
    with pytest.raises(errors.ServerError) as err:
        fetch(project, name)
    assert (err.value.code, err.value.status) == (503, "UNAVAILABLE")
    assert wait_done(project, name).response is not None


def test_random_fault_rates(express: genai.Client, http: httpx.Client) -> None:
    set_config(http, create_5xx_rate=1.0)
    with pytest.raises(errors.ServerError) as err:
        generate(express)
    assert (err.value.code, err.value.status) == (500, "INTERNAL")
    set_config(http, create_5xx_rate=0.0, get_5xx_rate=1.0, fail_rate=1.0)
    name = generate(express)
    with pytest.raises(errors.ServerError):
        fetch(express, name)
    set_config(http, get_5xx_rate=0.0)
    assert wait_done(express, name).error == {"code": 13, "message": "Internal error encountered."}
    set_config(http, fail_rate=0.0, expire_rate=1.0)
    assert (wait_done(express, generate(express)).error or {}).get("code") == 4


def test_veo_operations_share_scheduler_and_stats(express: genai.Client, http: httpx.Client) -> None:
    set_config(http, concurrency_per_model=1)
    names = [generate(express, f"job {n}") for n in range(2)]
    held = generate(express, "[sim:hold]")
    ark = http.post(
        "/api/v3/contents/generations/tasks",
        json={"model": "seedance-1-5-pro-251215", "content": [{"type": "text", "text": "ark"}]},
        headers={"Authorization": "Bearer k"},
    )
    assert ark.status_code == 200
    current = stats(http)
    assert (current["in_flight"], current["max_in_flight"]) == (4, 4)
    assert current["by_status"]["running"] == 2 and current["by_status"]["queued"] == 2
    listed = http.get("/api/v3/contents/generations/tasks", headers={"Authorization": "Bearer k"}).json()
    assert listed["total"] == 1

    wait_done(express, names[1])
    assert fetch(express, held).done is None
    current = stats(http)
    assert current["in_flight"] == 1 and current["by_status"]["succeeded"] == 3
    assert current["creates_by_prompt"] == {"job 0": 1, "job 1": 1, "[sim:hold]": 1, "ark": 1}


def test_video_padding_is_inline_too(express: genai.Client, http: httpx.Client, sim: Scheduler) -> None:
    set_config(http, video_pad_bytes=1000, latency=0.0)
    name = generate(express)
    operation = wait_done(express, name)
    assert operation.response is not None and operation.response.generated_videos
    video = operation.response.generated_videos[0].video
    assert video is not None and video.video_bytes is not None
    served = served_video(sim, name)
    base = len(served)
    assert video.video_bytes[:base] == served and len(video.video_bytes) == base + 1000
    assert video.video_bytes[base : base + 8] == (1000).to_bytes(4, "big") + b"free"


def test_raw_wire_format(http: httpx.Client, sim: Scheduler) -> None:
    headers = {"Authorization": "Bearer tok"}
    body: dict[str, Any] = {
        "instances": [
            {"prompt": "raw [sim:latency=0]", "image": {"bytesBase64Encoded": base64.b64encode(PNG).decode()}}
        ],
        "parameters": {"durationSeconds": 4.0, "resolution": "4K", "generateAudio": True},
    }
    url = f"/v1beta1/{PROJECT_RESOURCE}"
    response = http.post(f"{url}:predictLongRunning", json=body, headers=headers)
    assert response.status_code == 400 and "mimeType" in response.json()["error"]["message"]
    body["instances"][0]["image"]["mimeType"] = "image/png"
    name = http.post(f"{url}:predictLongRunning", json=body, headers=headers).json()["name"]
    time.sleep(0.05)
    data = http.post(f"{url}:fetchPredictOperation", json={"operationName": name}, headers=headers).json()
    assert data.keys() == {"name", "done", "response"} and data["done"] is True
    assert data["response"]["@type"] == "type.googleapis.com/cloud.ai.large_models.vision.GenerateVideoResponse"
    assert base64.b64decode(data["response"]["videos"][0]["bytesBase64Encoded"]) == served_video(sim, name)

    held = http.post(f"{url}:predictLongRunning", json={"instances": [{"prompt": "[sim:hold]"}]}, headers=headers)
    pending = http.post(f"{url}:fetchPredictOperation", json={"operationName": held.json()["name"]}, headers=headers)
    assert pending.json() == {"name": held.json()["name"]}


def test_google_api_key_option_falls_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIM_GOOGLE_API_KEY", "from-env")
    assert config_from_args(parse_args([])).google_api_key == "from-env"
    assert config_from_args(parse_args(["--google-api-key", "cli"])).google_api_key == "cli"
    assert SimConfig(google_api_key="k").public_dict()["google_api_key"] == "***"


def test_an_inline_first_frame_is_shown_by_its_sha256(
    express: genai.Client, http: httpx.Client, sim: Scheduler
) -> None:
    set_config(http, latency=0.0)
    name = generate(express, image=types.Image(image_bytes=PNG, mime_type="image/png"), duration_seconds=6)
    wait_done(express, name)
    shown = http.get(f"/_sim/tasks/{name}").json()
    assert shown["images_sha256"] == {"first_frame": hashlib.sha256(PNG).hexdigest()}
    video = served_video(sim, name)
    assert shown["video_sha256"] == hashlib.sha256(video).hexdigest()
    assert abs(media.probe(io.BytesIO(video)).duration_s - 6) < 0.1
