"""The doctor's report, verdict and CLI glue, without any server (tests/integration/
test_doctor.py runs the checks against real ones)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fakeredis
import pytest
import typer
from typer.testing import CliRunner

from videoqueue import namespace, redisconn
from videoqueue.settings import Settings
from worker import doctor, registry
from worker.cli import doctor as doctor_command
from worker.doctor import Check, DoctorReport, Status
from worker.providers import provider_endpoint


def report(*statuses: Status) -> DoctorReport:
    return DoctorReport(tuple(Check(f"check{i}", s, f"detail {i}") for i, s in enumerate(statuses)))


def test_verdicts() -> None:
    assert report(Status.OK, Status.OK).verdict == "ready: all 2 checks ok"
    assert report(Status.OK, Status.WARN).verdict == "ready, with 1 warning(s) (check1)"
    failed = report(Status.FAIL, Status.WARN, Status.FAIL)
    assert failed.verdict == "NOT READY: 2 check(s) failed (check0, check2)"
    assert not failed.ok and report(Status.WARN).ok


def test_text_and_json_forms() -> None:
    r = report(Status.OK, Status.FAIL)
    assert r.to_text().splitlines() == ["ok    check0  detail 0", "fail  check1  detail 1", f"verdict: {r.verdict}"]
    assert r.to_dict() == {
        "ok": False,
        "verdict": r.verdict,
        "checks": [
            {"name": "check0", "status": "ok", "detail": "detail 0"},
            {"name": "check1", "status": "fail", "detail": "detail 1"},
        ],
    }


def test_urls_lose_their_credentials() -> None:
    assert doctor.safe_url("redis://:hunter2@redis:6379/0") == "redis://redis:6379/0 (with credentials)"
    assert (
        doctor.safe_url("https://user:pw@ark.example.com/api/v3") == "https://ark.example.com/api/v3 (with credentials)"
    )
    assert doctor.safe_url("http://127.0.0.1:9000") == "http://127.0.0.1:9000"


def test_a_crashing_check_is_a_failed_check_and_its_message_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(settings: Settings) -> Check:
        raise RuntimeError("Authorization: Bearer sk-xxx went wrong")

    for name in ("check_redis", "check_redis_access", "check_replication", "check_storage"):
        monkeypatch.setattr(doctor, name, boom)
    monkeypatch.setattr(doctor, "check_provider", lambda provider, settings: boom(settings))
    monkeypatch.setattr(doctor, "check_redis_memory", lambda name, url, settings=None: boom(Settings(_env_file=None)))
    monkeypatch.setattr(doctor, "check_workers", lambda settings, timeout: Check("workers", Status.OK, "fine"))
    monkeypatch.setattr(doctor, "check_worker_config", lambda settings: Check("worker config", Status.OK, "fine"))
    result = doctor.run_doctor(Settings(_env_file=None))
    assert [c.status for c in result.checks] == [Status.OK] + [Status.FAIL] * 7 + [Status.OK] * 2
    assert "check crashed: RuntimeError" in result.checks[1].detail
    assert "sk-xxx" not in json.dumps(result.to_dict()) + result.to_text()


def test_the_broker_is_checked_only_when_it_is_another_server(monkeypatch: pytest.MonkeyPatch) -> None:
    ok = Check("x", Status.OK, "fine")
    for name in ("check_redis", "check_replication", "check_broker", "check_redis_access", "check_storage"):
        monkeypatch.setattr(doctor, name, lambda settings, name=name: Check(name.removeprefix("check_"), Status.OK, ""))
    monkeypatch.setattr(
        doctor, "check_provider", lambda provider, settings: Check(f"provider {provider}", Status.OK, "")
    )
    monkeypatch.setattr(doctor, "check_workers", lambda settings, timeout: ok)
    monkeypatch.setattr(doctor, "check_worker_config", lambda settings: ok)
    monkeypatch.setattr(doctor, "check_redis_memory", lambda name, url: Check(name, Status.OK, url))
    same = doctor.run_doctor(Settings(_env_file=None))
    other = doctor.run_doctor(Settings(_env_file=None, broker_url="redis://elsewhere:6379/0"))
    rabbit = doctor.run_doctor(Settings(_env_file=None, broker_url="amqp://guest:guest@elsewhere:5672//"))
    assert "broker" not in [c.name for c in same.checks]
    assert "broker" in [c.name for c in other.checks]
    # A Redis broker's memory ceiling is checked as the job store's; RabbitMQ has its own.
    assert [c.name for c in same.checks if "memory" in c.name] == ["redis memory"]
    assert [c.name for c in other.checks if "memory" in c.name] == ["redis memory", "broker memory"]
    assert other.named("broker memory").detail == "redis://elsewhere:6379/0"
    assert [c.name for c in rabbit.checks if "memory" in c.name] == ["redis memory"]


def test_memory_problems_name_a_missing_ceiling_a_full_one_and_an_evicting_policy() -> None:
    mb = 2**20
    assert doctor.memory_problems(10 * mb, 100 * mb, "noeviction") == []
    assert doctor.memory_problems(79 * mb, 100 * mb, "noeviction") == []
    [full] = doctor.memory_problems(80 * mb, 100 * mb, "noeviction")
    assert full.startswith("80% of maxmemory used (80 MB of 100 MB): at 100% every new job")
    [none] = doctor.memory_problems(10 * mb, 0, "noeviction")
    assert none.startswith("no maxmemory: ")
    assert doctor.memory_problems(10 * mb, 0, "volatile-lru") == [
        none,
        "maxmemory-policy volatile-lru can evict job records and queued messages (use noeviction)",
    ]


def test_a_full_redis_fails_the_memory_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """At or over maxmemory under noeviction every submit and status change is refused:
    the doctor says NOT READY, not just warns."""
    mb = 2**20

    class FakeRedis:
        def __init__(self, used: int, policy: str) -> None:
            self.memory = {"used_memory": used, "maxmemory": 100 * mb, "maxmemory_policy": policy}

        def info(self, section: str) -> dict[str, object]:
            return self.memory

        def close(self) -> None:
            pass

    for used, policy, expected in [
        (113 * mb, "noeviction", Status.FAIL),
        (100 * mb, "noeviction", Status.FAIL),
        (90 * mb, "noeviction", Status.WARN),
        (113 * mb, "allkeys-lru", Status.WARN),  # evicts rather than refuses: the policy's warning
    ]:
        fake = FakeRedis(used, policy)
        monkeypatch.setattr(redisconn, "connect", lambda url, timeout_s, fake=fake: fake)
        check = doctor.check_redis_memory("redis memory", "redis://127.0.0.1:6379/0")
        assert check.status is expected, (used, policy, check.detail)
    assert not doctor.memory_full(50 * mb, 0, "noeviction")


def test_local_storage_probe_is_written_read_and_removed(tmp_path: Path) -> None:
    check = doctor.check_storage(Settings(_env_file=None, storage_url=f"file://{tmp_path / 'videos'}"))
    assert check.status is Status.OK, check.detail
    assert not list(tmp_path.rglob("*.json")) and not (tmp_path / "videos" / "_doctor").exists()


def test_unwritable_local_storage_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    check = doctor.check_storage(Settings(_env_file=None, storage_url=f"file://{blocker}/videos"))
    assert check.status is Status.FAIL and "cannot write" in check.detail


def test_unset_keys_of_other_providers_are_fine() -> None:
    settings = Settings(_env_file=None, default_provider="byteplus")
    assert doctor.check_provider("veo", settings).status is Status.OK
    assert doctor.check_provider("byteplus", settings).status is Status.WARN


def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A group, as the videoqueue CLI is."""

    app.command(name="doctor")(doctor_command)
    return app


def test_the_command_explains_a_missing_worker_side(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "worker.doctor", None)  # as if the worker side were not installed
    result = CliRunner().invoke(cli(), ["doctor"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith(
        "error: `videoqueue doctor` needs the worker extra"
    )
    assert 'pip install "videoqueue[worker]"' in result.output and "worker.doctor" in result.output


def test_the_command_prints_the_report_and_sets_the_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = {"status": Status.OK}
    monkeypatch.setattr(
        doctor, "run_doctor", lambda settings: DoctorReport((Check("redis", outcome["status"], "redis 7"),))
    )
    ok = CliRunner().invoke(cli(), ["doctor", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["checks"][0]["detail"] == "redis 7"
    outcome["status"] = Status.FAIL
    failed = CliRunner().invoke(cli(), ["doctor"])
    assert failed.exit_code == 1 and failed.stdout.startswith("fail  redis  redis 7")


def test_invalid_settings_are_reported_without_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_URL", "ftp://secret-host/x")
    result = CliRunner().invoke(cli(), ["doctor"])
    assert result.exit_code == 2 and "error: invalid setting STORAGE_URL: STORAGE_URL must start with" in result.output
    assert "secret-host" not in result.output


# -- the namespace and the registered workers -----------------------------------------------------


def test_the_report_names_its_namespace() -> None:
    check = doctor.check_namespace(Settings(_env_file=None, vq_namespace="staging"))
    assert check == Check(
        "namespace",
        Status.OK,
        "'staging': keys vq@staging:*, queues vq@staging.submit, vq@staging.poll, vq@staging.store",
    )
    assert doctor.check_namespace(Settings(_env_file=None)).detail.startswith("'default': keys vq:*, queues vq.submit")


def test_registered_workers_are_listed_and_one_configured_otherwise_is_flagged() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    shell = Settings(_env_file=None, byteplus_api_key="k-1", byteplus_base_url="http://sim:8000/api/v3")
    other = shell.model_copy(update={"byteplus_base_url": "https://ark.example.com/api/v3"})
    registry.register(client, registry.entry_for("w1@a", ["vq.submit"], shell))
    registry.register(client, registry.entry_for("w2@b", ["vq.poll"], other))
    with namespace.using("elsewhere"):  # another deployment's worker is not listed
        registry.register(client, registry.entry_for("w3@c", ["vq@elsewhere.submit"], other))
    workers = registry.registered(client)
    assert [w.node for w in workers] == ["w1@a", "w2@b"]
    keys: list[str] = client.keys("*")  # type: ignore[assignment]
    assert "k-1" not in json.dumps([client.get(k) for k in keys])

    same = doctor.compare_workers(workers[:1], shell)
    assert same.status is Status.OK and same.detail.startswith(
        "1 worker(s) registered in namespace 'default': w1@a [byteplus sim:8000 "
    )
    mixed = doctor.compare_workers(workers, shell)
    mine, theirs = provider_endpoint("byteplus", shell), provider_endpoint("byteplus", other)
    assert mixed.status is Status.WARN
    assert mixed.detail.endswith(
        f"configured otherwise than this shell: w2@b byteplus {theirs.describe()}, this shell {mine.describe()}"
    )
    assert doctor.compare_workers([], shell).status is Status.WARN
