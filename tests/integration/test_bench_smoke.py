"""The benchmark entry point runs end to end (small sizes) and writes its results.

Nothing here times anything: the numbers of a quick run mean nothing. It checks that the
harness starts and stops its own Redis servers, simulator and real celery workers, that
every job of the run succeeded and that the JSON document holds the measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import pytest

from videoqueue.storedform import RECORD_VERSION

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_quick_overhead_run_writes_its_measurements(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.process_iter()}
    document = _run_quick("overhead", tmp_path)
    assert document["machine"]["cpus"] >= 1
    jobs = document["jobs"]
    assert jobs["succeeded"] == jobs["jobs"] == 100
    # submit, poll (the provider finished at once), store: three task messages per job
    assert jobs["tasks_per_job"] == pytest.approx(3.0, abs=0.2)
    assert jobs["worker_cpu_ms_per_job"] > 0
    assert jobs["store_cmds_per_job"] > 0 and jobs["broker_cmds_per_job"] > 0
    assert document["noop"]["tasks"] == int(100 * jobs["tasks_per_job"])
    assert document["ratio_to_engine_limit"] > 0
    # The harness leaves no redis-server, simulator or worker behind.
    words = ("redis-server", "-m simulator", "celery")
    leftovers = [line for pid, line in _command_lines() if pid not in before and any(w in line for w in words)]
    assert leftovers == []


def _command_lines() -> list[tuple[int, str]]:
    lines = []
    for proc in psutil.process_iter():
        try:
            lines.append((proc.pid, " ".join(proc.cmdline())))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return lines


def _run_quick(scenario: str, results: Path) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench", scenario, "--quick", "--results", str(results)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document: dict[str, Any] = json.loads((results / f"{scenario}.json").read_text())
    assert document["scenario"] == scenario and document["quick"] is True
    return document


@pytest.mark.timeout(300)
def test_quick_pools_run_every_pool_to_the_end(tmp_path: Path) -> None:
    rows = _run_quick("pools", tmp_path)["rows"]
    assert {row["pool"].split(" x ")[1].split("(")[0] for row in rows} == {"prefork", "threads", "gevent"}
    for row in rows:
        assert row["succeeded"] == row["jobs"], row
        assert row["worker_rss_mib"] > 0 and row["worker_cpu_ms_per_job"] > 0


@pytest.mark.timeout(300)
def test_quick_transfer_measures_ours_and_the_references(tmp_path: Path) -> None:
    rows = {row["case"]: row for row in _run_quick("transfer", tmp_path)["rows"]}
    ours = [rows["videoqueue store -> S3"], rows["videoqueue store -> local folder"]]
    reference = rows["reference: boto3 upload_fileobj -> S3"]
    for row in [*ours, reference]:
        assert row["bytes"] == 32 * 2**20, row
        assert row["mib_per_s"] > 0 and row["peak_rss_growth_mib"] >= 0
    assert all(row["ratio_to_reference"] > 0 for row in ours)


@pytest.mark.timeout(300)
def test_quick_detection_measures_and_models_the_schedules(tmp_path: Path) -> None:
    rows = _run_quick("detection", tmp_path)["rows"]
    measured = [row for row in rows if row.get("method") == "measured"]
    modelled = [row for row in rows if row.get("method") == "model"]
    assert measured and modelled
    for row in measured:
        assert row["jobs"] > 0, row
        assert row["detect_p50_s"] <= row["detect_p95_s"]
        assert row["polls_per_job"] >= 1


@pytest.mark.timeout(300)
def test_quick_cold_fleet_sees_every_kind_end(tmp_path: Path) -> None:
    rows = {row["kind"]: row for row in _run_quick("cold", tmp_path)["rows"]}
    assert rows["fails at 1 s"]["statuses"] == "failed"
    assert rows["renders 3 s"]["statuses"] == "succeeded"
    assert rows["all"]["expired_though_ended_before_deadline"] == 0
    for row in rows.values():
        assert row["jobs"] > 0 and row["status_calls_per_job"] >= 1, row


@pytest.mark.timeout(300)
def test_quick_overload_measures_at_the_provider_and_on_the_broker(tmp_path: Path) -> None:
    document = _run_quick("overload", tmp_path)
    parts = document["parts"]
    a = parts["A"]
    assert a["created"] == a["succeeded"] == document["plan"]["jobs"]
    assert 0 < a["utilisation"] <= 1 and a["peak_in_flight"] <= document["plan"]["slots"]
    assert parts["B"]["jobs"] == a["created"] and parts["B"]["inversions"] >= 0
    # every task message counted once on the broker, per queue, the same as INFO commandstats
    assert a["cost"]["broker_msgs_tapped"] == a["cost"]["broker_pushes_commandstats"] > 0
    assert set(a["cost"]["msgs_by_queue_per_job"]) >= {"submit", "poll", "store"}
    assert [run["backlog"] for run in parts["C"]] == document["plan"]["c_backlogs"]
    assert all(run["complete"] and run["store_cmds_per_job"] > 0 for run in parts["C"])
    for run in parts["F"]:
        assert 0 < run["max_creates_in_60s"] <= run["rpm_limit"]
    # D and E run once the request has issue 15's fields; until then they are skipped, saying why
    for part in "DE":
        assert part in parts or "issue 15" in document["skipped"][part]


@pytest.mark.timeout(300)
def test_quick_memory_run_counts_every_key_of_a_job(tmp_path: Path) -> None:
    document = _run_quick("memory", tmp_path)
    assert document["counts"]["succeeded"] == document["jobs"] == 100
    queued = {row["kind"]: row for row in document["queued"]["kinds"]}
    finished = {row["kind"]: row for row in document["finished"]["kinds"]}
    # The job's own keys, by kind, with the placeholders for its ids.
    assert {"vq@bench:job:{job}", "vq@bench:client:{client}", "vq@bench:jobs:status:queued"} <= set(queued)
    assert "vq@bench:jobs:all" not in queued  # no index of all jobs: the status indexes are
    assert "vq@bench:task:byteplus:{task}" in set(finished)
    assert "vq@bench:ledger:entry:{job}" not in finished  # the record holds the ledger entry
    assert queued["vq@bench:job:{job}"]["keys"] == 100 and queued["vq@bench:jobs:status:queued"]["members"] == 100
    for phase in (document["queued"], document["finished"]):
        assert phase["store_bytes_per_job"] > phase["store_bytes_per_job_sum_of_keys"] / 2 > 0
    assert document["broker_bytes_per_queued_message"] > 0
    # The event stream (capped, not per job) is measured apart: one entry a job queued, four
    # more by its end; then the task claims and the create window, dropped as their TTLs will.
    queued_events, finished_events = document["queued"]["events_stream"], document["finished"]["events_stream"]
    assert (queued_events["entries"], finished_events["entries"]) == (100, 400)
    # (Their bytes, what deleting the stream freed, move by about 16 KB from run to run: a
    # figure at 2,000 jobs, noise at 100.)
    assert finished_events["bytes"] > 0
    finished_phase = document["finished"]
    assert finished_phase["store_bytes_per_job_with_stream"] > finished_phase["store_bytes_per_job"]
    assert finished_phase["short_lived"]["*:task:*"] == 100
    assert 0 < finished_phase["store_bytes_per_job_for_its_retention"] < finished_phase["store_bytes_per_job"]
    # Both requests measured in the one run: the typical one on top, the overhead bench's beside.
    assert set(document["by_request"]) == {"typical", "overhead"}
    assert document["request"]["name"] == "typical"
    overhead = document["by_request"]["overhead"]
    assert overhead["request"] == {"name": "overhead", "prompt_chars": 10, "tags": [], "client_job_id": None}
    assert overhead["counts"]["succeeded"] == 100
    assert "vq@bench:client:{client}" not in {row["kind"] for row in overhead["queued"]["kinds"]}
    # What Redis holds is the compact stored form, its times in milliseconds.
    assert json.loads(document["finished"]["sample"]["record"])["v"] == RECORD_VERSION == 4
    assert "ledger_row" not in document["finished"]["sample"]  # no per-job ledger row


@pytest.mark.timeout(300)
def test_quick_day_samples_the_run_and_checks_every_job_and_the_ledger(tmp_path: Path) -> None:
    document = _run_quick("day", tmp_path)
    plan, checks = document["plan"], document["checks"]
    assert checks["jobs"] == plan["jobs"] == 200
    # counted by the fleet's counters and the ledger, not by records (they may have expired)
    assert checks["succeeded_by_counters"] == checks["succeeded_by_ledger"] == 200
    assert checks["every_job_succeeded"] is True
    # every job cost money, so every manifest has a ledger entry, and the totals agree
    assert checks["manifests"] == checks["manifests_with_ledger_entry"] == checks["ledger_jobs"] == 200
    assert Decimal(checks["difference_usd"]) == 0
    assert checks["ledger_equals_manifests"] is True and float(checks["ledger_usd"]) > 0
    samples = document["samples"]
    assert len(samples) >= 10 and samples[-1]["succeeded"] == 200
    assert all(s["store_used_memory"] > 0 and s["broker_used_memory"] > 0 for s in samples)
    assert any(s["store_cmds_per_s"] > 0 and s["worker_cpu_cores"] > 0 for s in samples)
    assert document["memory"]["slope_first_bytes_per_s"] is not None
    assert document["memory"]["slope_last_bytes_per_s"] is not None
    assert document["census"] and all(row["keys"] > 0 for row in document["census"])


@pytest.mark.timeout(300)
def test_quick_held_measures_what_a_worker_holds_and_takes_a_fresh_job(tmp_path: Path) -> None:
    document = _run_quick("held", tmp_path)
    rows = {row["case"].split(" ")[0]: row for row in document["rows"]}
    after = rows["after"]
    assert after["running"] == after["renders enqueued"] == 300
    # Quick: HELD_MESSAGES_MAX=20 with 300 renders in flight: the rest are parked.
    assert after["parked"] > 0
    assert 0 <= after["held messages (unacked)"] < 300 and after["worker RSS MiB"] > 0
    assert isinstance(after["fresh job taken in s"], float)
    # The 'before' case runs main's code when git can export it; else the note says so.
    assert "before" in rows or any(note.startswith("before: skipped") for note in document["notes"])


@pytest.mark.timeout(300)
def test_quick_webhooks_delivers_every_job_and_verifies_every_request(tmp_path: Path) -> None:
    [row] = _run_quick("webhooks", tmp_path)["rows"]
    assert row["delivered"] == row["jobs"] == row["records_delivered"] == 50
    assert row["unverified"] == row["unknown_ids"] == 0
    # The only ids answered 2xx twice are the replays the bench makes on purpose.
    assert row["ids_2xx_more_than_once"] == row["replayed"]


def test_quick_waiting_measures_both_waits_against_the_mover_alone(tmp_path: Path) -> None:
    document = _run_quick("waiting", tmp_path)
    rows = {row["case"].split(":")[0]: row for row in document["rows"]}
    assert set(rows) == {
        "mover alone",
        "before",
        "before, records only",
        "after",
        "after, with on_update (as `videoqueue wait`)",
    }
    assert document["moves"] > 0 and document["stream_bytes_per_entry"] > 0
    for case in ("before", "after"):
        assert rows[case]["jobs waited on"] == 300
        assert rows[case]["wait's cmds/s"] is not None and rows[case]["MGET/s"] > 0
    assert rows["after"]["XREAD/s"] > 0 and rows["before"]["XREAD/s"] == 0
    assert set(document["ratio_before_to_after"]) == {"wait's cmds/s", "wait's keys read/s", "wait's KiB sent/s"}
