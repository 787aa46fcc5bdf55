"""`make redis` decides where a local Redis must listen from REDIS_URL (simulator.localredis)."""

from __future__ import annotations

import pytest

from simulator.localredis import LocalRedis, NotLocalError, local_target


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", LocalRedis("127.0.0.1", 6379, 0)),
        ("redis://localhost:6380/4", LocalRedis("127.0.0.1", 6380, 4)),
        ("redis://127.0.0.1", LocalRedis("127.0.0.1", 6379, 0)),
        ("redis://127.0.0.1:7001/", LocalRedis("127.0.0.1", 7001, 0)),
        ("redis://:s3cret@127.0.0.1:7002/2", LocalRedis("127.0.0.1", 7002, 2, "s3cret")),
        ("redis://[::1]:7003/1", LocalRedis("::1", 7003, 1)),
    ],
)
def test_the_port_and_database_of_a_local_url_are_honoured(url: str, expected: LocalRedis) -> None:
    assert local_target(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://redis.example.com:6379/0", "names host redis.example.com, not this machine"),
        ("redis://10.0.0.5:6379/0", "names host 10.0.0.5"),
        ("rediss://127.0.0.1:6379/0", "uses rediss://"),
        ("unix:///tmp/redis.sock", "uses unix://"),
        ("redis://127.0.0.1:6379/zero", "database 'zero'"),
    ],
)
def test_a_url_that_cannot_be_started_here_is_refused_clearly(url: str, why: str) -> None:
    with pytest.raises(NotLocalError, match=why):
        local_target(url)


def test_the_description_never_shows_the_password() -> None:
    assert "s3cret" not in local_target("redis://:s3cret@127.0.0.1:7002/2").describe()
