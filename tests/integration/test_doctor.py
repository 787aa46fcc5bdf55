"""`videoqueue doctor` against real parts: Redis, the simulator's ModelArk and Vertex APIs,
local and S3 (moto) storage, and real workers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import typer
from typer.testing import CliRunner

from simulator.stack import ManagedProcess, free_port, start_worker, wait_until
from tests.integration.conftest import REDIS_URL, SIM_GOOGLE_KEY, SIM_KEY, S3Server, Simulator, Stack
from videoqueue import namespace
from videoqueue.settings import Settings, env_name, get_settings
from worker.cli import doctor as doctor_command
from worker.doctor import DoctorReport, Status, run_doctor
from worker.providers import provider_endpoint

pytestmark = pytest.mark.integration

WRONG_KEY = "wrong-key-7f3a9c"


def doctor_settings(stack: Stack, **overrides: Any) -> Settings:
    """Settings as the stack's workers get them."""
    values: dict[str, Any] = {
        "redis_url": REDIS_URL,
        "storage_url": stack.storage_url,
        "byteplus_base_url": stack.simulator.ark_base_url,
        "byteplus_api_key": SIM_KEY,
        "google_api_key": SIM_GOOGLE_KEY,
        "veo_base_url": f"{stack.simulator.url}/",
        **{k.lower(): v for k, v in stack.extra_env.items()},
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def shown(report: DoctorReport) -> str:
    """The report as `videoqueue doctor` prints it, in text and JSON."""
    return report.to_text() + json.dumps(report.to_dict())


def statuses(report: DoctorReport) -> dict[str, Status]:
    return {check.name: check.status for check in report.checks}


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of its own with AOF on and a memory ceiling, as docker-compose.yml runs it."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""]
    argv += ["--maxmemory", "256mb", "--maxmemory-policy", "noeviction"]
    proc = ManagedProcess("redis-aof", [*argv, "--dir", str(tmp_path)], {}, tmp_path / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    wait_until(lambda: answers() or not proc.alive(), 20, "redis-server with AOF")
    yield url
    proc.stop()


def test_all_green_with_a_worker_the_simulator_and_aof(local_stack: Stack, aof_redis: str) -> None:
    local_stack.start_worker(REDIS_URL=aof_redis)
    report = run_doctor(doctor_settings(local_stack, redis_url=aof_redis))
    assert report.ok, report.to_text()
    assert all(check.status is Status.OK for check in report.checks), report.to_text()
    assert [c.name for c in report.checks] == [
        "namespace",
        "redis",
        "replication",
        "redis access",
        "redis memory",
        "storage",
        "provider byteplus",
        "provider veo",
        "workers",
        "worker config",
    ]
    assert report.named("namespace").detail.startswith("'test': keys vq@test:*")
    assert "AOF on" in report.named("redis").detail
    submit, poll, store = namespace.queues()
    assert f"consumers per queue: {submit} 1, {poll} 1, {store} 1" in report.named("workers").detail
    assert report.named("replication").detail == f"primary {aof_redis}; no replica"
    assert report.verdict.startswith("ready: all 10 checks ok")
    assert report.named("worker config").detail.endswith("; all configured as this shell")
    # The probe is gone again.
    assert not list((Path(local_stack.storage_url.removeprefix("file://"))).rglob("*.json"))


def test_redis_without_aof_is_a_warning(local_stack: Stack) -> None:
    local_stack.start_worker()
    config: dict[str, str] = local_stack.redis.config_get("appendonly")  # type: ignore[assignment]
    appendonly = config["appendonly"]
    report = run_doctor(doctor_settings(local_stack))
    redis_check = report.named("redis")
    if appendonly == "yes":
        assert redis_check.status is Status.OK
    else:
        assert redis_check.status is Status.WARN and "AOF off" in redis_check.detail
        # The suite's Redis may have no memory ceiling either (`redis memory`).
        warned = [c.name for c in report.checks if c.status is Status.WARN]
        assert "redis" in warned and set(warned) <= {"redis", "redis memory"}, report.verdict
        assert report.verdict.startswith(f"ready, with {len(warned)} warning(s) (redis")
    assert report.ok, report.to_text()


def test_s3_storage_probe_is_written_read_and_deleted(s3_stack: tuple[Stack, S3Server, str]) -> None:
    stack, s3, bucket = s3_stack
    report = run_doctor(doctor_settings(stack))
    check = report.named("storage")
    assert check.status is Status.OK, check.detail
    assert f"s3://{bucket}/renders" in check.detail
    assert s3.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_a_wrong_byteplus_key_fails_the_provider_check(local_stack: Stack) -> None:
    report = run_doctor(doctor_settings(local_stack, byteplus_api_key=WRONG_KEY))
    check = report.named("provider byteplus")
    assert check.status is Status.FAIL and "rejected" in check.detail and "401" in check.detail
    assert report.named("provider veo").status is Status.OK
    assert not report.ok and "provider byteplus" in report.verdict
    assert WRONG_KEY not in shown(report) and SIM_KEY not in shown(report)


def test_a_wrong_google_key_fails_and_the_right_one_meets_not_found(local_stack: Stack, simulator: Simulator) -> None:
    """The probe asks for a made-up operation: the simulator, like Vertex AI, checks the key
    first (401 UNAUTHENTICATED) and only then looks the operation up (404 NOT_FOUND)."""
    good = run_doctor(doctor_settings(local_stack)).named("provider veo")
    assert good.status is Status.OK and "404" in good.detail
    report = run_doctor(doctor_settings(local_stack, google_api_key=WRONG_KEY))
    check = report.named("provider veo")
    assert check.status is Status.FAIL and "rejected" in check.detail and "401" in check.detail
    assert WRONG_KEY not in shown(report)


def test_unreachable_storage_fails(local_stack: Stack) -> None:
    settings = doctor_settings(
        local_stack,
        storage_url="s3://videos/renders",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )
    report = run_doctor(settings)
    check = report.named("storage")
    assert check.status is Status.FAIL and "cannot write" in check.detail
    assert "testing-secret" not in shown(report)


def test_unreachable_provider_fails(local_stack: Stack) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    report = run_doctor(doctor_settings(local_stack, byteplus_base_url=f"{dead}/api/v3", veo_base_url=f"{dead}/"))
    assert report.named("provider byteplus").status is Status.FAIL
    assert "cannot reach" in report.named("provider byteplus").detail
    assert report.named("provider veo").status is Status.FAIL


def test_no_worker_fails_the_workers_check(local_stack: Stack) -> None:
    report = run_doctor(doctor_settings(local_stack))
    check = report.named("workers")
    assert check.status is Status.FAIL and "no worker answered" in check.detail
    assert not report.ok


def test_a_queue_nobody_consumes_is_a_warning(local_stack: Stack) -> None:
    proc = start_worker(
        "pollers-only",
        local_stack.env(),
        local_stack.log_dir,
        queues=[namespace.queue("submit"), namespace.queue("poll")],
        concurrency=1,
    )
    local_stack.workers.append(proc)
    check = run_doctor(doctor_settings(local_stack)).named("workers")
    assert check.status is Status.WARN
    assert f"no worker consumes {namespace.queue('store')}: finished videos are never stored" in check.detail


def test_an_unset_default_provider_key_is_a_warning(local_stack: Stack) -> None:
    local_stack.start_worker()
    report = run_doctor(doctor_settings(local_stack, byteplus_api_key=None, google_api_key=None))
    assert report.named("provider byteplus").status is Status.WARN
    assert report.named("provider veo").status is Status.OK
    assert "not configured" in report.named("provider veo").detail


# -- the CLI command, registered on a fresh Typer app -------------------------------------------


def cli_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A group, as the videoqueue CLI is."""

    app.command(name="doctor")(doctor_command)
    return app


@pytest.fixture
def cli_env(local_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    for key, value in local_stack.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(Settings.model_config, "env_file", None)
    get_settings.cache_clear()
    yield local_stack
    get_settings.cache_clear()


def test_doctor_command_json_exit_zero_when_nothing_failed(cli_env: Stack) -> None:
    cli_env.start_worker()
    result = CliRunner().invoke(cli_app(), ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True and {c["name"] for c in data["checks"]} >= {"redis", "storage", "workers"}
    assert all(c["status"] in {"ok", "warn"} for c in data["checks"])


def test_doctor_command_exits_one_when_a_check_failed(cli_env: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYTEPLUS_API_KEY", WRONG_KEY)
    get_settings.cache_clear()
    result = CliRunner().invoke(cli_app(), ["doctor"])
    assert result.exit_code == 1
    assert "fail  provider byteplus" in result.stdout and "fail  workers" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("verdict: NOT READY")
    assert WRONG_KEY not in result.output


def test_doctor_lists_the_namespaces_workers_and_flags_one_configured_otherwise(
    local_stack: Stack, log_dir: Path
) -> None:
    """Seen: a worker configured for another endpoint than the shell (and the jobs) used."""
    local_stack.start_worker()
    elsewhere = "http://127.0.0.1:9/api/v3"
    odd = start_worker("odd", local_stack.env(BYTEPLUS_BASE_URL=elsewhere), log_dir, concurrency=1)
    local_stack.workers.append(odd)
    # A worker of another deployment on the same Redis is not this namespace's.
    stranger = start_worker("stranger", local_stack.env(VQ_NAMESPACE="elsewhere"), log_dir, concurrency=1)
    local_stack.workers.append(stranger)
    check = run_doctor(doctor_settings(local_stack)).named("worker config")
    assert check.status is Status.WARN, check.detail
    assert check.detail.startswith("2 worker(s) registered in namespace 'test': ")
    assert "stranger@" not in check.detail
    shell = provider_endpoint("byteplus", doctor_settings(local_stack))
    theirs = provider_endpoint("byteplus", doctor_settings(local_stack, byteplus_base_url=elsewhere))
    assert "configured otherwise than this shell: odd@" in check.detail
    assert f"byteplus {theirs.describe()}, this shell {shell.describe()}" in check.detail
    assert SIM_KEY not in check.detail
    odd.stop()  # a worker that stops leaves the registry
    assert run_doctor(doctor_settings(local_stack)).named("worker config").status is Status.OK


def test_redis_memory_warns_without_a_ceiling_near_it_and_with_an_evicting_policy(
    local_stack: Stack, aof_redis: str
) -> None:
    server = redis.Redis.from_url(aof_redis)
    # The broker on another database of the same server: its memory is checked as well.
    settings = doctor_settings(local_stack, redis_url=aof_redis, broker_url=aof_redis.replace("/0", "/1"))

    def memory() -> tuple[Status, str, Status]:
        report = run_doctor(settings)
        return (
            report.named("redis memory").status,
            report.named("redis memory").detail,
            report.named("broker memory").status,
        )

    status, detail, broker = memory()
    assert (status, broker) == (Status.OK, Status.OK) and "of 256 MB used" in detail and "noeviction" in detail

    server.config_set("maxmemory", 0)
    status, detail, broker = memory()
    assert status is Status.WARN and detail.endswith(
        "no maxmemory: Redis grows until the host runs out of memory and the kernel kills it "
        "(set maxmemory; the compose stack: REDIS_MAXMEMORY)"
    )
    assert broker is Status.WARN

    used = int(server.info("memory")["used_memory"])  # type: ignore[index]
    server.config_set("maxmemory", int(used / 0.9))  # about 90 % full
    status, detail, _ = memory()
    assert status is Status.WARN and "of maxmemory used" in detail and "every new job" in detail

    server.config_set("maxmemory", "256mb")
    server.config_set("maxmemory-policy", "allkeys-lru")
    status, detail, _ = memory()
    assert status is Status.WARN
    assert detail.endswith("maxmemory-policy allkeys-lru can evict job records and queued messages (use noeviction)")
