"""The `redis access` check's decisions (worker/redis_access.py) and the broker's TLS
default (videoqueue/brokertls.py), without any server; tests/integration/
test_redis_auth_tls.py runs them against real password-protected and TLS Redis servers."""

from __future__ import annotations

import ssl

import pytest
from kombu import Connection

from producer.celery_client import producer_app
from videoqueue.brokertls import broker_use_ssl
from videoqueue.settings import Settings
from worker.doctor import Status, check_redis_access
from worker.redis_access import RedisAccess, exposure_problems, is_loopback, without_credentials

PASSWORD = "pw-5e1d7c"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("redis://127.0.0.1:6379/0", True),
        ("redis://127.8.0.1:6379/0", True),
        ("redis://localhost:6379/0", True),
        ("redis://[::1]:6379/0", True),
        (f"rediss://:{PASSWORD}@LOCALHOST:6380/0", True),
        ("unix:///run/redis.sock", True),
        ("redis://10.0.0.5:6379/0", False),
        ("redis://192.0.2.2:6379/0", False),
        ("redis://[fd00::2]:6379/0", False),
        ("redis://redis:6379/0", False),  # a compose service: another container
        ("redis://0.0.0.0:6379/0", False),
    ],
)
def test_loopback_is_this_host_only(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def test_credentials_are_dropped_and_the_rest_kept() -> None:
    url = f"rediss://vq:{PASSWORD}@10.0.0.5:6380/3?ssl_ca_certs=/etc/ca.pem"
    assert without_credentials(url) == "rediss://10.0.0.5:6380/3?ssl_ca_certs=/etc/ca.pem"
    assert without_credentials(f"redis://:{PASSWORD}@h:1/0") == "redis://h:1/0"
    assert without_credentials("redis://h:1/0") == "redis://h:1/0"


@pytest.mark.parametrize(
    ("access", "expected"),
    [
        (RedisAccess(loopback=True, tls=False, open=True), []),
        (RedisAccess(loopback=True, tls=False, open=None), []),
        (RedisAccess(loopback=False, tls=False, open=True), ["answers without a password", "plain text"]),
        (RedisAccess(loopback=False, tls=False, open=False), ["plain text"]),
        (RedisAccess(loopback=False, tls=True, open=True), ["answers without a password"]),
        (RedisAccess(loopback=False, tls=True, open=False), []),
        # Could not be asked: the `redis` check says why; no guess here.
        (RedisAccess(loopback=False, tls=True, open=None), []),
    ],
)
def test_exposure_problems(access: RedisAccess, expected: list[str]) -> None:
    problems = exposure_problems(access)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start)


def settings(**values: str) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_the_check_names_each_redis_by_role_without_its_password() -> None:
    store = f"redis://:{PASSWORD}@10.0.0.5:6379/0"
    broker = f"rediss://:{PASSWORD}@10.0.0.6:6380/0"
    answers = {store: RedisAccess(False, False, False), broker: RedisAccess(False, True, True)}
    check = check_redis_access(settings(redis_url=store, broker_url=broker), answers.__getitem__)
    assert check.status is Status.WARN
    assert "job store redis://10.0.0.5:6379/0 (with credentials) plain text" in check.detail
    assert "broker rediss://10.0.0.6:6380/0 (with credentials) answers without a password" in check.detail
    assert PASSWORD not in check.detail


def test_the_check_is_ok_on_the_loopback_and_over_tls_with_a_password() -> None:
    asked: list[str] = []

    def probe(url: str) -> RedisAccess:
        asked.append(url)
        return RedisAccess(loopback=False, tls=True, open=False)

    url = f"rediss://:{PASSWORD}@10.0.0.5:6380/0"
    check = check_redis_access(settings(redis_url=url), probe)
    assert check.status is Status.OK and "TLS, password required" in check.detail
    assert asked == [url], "the broker is the job store's Redis: asked once"
    local = check_redis_access(
        settings(redis_url="redis://127.0.0.1:6379/0"), lambda url: RedisAccess(True, False, True)
    )
    assert local.status is Status.OK and local.detail == "job store redis://127.0.0.1:6379/0: loopback"


def test_an_amqp_broker_is_not_a_redis_to_check() -> None:
    asked: list[str] = []

    def probe(url: str) -> RedisAccess:
        asked.append(url)
        return RedisAccess(True, False, True)

    check_redis_access(settings(broker_url="amqp://guest:guest@10.0.0.7:5672//"), probe)
    assert asked == ["redis://127.0.0.1:6379/0"]


def test_a_rediss_broker_verifies_the_certificate_by_default() -> None:
    assert broker_use_ssl("rediss://:pw@10.0.0.5:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert broker_use_ssl("redis://10.0.0.5:6379/0") is None
    assert broker_use_ssl("amqps://u:p@10.0.0.5:5671//") is None
    app = producer_app("rediss://:pw@10.0.0.5:6380/0")
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    # Without it kombu would trust any certificate (ssl_cert_reqs CERT_NONE).
    with app.connection_for_write() as connection:
        assert connection.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert producer_app("redis://10.0.0.5:6379/0").conf.broker_use_ssl is False


def test_the_urls_ssl_parameters_replace_the_default() -> None:
    """A private CA named in the URL (ssl_ca_certs) is what kombu uses, as redis-py does;
    redis-py's SSL connection then requires a valid certificate by default."""
    url = "rediss://:pw@10.0.0.5:6380/0?ssl_ca_certs=/etc/videoqueue/ca.pem"
    with Connection(url, ssl=broker_use_ssl(url) or False) as connection:
        assert connection.ssl == {"ssl_ca_certs": "/etc/videoqueue/ca.pem"}


def test_with_sentinels_the_primary_they_name_is_checked_not_redis_urls_host() -> None:
    """REDIS_URL's host is unused with REDIS_SENTINELS (docs/production.md writes `unused`):
    the check asks the primary the sentinels name, with REDIS_URL's password and database."""
    asked: list[str] = []

    def probe(url: str) -> RedisAccess:
        asked.append(url)
        return RedisAccess(loopback=False, tls=False, open=True)

    sentinel = settings(
        redis_url=f"redis://:{PASSWORD}@unused:6379/2",
        redis_sentinels="sentinel-1:26379",
        redis_sentinel_master="mymaster",
    )
    check = check_redis_access(sentinel, probe, lambda s: ("10.0.1.12", 6380))
    assert asked == [f"redis://:{PASSWORD}@10.0.1.12:6380/2"]
    assert (
        check.status is Status.WARN
        and "job store redis://10.0.1.12:6380/2 (with credentials) answers without" in check.detail
    )
    assert "unused" not in check.detail and PASSWORD not in check.detail
    asked.clear()
    check = check_redis_access(sentinel, probe, lambda s: None)
    assert asked == [] and check.status is Status.WARN and "no sentinel names a primary" in check.detail
