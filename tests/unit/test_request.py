"""Validation of requests before anything is stored or enqueued."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from producer import InvalidRequestError, Settings, VideoQueue, VideoRequest
from producer.catalog import load_catalog
from producer.jobstore import JobStore
from producer.request import resolve


def _resolve(**fields: Any) -> dict[str, Any]:
    return resolve(VideoRequest.parse(fields), load_catalog(), "byteplus")


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
        "image_url": None,
        "tags": [],
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
    record = vq.prepare(VideoRequest(prompt="fox", duration=5))
    assert str(record.cost_estimate_usd) == "0.249163"
    assert isinstance(record.request["seed"], int)
    assert (record.deadline_at - record.created_at).total_seconds() == 60
