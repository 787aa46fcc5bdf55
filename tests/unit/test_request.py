"""Validation of requests before anything is stored or enqueued."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from producer import InvalidRequestError, Settings, VideoQueue, VideoRequest
from producer.request import resolve
from videoqueue.catalog import load_catalog
from videoqueue.jobstore import JobStore
from videoqueue.keys import client_key


def _resolve(**fields: Any) -> dict[str, Any]:
    """The resolved request as the job record's JSON holds it."""
    return resolve(VideoRequest.parse(fields), load_catalog(), "byteplus")[0].model_dump(mode="json")


def _problems(**fields: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequestError) as info:
        _resolve(**fields)
    return info.value.problems


def test_defaults_follow_the_product_brief() -> None:
    params = _resolve(prompt="a red fox in snow")
    assert params == {
        "prompt": "a red fox in snow",
        "provider": "byteplus",
        "model": "seedance-1-5-pro-251215",
        "duration": 5,
        "resolution": "720p",
        "ratio": "16:9",
        "audio": True,
        "seed": None,
        "service_tier": "default",
        "images": {},
        "negative_prompt": None,
        "person_generation": None,
        "tags": [],
        "client_job_id": None,
    }


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"prompt": ""}, "prompt", "empty"),
        ({"prompt": "   \n"}, "prompt", "empty"),
        ({"prompt": "x" * 4001}, "prompt", "limit is 4000"),
        ({"prompt": "bad \x00 byte"}, "prompt", "control"),
        ({"prompt": "ok", "duraton": 5}, "duraton", "unknown field"),
        ({"prompt": "ok", "duration": "5"}, "duration", "integer"),
        ({"prompt": "ok", "duration": 5.5}, "duration", "integer"),
        ({"prompt": "ok", "audio": "yes"}, "audio", "boolean"),
        ({"prompt": "ok", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt": "ok", "seed": 2**32}, "seed", "less than or equal"),
        ({"prompt": "ok", "service_tier": "turbo"}, "service_tier", "'default' or 'flex'"),
        ({"prompt": "ok", "image_url": "ftp://host/a.png"}, "image_url", "http"),
        ({"prompt": "ok", "image_url": "not a url"}, "image_url", "http"),
        ({"prompt": "ok", "tags": ["has space"]}, "tags", "without spaces"),
        ({"prompt": 42}, "prompt", "string"),
    ],
)
def test_shape_errors_name_the_field(fields: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest.parse(fields)
    assert field in info.value.problems, info.value.problems
    assert fragment in info.value.problems[field]


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"provider": "openai"}, "provider", "unknown provider"),
        ({"model": "seedance-9"}, "model", "unknown model"),
        ({"duration": 3}, "duration", "3 s is not supported"),
        ({"duration": 13}, "duration", "choose one of 4, 5"),
        ({"resolution": "4k"}, "resolution", "not supported"),
        ({"ratio": "2:1"}, "ratio", "not supported"),
        ({"model": "seedance-1-0-pro-250528", "audio": True}, "audio", "does not generate audio"),
    ],
)
def test_capability_errors_name_the_field(fields: dict[str, Any], field: str, fragment: str) -> None:
    problems = _problems(prompt="ok", **fields)
    assert field in problems
    assert fragment in problems[field]


def test_model_without_audio_defaults_to_silent() -> None:
    assert _resolve(prompt="ok", model="seedance-1-0-pro-250528")["audio"] is False


def test_json_text_is_parsed_strictly() -> None:
    assert VideoRequest.parse('{"prompt": "ok", "duration": 6}').duration == 6
    with pytest.raises(InvalidRequestError):
        VideoRequest.parse('{"prompt": "ok", "duration": "6"}')


def test_bad_item_in_a_batch_stores_and_sends_nothing() -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(), store=JobStore(redis))
    good = VideoRequest(prompt="fine")
    bad = VideoRequest(prompt="too long", duration=60)
    with pytest.raises(InvalidRequestError) as info:
        vq.submit_many([good, bad])
    assert list(info.value.problems) == ["[1].duration"]
    assert redis.keys("*") == []


def test_prepare_estimates_cost_and_picks_a_seed() -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(job_deadline_s=60), store=JobStore(redis))
    record = vq.prepare(VideoRequest(prompt="fox", duration=5)).record
    assert str(record.cost_estimate_usd) == "0.249163"
    assert isinstance(record.request.seed, int)
    assert (record.deadline_at - record.created_at).total_seconds() == 60


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 64


@pytest.mark.parametrize(("data", "mime"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")])
def test_a_local_image_is_read_checked_and_described(tmp_path: Path, data: bytes, mime: str) -> None:
    path = tmp_path / "frame.img"
    path.write_bytes(data)
    params, files = resolve(VideoRequest(prompt="ok", image_file=str(path)), load_catalog(), "byteplus")
    assert files["first_frame"].data == data and files["first_frame"].mime_type == mime
    assert params.model_dump(mode="json")["images"] == {
        "first_frame": {
            "file": "frame.img",
            "mime_type": mime,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    }


def test_image_urls_pass_through_by_role() -> None:
    params = _resolve(prompt="ok", image_url="https://x/a.png", last_frame_url="https://x/b.png")
    assert params["images"] == {"first_frame": {"url": "https://x/a.png"}, "last_frame": {"url": "https://x/b.png"}}


def _file_problems(tmp_path: Path, data: bytes | None, **fields: Any) -> dict[str, str]:
    path = tmp_path / "in.png"
    if data is not None:
        path.write_bytes(data)
    return _problems(prompt="ok", image_file=str(path), **fields)


def test_image_file_errors_name_the_field(tmp_path: Path) -> None:
    assert "not a readable file" in _file_problems(tmp_path, None)["image_file"]
    assert "is empty" in _file_problems(tmp_path, b"")["image_file"]
    assert "not a PNG, JPEG or WebP" in _file_problems(tmp_path, b"GIF89a" + b"0" * 20)["image_file"]
    big = PNG + b"\x00" * (10 * 1024 * 1024)
    assert "the limit is 10485760" in _file_problems(tmp_path, big)["image_file"]
    both = _file_problems(tmp_path, PNG, image_url="https://x/a.png")
    assert both["image_file"] == "give image_url or image_file, not both"


def test_last_frame_needs_a_first_frame_and_a_model_that_takes_it() -> None:
    assert "needs a first frame" in _problems(prompt="ok", last_frame_url="https://x/b.png")["last_frame_url"]
    problems = _problems(
        prompt="ok", model="seedance-1-0-pro-fast-251015", image_url="https://x/a", last_frame_url="https://x/b"
    )
    assert problems == {"last_frame_url": "seedance-1-0-pro-fast-251015 does not take a last frame image"}


def test_veo_defaults_and_its_own_limits() -> None:
    params = _resolve(prompt="ok", provider="veo")
    assert (params["model"], params["duration"], params["resolution"], params["ratio"], params["audio"]) == (
        "veo-3.1-fast-generate-001",
        4,
        "720p",
        "16:9",
        True,
    )
    veo = {"prompt": "ok", "provider": "veo"}
    assert "5 s is not supported" in _problems(**veo, duration=5)["duration"]
    assert "'1:1' is not supported" in _problems(**veo, ratio="1:1")["ratio"]
    assert "allowed: allow_adult, dont_allow" in _problems(**veo, person_generation="allow_all")["person_generation"]
    assert _resolve(prompt="ok", provider="veo", resolution="4k", negative_prompt="blur")["negative_prompt"] == "blur"
    assert "does not take a negative prompt" in _problems(prompt="ok", negative_prompt="blur")["negative_prompt"]
    assert "is a veo model, not byteplus" in _problems(prompt="ok", model="veo-3.1-generate-001")["model"]


class _Handler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        routes = {"/ok.png": (200, "image/png"), "/page": (200, "text/html"), "/gone.png": (404, "text/plain")}
        if self.path == "/nohead.png":
            self.send_response(405)
            self.end_headers()
            return
        status, kind = routes.get(self.path, (404, "text/plain"))
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(206 if self.path == "/nohead.png" else 404)
        self.send_header("Content-Type", "image/jpeg")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_image_urls_are_checked_before_anything_is_stored(image_server: str) -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    # The test server is on loopback, which the URL guard refuses unless trusted.
    vq = VideoQueue(Settings(fetch_allow_hosts="127.0.0.1"), store=JobStore(redis))
    assert vq.prepare(VideoRequest(prompt="ok", image_url=f"{image_server}/ok.png")).record
    assert vq.prepare(VideoRequest(prompt="ok", image_url=f"{image_server}/nohead.png")).record
    for path, why in [("/gone.png", "answers HTTP 404"), ("/page", "answers text/html, not an image")]:
        with pytest.raises(InvalidRequestError) as info:
            vq.submit(VideoRequest(prompt="x", image_url=f"{image_server}{path}"))
        assert info.value.problems == {"image_url": f"{image_server}{path} {why}"}
    with pytest.raises(InvalidRequestError) as info:
        vq.submit(
            VideoRequest(prompt="x", image_url="http://127.0.0.1:9/closed.png", last_frame_url="http://x.invalid/a.png")
        )
    assert "is unreachable" in info.value.problems["image_url"]
    assert "is unreachable" in info.value.problems["last_frame_url"]
    assert redis.keys("*") == []


def test_client_job_ids_are_unique() -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(), store=JobStore(redis))
    first = vq.prepare(VideoRequest(prompt="a", client_job_id="order-17/clip-1".replace("/", "-")))
    vq.store.create_many([first.record])
    with pytest.raises(InvalidRequestError) as info:
        vq.enqueue([vq.prepare(VideoRequest(prompt="b", client_job_id="order-17-clip-1"))])
    assert info.value.problems["client_job_id"] == (
        f"client job id 'order-17-clip-1' was already used by job {first.record.id} "
        'for a different request: prompt ("a" stored, "b" now)'
    )
    with pytest.raises(InvalidRequestError) as info:
        vq.submit_many([VideoRequest(prompt="c", client_job_id="x1"), VideoRequest(prompt="d", client_job_id="x1")])
    assert info.value.problems == {"[1].client_job_id": "'x1' repeats item [0]"}
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest.parse({"prompt": "e", "client_job_id": "has space"})
    assert "client_job_id" in info.value.problems
    assert redis.keys(client_key("*")) == [client_key("order-17-clip-1")]


# ---------------------------------------------------- parameters written into the prompt (issue 12)


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("--dur 10", "duration"),
        ("--duration 5", "duration"),
        ("--duration=8", "duration"),
        ("--rt 9:16", "ratio"),
        ("--ratio 16:9", "ratio"),
        ("--ratio adaptive", "ratio"),
        ("--rs 1080p", "resolution"),
        ("--resolution 720p", "resolution"),
        ("--RS 480P", "resolution"),
        ("--seed 42", "seed"),
        ("--seed -1", "seed"),
    ],
)
def test_prompt_parameters_with_a_request_field_are_refused_naming_it(flag: str, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest.parse({"prompt": f"a red fox in snow {flag}"})
    assert info.value.problems == {"prompt": f"prompt carries {flag}: use the request field {field} instead"}


@pytest.mark.parametrize(
    ("flag", "what"),
    [
        ("--wm true", "watermark"),
        ("--watermark false", "watermark"),
        ("--cf false", "fixed camera"),
        ("--camerafixed true", "fixed camera"),
        ("--fps 24", "frame rate"),
    ],
)
def test_prompt_parameters_without_a_request_field_say_so(flag: str, what: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest.parse({"prompt": f"{flag} a red fox in snow"})
    message = info.value.problems["prompt"]
    assert message.startswith(f"prompt carries {flag}: videoqueue has no request field for the {what}")
    assert "remove it from the prompt" in message


def test_every_parameter_of_a_prompt_is_named_at_once() -> None:
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest.parse({"prompt": "a fox --dur 10 --rt 9:16 --rs 1080p --wm true"})
    message = info.value.problems["prompt"]
    for flag in ("--dur 10", "--rt 9:16", "--rs 1080p", "--wm true"):
        assert f"prompt carries {flag}:" in message


@pytest.mark.parametrize(
    "prompt",
    [
        "a well--known street -- at night",
        "wait -- what? --- the end",
        "a --seed of doubt",
        "the --durable and --ratios words, --dur10 glued",
        "em dash--dur 10 inside a word",
        "--",
        "fox --duration of the storm",
    ],
)
def test_ordinary_text_with_dashes_is_accepted(prompt: str) -> None:
    assert VideoRequest.parse({"prompt": prompt}).prompt == prompt


def test_prompt_parameters_are_refused_before_anything_is_stored() -> None:
    server = fakeredis.FakeRedis()
    vq = VideoQueue(Settings(_env_file=None), store=JobStore(server))
    with pytest.raises(InvalidRequestError):
        vq.submit(VideoRequest.model_construct(prompt="a fox --dur 10"))
    assert server.keys("*") == []
