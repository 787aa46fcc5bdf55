"""REDIS_SENTINELS: one setting for the job store's client and the Celery broker, checked
before anything connects."""

from __future__ import annotations

import pytest
from kombu.utils import json as kombu_json
from redis.sentinel import SentinelConnectionPool

from producer.celery_client import producer_app_for
from videoqueue import redisconn
from videoqueue.settings import InvalidSettingsError, Settings, load_settings

SENTINELS = "sentinel-1:26379,sentinel-2:26380, 10.0.0.3:26381"


def sentinel_settings(**changes: object) -> Settings:
    fields: dict[str, object] = {
        "redis_url": "redis://:hunter2@ignored:6379/4",
        "redis_sentinels": SENTINELS,
        "redis_sentinel_master": "mymaster",
    }
    return Settings(_env_file=None, **{**fields, **changes})  # type: ignore[arg-type]


def test_the_broker_is_kombus_sentinel_url_with_the_password_and_database_of_redis_url() -> None:
    settings = sentinel_settings()
    assert settings.sentinel_nodes() == [("sentinel-1", 26379), ("sentinel-2", 26380), ("10.0.0.3", 26381)]
    assert settings.effective_broker_url == (
        "sentinel://:hunter2@sentinel-1:26379/4;sentinel://:hunter2@sentinel-2:26380/4;"
        "sentinel://:hunter2@10.0.0.3:26381/4"
    )
    assert redisconn.broker_transport_options(settings)["master_name"] == "mymaster"


def test_broker_url_still_wins_and_then_no_sentinel_options() -> None:
    settings = sentinel_settings(broker_url="amqp://guest:guest@rabbit:5672//")
    assert settings.effective_broker_url == "amqp://guest:guest@rabbit:5672//"
    assert redisconn.broker_transport_options(settings) == {}


def test_without_sentinels_nothing_changes() -> None:
    settings = Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/2")
    assert settings.effective_broker_url == "redis://127.0.0.1:6379/2"
    assert settings.sentinel_nodes() == []
    assert redisconn.broker_transport_options(settings) == {}
    assert not isinstance(redisconn.connect_settings(settings).connection_pool, SentinelConnectionPool)


def test_the_job_store_client_asks_the_sentinels_for_the_master() -> None:
    settings = sentinel_settings(redis_sentinel_password="sentinel-secret")
    client = redisconn.connect_settings(settings)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, "hunter2")
    assert pool.connection_kwargs["socket_timeout"] == redisconn.COMMAND_TIMEOUT_S
    sentinel_nodes = pool.sentinel_manager.sentinels
    assert [node.connection_pool.connection_kwargs["port"] for node in sentinel_nodes] == [26379, 26380, 26381]
    credentials = [node.connection_pool.connection_kwargs["credential_provider"] for node in sentinel_nodes]
    assert {c.get_credentials() for c in credentials} == {("sentinel-secret",)}


def test_the_producer_app_carries_the_master_name() -> None:
    settings = sentinel_settings()
    app = producer_app_for(settings)
    assert app.conf.broker_url == settings.effective_broker_url
    assert app.conf.broker_transport_options["master_name"] == "mymaster"
    assert "credential_provider" not in app.conf.broker_transport_options["sentinel_kwargs"]
    assert producer_app_for(sentinel_settings()) is app


def test_the_sentinel_password_never_shows_in_what_a_worker_reports() -> None:
    # A worker's transport options go out in `celery inspect stats` (kombu's JSON) and to
    # Flower's worker page.
    settings = sentinel_settings(redis_sentinel_password="sentinel-secret")
    options = producer_app_for(settings).conf.broker_transport_options
    provider = options["sentinel_kwargs"]["credential_provider"]
    assert provider.get_credentials() == ("sentinel-secret",)
    shown = kombu_json.dumps(options) + repr(options) + str(options)
    assert "sentinel-secret" not in shown and "**********" in shown
    assert producer_app_for(sentinel_settings(redis_sentinel_password="another")) is not producer_app_for(settings)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"REDIS_SENTINELS": "sentinel-1"}, "REDIS_SENTINELS must be a comma-separated list of host:port"),
        ({"REDIS_SENTINELS": "a:26379,:26380"}, "REDIS_SENTINELS must be a comma-separated list of host:port"),
        ({"REDIS_SENTINELS": "a:99999"}, "REDIS_SENTINELS must be a comma-separated list of host:port"),
        ({"REDIS_SENTINELS": "a:26379"}, "REDIS_SENTINEL_MASTER: REDIS_SENTINELS is set: name the master"),
        (
            {"REDIS_SENTINELS": "a:26379", "REDIS_SENTINEL_MASTER": "m", "REDIS_URL": "rediss://:pw@h:6380/0"},
            "REDIS_SENTINELS: with REDIS_SENTINELS, REDIS_URL must be a redis:// URL",
        ),
        ({"REDIS_REPLICA_WAIT_MS": "-1"}, "REDIS_REPLICA_WAIT_MS"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_MASTER: set without REDIS_SENTINELS"),
    ],
)
def test_bad_sentinel_settings_are_refused_in_one_line_without_values(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert "pw@" not in message


def test_no_master_found_is_one_line_naming_the_settings_not_the_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    from kombu.exceptions import OperationalError
    from redis.sentinel import MasterNotFoundError

    from producer.cli_errors import explain

    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379,s2:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "mymaster")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@ignored:6379/0")
    lost = MasterNotFoundError("No master found for 'mymaster' : <redis.client.Redis(<ConnectionPool(...)>)>")
    try:
        raise OperationalError("broker") from lost  # as kombu wraps it for a producer
    except OperationalError as wrapped:
        explained = [explain(lost).message, explain(wrapped).message]
    for message in explained:
        assert message.startswith("no sentinel names a primary for master 'mymaster' of sentinels s1:26379,s2:26379")
        assert "REDIS_SENTINEL_MASTER" in message and "ConnectionPool" not in message and "hunter2" not in message


def test_the_asyncio_client_asks_the_sentinels_as_the_sync_one() -> None:
    from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool

    settings = sentinel_settings(redis_sentinel_password="sentinel-secret")
    pool = redisconn.connect_settings_async(settings).connection_pool
    assert isinstance(pool, AsyncSentinelPool) and pool.service_name == "mymaster"
    assert (pool.connection_kwargs["db"], pool.connection_kwargs["password"]) == (4, "hunter2")
    assert pool.connection_kwargs["socket_timeout"] == redisconn.COMMAND_TIMEOUT_S
    sentinel_nodes = pool.sentinel_manager.sentinels
    assert [node.connection_pool.connection_kwargs["port"] for node in sentinel_nodes] == [26379, 26380, 26381]
    credentials = [node.connection_pool.connection_kwargs["credential_provider"] for node in sentinel_nodes]
    assert {c.get_credentials() for c in credentials} == {("sentinel-secret",)}
    plain = redisconn.connect_settings_async(Settings(_env_file=None, redis_url="redis://127.0.0.1:6379/3"))
    assert plain.connection_pool.connection_kwargs["db"] == 3
    assert plain.connection_pool.connection_kwargs["socket_connect_timeout"] == redisconn.CONNECT_TIMEOUT_S
