"""`videoqueue status` for a waiting job, `videoqueue queue`, `videoqueue limits` and the
waiting-room gauges of the metrics exporter, on fakeredis (which runs the room's Lua
scripts): output for people (80 columns) and scripts, and the validation of `limits set`."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console
from typer.testing import CliRunner

from producer import cli, cli_limits, cli_queue
from producer.api import VideoQueue
from producer.cli import app
from tests.unit.helpers import seedance_request
from videoqueue import keys
from videoqueue.job import JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from videoqueue.metrics import JobMetricsCollector
from videoqueue.settings import Settings
from videoqueue.stalled import describe

PROVIDER, MODEL = "byteplus", "seedance-1-5-pro-251215"
LABEL = f"{PROVIDER}|{MODEL}"


@pytest.fixture
def vq(monkeypatch: pytest.MonkeyPatch) -> VideoQueue:
    """A VideoQueue on fakeredis that every command of the CLI uses; admit messages are
    recorded in `vq.admits` instead of sent."""
    queue = VideoQueue(Settings(_env_file=None), store=JobStore(fakeredis.FakeRedis(decode_responses=True)))
    admits: list[tuple[str, str]] = []
    monkeypatch.setattr(queue, "send_admit", lambda provider, model: admits.append((provider, model)))
    queue.admits = admits  # type: ignore[attr-defined]
    for module in (cli, cli_queue, cli_limits):
        monkeypatch.setattr(module, "VideoQueue", lambda: queue)
    return queue


def waiting_jobs(vq: VideoQueue, n: int, *, priority: int = 5, tenant: str = "default") -> list[JobRecord]:
    """`n` queued jobs of MODEL put in its room, as their first submit does."""
    now = utcnow()
    jobs = [
        JobRecord(
            id=f"{tenant}-{priority}-{i:03d}-0000-0000-000000000000",
            status=JobStatus.QUEUED,
            provider=PROVIDER,
            model=MODEL,
            request=seedance_request(priority=priority, tenant=tenant),
            cost_estimate_usd=Decimal("0.1"),
            created_at=now + timedelta(microseconds=i),
            updated_at=now,
            deadline_at=now + timedelta(hours=2),
        )
        for i in range(n)
    ]
    vq.store.create_many(jobs)
    for job in jobs:
        vq.room.enter(job)
    return jobs


def fill_slots(vq: VideoQueue, n: int) -> None:
    """`n` live slots of MODEL, held by jobs at the provider."""
    lease = utcnow().timestamp() + 600
    vq.store.redis.zadd(keys.slot_key(PROVIDER, MODEL), {f"running-{i}": lease for i in range(n)})


def terminal(monkeypatch: pytest.MonkeyPatch, module: Any, width: int = 80) -> io.StringIO:
    screen = io.StringIO()
    monkeypatch.setattr(module, "out", Console(file=screen, force_terminal=True, color_system=None, width=width))
    return screen


def column(screen: io.StringIO, index: int) -> str:
    """The words of a table's column `index` (0: the first), its header left out."""
    rows = [line.split("│") for line in screen.getvalue().splitlines() if line.startswith("│")]
    return " ".join(" ".join(cells[index + 1].split()) for cells in rows if len(cells) > index + 1).strip()


def test_a_waiting_job_says_where_it_stands_in_status_and_json(vq: VideoQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    vq.room.limits.store_limits(MODEL, max_in_flight=2)
    fill_slots(vq, 2)
    # A mean render time of 60 s: two slots free up a minute, so the 3rd in line starts in ~1.5 min.
    vq.store.redis.hset(keys.STATS_RENDER_SECONDS, mapping={f"sum|{LABEL}": 600, f"le=+Inf|{LABEL}": 10})
    jobs = waiting_jobs(vq, 3)

    shown = CliRunner().invoke(app, ["status", jobs[2].id, "--json"])
    assert shown.exit_code == 0, shown.output
    (data,) = json.loads(shown.stdout)
    assert data["queue_position"] == 3 and data["waiting_reason"] == "in_flight_limit"
    assert data["estimated_start_at"].endswith("Z")

    screen = terminal(monkeypatch, cli)
    assert CliRunner().invoke(app, ["status", jobs[2].id]).exit_code == 0
    assert column(screen, 1) == "queued · #3 in line (in-flight limit), starts in ~1m"
    assert all(len(line) <= 80 for line in screen.getvalue().splitlines())

    monkeypatch.setattr(cli, "out", Console(file=io.StringIO()))  # not a terminal: piped
    piped = CliRunner().invoke(app, ["status", jobs[2].id])
    assert piped.stdout.splitlines()[1].split("\t")[1] == "queued"  # scripts keep the plain status


def test_the_status_text_of_jobs_that_do_not_wait_is_unchanged() -> None:
    now = utcnow()
    job = JobRecord(
        id="j",
        status=JobStatus.QUEUED,
        provider=PROVIDER,
        model=MODEL,
        request=seedance_request(),
        cost_estimate_usd=Decimal("0.1"),
        created_at=now,
        updated_at=now,
        deadline_at=now + timedelta(hours=2),
    )
    assert describe(job, None) == "queued"
    job.queue_position, job.estimated_start_at = 1, now - timedelta(seconds=5)
    assert describe(job, None, now) == "queued · #1 in line, starts now"
    job.waiting_reason, job.estimated_start_at = "provider_backoff", now + timedelta(minutes=125)
    assert describe(job, None, now) == "queued · #1 in line (provider back-off), starts in ~2h05m"


def test_queue_shows_waiting_jobs_by_priority_and_tenant_in_80_columns(
    vq: VideoQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq.room.limits.store_limits(MODEL, max_in_flight=1)
    fill_slots(vq, 1)
    waiting_jobs(vq, 2, priority=9, tenant="acme")
    waiting_jobs(vq, 3)

    screen = terminal(monkeypatch, cli_queue)
    assert CliRunner().invoke(app, ["queue"]).exit_code == 0
    lines = screen.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "1/1" in text and "0/120" in text
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.count("│") == 5]
    assert [MODEL, "9", "acme", "2"] in cells and [MODEL, "5", "default", "3"] in cells

    shown = CliRunner().invoke(app, ["queue", "--json"])
    (room,) = json.loads(shown.stdout)
    assert set(room) == {
        "provider",
        "model",
        "waiting",
        "waiting_by",
        "oldest_wait_s",
        "in_flight",
        "max_in_flight",
        "creates_last_minute",
        "creates_per_minute",
        "backoff_until",
    }
    assert room["waiting"] == 5 and room["in_flight"] == 1 and room["max_in_flight"] == 1
    assert room["waiting_by"] == [
        {"priority": 9, "tenant": "acme", "jobs": 2},
        {"priority": 5, "tenant": "default", "jobs": 3},
    ]
    assert room["backoff_until"] is None and room["oldest_wait_s"] >= 0

    monkeypatch.setattr(cli_queue, "out", Console(file=io.StringIO()))  # not a terminal: piped
    piped = CliRunner().invoke(app, ["queue"]).stdout.splitlines()
    assert piped[0].split("\t") == list(cli_queue.PIPED_COLUMNS)
    assert piped[1].split("\t")[:3] == [PROVIDER, MODEL, "5"] and piped[1].endswith("9/acme=2 5/default=3")


def test_queue_says_in_one_line_when_nothing_waits(vq: VideoQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = terminal(monkeypatch, cli_queue)
    assert CliRunner().invoke(app, ["queue"]).exit_code == 0
    assert screen.getvalue() == "nothing waiting, nothing in flight\n"
    assert json.loads(CliRunner().invoke(app, ["queue", "--json"]).stdout) == []

    fill_slots(vq, 2)
    screen = terminal(monkeypatch, cli_queue)
    CliRunner().invoke(app, ["queue"])
    assert "2/100" in screen.getvalue() and screen.getvalue().endswith("nothing waiting\n")


def test_limits_set_stores_fleet_wide_limits_and_sends_the_admit_message(vq: VideoQueue) -> None:
    result = CliRunner().invoke(app, ["limits", "set", MODEL, "--max-in-flight", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{MODEL}: in flight 3 (redis, fleet-wide), creates per minute 120 (this shell's settings)\n"
    )
    assert vq.room.limits.limits_for(MODEL).max_in_flight == 3
    assert vq.admits == [(PROVIDER, MODEL)]  # type: ignore[attr-defined]

    CliRunner().invoke(app, ["limits", "set", MODEL, "--creates-per-minute", "7"])
    shown = json.loads(CliRunner().invoke(app, ["limits", "show", "--json"]).stdout)
    row = next(r for r in shown if r["model"] == MODEL)
    assert row == {
        "model": MODEL,
        "provider": PROVIDER,
        "max_in_flight": 3,
        "max_in_flight_source": "redis",
        "creates_per_minute": 7,
        "creates_per_minute_source": "redis",
    }
    others = [r for r in shown if r["model"] != MODEL]
    assert others and all(r["max_in_flight"] == 100 and r["max_in_flight_source"] == "shell-settings" for r in others)

    cleared = CliRunner().invoke(app, ["limits", "clear", MODEL])
    assert cleared.exit_code == 0 and "in flight 100 (this shell's settings)" in cleared.stdout
    assert vq.room.limits.stored() == {}
    assert len(vq.admits) == 3  # type: ignore[attr-defined]


def test_a_raised_limit_admits_waiting_jobs_through_the_admit_message(vq: VideoQueue) -> None:
    vq.room.limits.store_limits(MODEL, max_in_flight=1)
    fill_slots(vq, 1)
    waiting_jobs(vq, 3)
    admitted: list[str] = []
    vq.send_admit = lambda provider, model: admitted.extend(vq.room.admit(provider, model).admitted)  # type: ignore[method-assign]
    assert CliRunner().invoke(app, ["limits", "set", MODEL, "--max-in-flight", "3"]).exit_code == 0
    assert len(admitted) == 2
    assert vq.room.snapshot(PROVIDER, MODEL).total_waiting == 1


def test_limits_show_for_people_fits_80_columns_and_notes_per_worker_settings(
    vq: VideoQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    vq.room.limits.store_limits(MODEL, max_in_flight=3)
    screen = terminal(monkeypatch, cli_limits)
    assert CliRunner().invoke(app, ["limits", "show"]).exit_code == 0
    lines = screen.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert column(screen, 3).startswith("in flight: redis, fleet-wide; creates/min: this shell's settings this")
    assert " ".join(screen.getvalue().split()).endswith(cli_limits.SETTINGS_NOTE)

    monkeypatch.setattr(cli_limits, "out", Console(file=io.StringIO()))  # not a terminal: piped
    piped = CliRunner().invoke(app, ["limits", "show"])
    assert f"{MODEL}\t3\tredis\t120\tshell-settings" in piped.stdout.splitlines()
    assert "note: a limit from settings" in piped.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["no-such-model", "--max-in-flight", "2"], "error: unknown model 'no-such-model'; one of "),
        ([MODEL, "--max-in-flight", "0"], "error: --max-in-flight must be a whole number from 1 to 1,000,000, not 0"),
        ([MODEL, "--creates-per-minute", "-3"], "error: --creates-per-minute must be a whole number from 1 to"),
        ([MODEL, "--max-in-flight", "1000001"], "error: --max-in-flight must be a whole number from 1 to 1,000,000"),
        ([MODEL], "error: nothing to set: give --max-in-flight N, --creates-per-minute M or both"),
    ],
)
def test_limits_set_refuses_in_one_line(vq: VideoQueue, args: list[str], expected: str) -> None:
    result = CliRunner().invoke(app, ["limits", "set", *args])
    assert result.exit_code == 2
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1
    if "unknown model" in expected:
        assert MODEL in result.stderr and "veo-3.1-fast-generate-001" in result.stderr
    assert vq.room.limits.stored() == {} and vq.admits == []  # type: ignore[attr-defined]


def test_a_whole_number_is_required(vq: VideoQueue) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["limits", "set", MODEL, "--max-in-flight", "2.5"])
    assert exit_info.value.code == 2


def test_limits_set_says_when_the_admit_message_could_not_be_sent(vq: VideoQueue) -> None:
    def refuse(provider: str, model: str) -> None:
        raise ConnectionError("broker down")

    vq.send_admit = refuse  # type: ignore[method-assign]
    result = CliRunner().invoke(app, ["limits", "set", MODEL, "--max-in-flight", "4"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: the limits are stored, but the admit message was not sent")
    assert vq.room.limits.limits_for(MODEL).max_in_flight == 4


def test_the_exporter_reports_each_models_room_and_slots(vq: VideoQueue) -> None:
    vq.room.limits.store_limits(MODEL, max_in_flight=4)
    fill_slots(vq, 3)
    waiting_jobs(vq, 2, priority=9, tenant="acme")
    waiting_jobs(vq, 1)
    registry = CollectorRegistry()
    registry.register(JobMetricsCollector(vq.store.redis, vq.room, [("veo", "veo-3.1-fast-generate-001")]))

    def m(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    seedance = {"provider": PROVIDER, "model": MODEL}
    veo = {"provider": "veo", "model": "veo-3.1-fast-generate-001"}
    assert m("videoqueue_waiting_jobs", **seedance) == 3
    assert m("videoqueue_waiting_jobs_by_priority", priority="9", **seedance) == 2
    assert m("videoqueue_waiting_jobs_by_priority", priority="5", **seedance) == 1
    assert m("videoqueue_waiting_jobs_by_priority", priority="0", **seedance) == 0
    assert (m("videoqueue_oldest_wait_seconds", **seedance) or 0) >= 0
    assert m("videoqueue_slots_in_use", **seedance) == 3
    assert m("videoqueue_slot_limit", **seedance) == 4
    assert m("videoqueue_slot_utilisation", **seedance) == 0.75
    # A model of the catalog with nothing waiting and no slot taken is reported at 0.
    assert m("videoqueue_waiting_jobs", **veo) == 0 and m("videoqueue_slot_utilisation", **veo) == 0
    # Tenants are user-defined: no label carries them.
    assert all("tenant" not in s.labels for metric in registry.collect() for s in metric.samples)


def test_limits_clear_removes_the_limits_of_a_model_the_catalog_dropped(vq: VideoQueue) -> None:
    vq.room.limits.store_limits("retired-model-1", max_in_flight=2)
    result = CliRunner().invoke(app, ["limits", "clear", "retired-model-1"])
    assert result.exit_code == 0 and "not a model of the catalog" in result.stdout
    assert vq.room.limits.stored() == {} and vq.admits == []  # type: ignore[attr-defined]
    unknown = CliRunner().invoke(app, ["limits", "clear", "retired-model-1"])
    assert unknown.exit_code == 2 and unknown.stderr.startswith("error: unknown model 'retired-model-1'")
