"""Fleet-wide budgets and the ledger rebuild, as a user runs them: the `videoqueue` command
against real Redis, real workers, the simulator and storage on disk."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from producer import JobStatus, VideoRequest
from tests.integration.conftest import Stack
from tests.integration.test_cli import CLI, run
from videoqueue import keys, ledger_days, namespace
from videoqueue.budget import usage
from videoqueue.job import ErrorCode, JobRecord
from videoqueue.ledger import Ledger
from worker.manifest import build_manifest

pytestmark = pytest.mark.integration

EST = Decimal("0.249163")  # Seedance 1.5 Pro, 720p 16:9, 5 s, audio


def run_in(stack: Stack, shell: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The command run from a shell whose environment differs from the workers'."""
    return subprocess.run(
        [CLI, *args], env=stack.env(**shell), capture_output=True, text=True, timeout=120, check=False
    )


def _day_key() -> str:
    return keys.budget_counter_key(f"day:{datetime.now(UTC).date().isoformat()}")


def test_money_spent_with_no_cap_counts_once_a_cap_is_set_in_redis(local_stack: Stack) -> None:
    # Seen: $2.41 spent today with no cap; then a $1 cap said "already reserved or spent
    # $0.0000", and a $2 cap accepted $1.47 of new jobs. Here: $0.50 spent, no cap anywhere.
    local_stack.start_worker()
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt="paid 1"), VideoRequest(prompt="paid 2")])
    assert {j.status for j in vq.wait([j.id for j in jobs], timeout=60)} == {JobStatus.SUCCEEDED}
    assert usage(local_stack.redis, _day_key()) == (Decimal(0), EST * 2)

    # The cap is set in Redis; the shell that submits has no BUDGET_* variable at all.
    assert "BUDGET_DAILY_USD" not in local_stack.env()
    set_cap = run(local_stack, "budget", "set", "--daily", "0.60")
    assert set_cap.returncode == 0, set_cap.stderr
    assert "day: $0.60 (redis, fleet-wide)" in set_cap.stdout
    refused = run(local_stack, "submit", "one too many")
    assert refused.returncode == 2
    error = " ".join(refused.stderr.split())  # however the terminal width wraps it
    assert "cap $0.60, spent $0.4983, reserved $0.0000" in error
    assert "requested $0.2492" in error and "nothing was enqueued" in error
    assert sum(local_stack.queue().store.count_by_status().values()) == 2

    shown = json.loads(run(local_stack, "budget", "show", "--json").stdout)
    day = next(b for b in shown if b["kind"] == "day")
    assert (day["cap_usd"], day["cap_source"], day["spent_usd"], day["reserved_usd"]) == (
        0.6,
        "redis",
        float(EST * 2),
        0.0,
    )
    assert day["left_usd"] == pytest.approx(float(Decimal("0.60") - EST * 2))
    month = next(b for b in shown if b["kind"] == "month")
    assert (month["cap_usd"], month["spent_usd"], month["left_usd"]) == (None, float(EST * 2), None)

    # A setting is only a default: the cap in Redis wins over a looser one...
    local_stack.extra_env["BUDGET_DAILY_USD"] = "100"
    assert run(local_stack, "submit", "still too many").returncode == 2
    # ...and removing the cap from Redis brings each shell's own setting back.
    assert run(local_stack, "budget", "set", "--clear-daily").returncode == 0
    assert run(local_stack, "submit", "fits under the setting").returncode == 0


def test_a_cap_lowered_after_enqueue_fails_the_jobs_that_no_longer_fit_before_any_create(
    local_stack: Stack,
) -> None:
    vq = local_stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"queued {i}") for i in range(3)])  # $0.75 reserved
    assert run(local_stack, "budget", "set", "--daily", "0.50").returncode == 0
    local_stack.start_worker(concurrency=1)  # one create at a time: which jobs fit is exact
    done = {j.id: j for j in vq.wait([j.id for j in jobs], timeout=60)}

    failed = [j for j in done.values() if j.status is JobStatus.FAILED]
    assert len(failed) == 1 and failed[0].error is not None
    assert failed[0].error.code is ErrorCode.BUDGET_EXCEEDED
    assert "cap $0.50" in failed[0].error.message and "not created at the provider" in failed[0].error.message
    assert failed[0].provider_task_id is None and failed[0].attempts == 0
    assert sum(j.status is JobStatus.SUCCEEDED for j in done.values()) == 2
    assert local_stack.simulator.stats()["creates_total"] == 2
    # The failed job's reservation was released; the others settled to what they cost.
    assert usage(local_stack.redis, _day_key()) == (Decimal(0), EST * 2)


def _job_ids(stack: Stack, count: int, storage: Path) -> list[str]:
    stack.start_worker(concurrency=3)
    vq = stack.queue()
    jobs = vq.submit_many([VideoRequest(prompt=f"ledger {i}", tags=("rebuild",)) for i in range(count)])
    assert {j.status for j in vq.wait([j.id for j in jobs], timeout=90)} == {JobStatus.SUCCEEDED}
    assert len(list(storage.glob("*.json"))) == count
    return [j.id for j in jobs]


def test_costs_rebuild_merges_and_never_drops_what_the_storage_it_reads_lacks(
    local_stack: Stack, tmp_path: Path
) -> None:
    # Seen: 33 jobs / $9.29 became 24 / $7.08: the rebuild replaced the ledger with the
    # manifests of the storage its shell named, which held only some of them.
    workers_storage = tmp_path / "videos"
    ids = _job_ids(local_stack, 5, workers_storage)
    ledger = Ledger(local_stack.redis)
    before = sorted(ledger.entries(), key=lambda e: e.job_id)
    assert len(before) == 5
    partial = tmp_path / "elsewhere"
    partial.mkdir()
    for job_id in ids[:3]:
        shutil.copy(workers_storage / f"{job_id}.json", partial / f"{job_id}.json")
    # Redis lost one that storage has: its record (which holds its ledger entry), with the
    # day totals written in the same transaction (left in them, the merge would count it
    # twice there, and `budget rebuild` reads them).
    lost = local_stack.redis.pipeline(transaction=True)
    lost.delete(keys.job_key(ids[0]))
    ledger_days.add(lost, next(e for e in before if e.job_id == ids[0]), -1)
    lost.execute()
    shell = {"STORAGE_URL": f"file://{partial}"}

    dry = run_in(local_stack, shell, "costs", "rebuild", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"read local folder {partial}, namespace {namespace.current()}: 3 manifests" in dry.stdout
    assert "added 1, changed 0, unchanged 2, missing from storage 2 (kept)" in dry.stdout
    assert f"added     {ids[0]}" in dry.stdout and f"missing   {ids[3]}" in dry.stdout
    assert "dry run, nothing written: the ledger would go from 4 jobs" in dry.stdout
    assert len(ledger.entries()) == 4

    merged = run_in(local_stack, shell, "costs", "rebuild")
    assert merged.returncode == 0, merged.stderr
    total = sum((e.actual_usd for e in before), Decimal(0))
    assert f"-> 5 jobs / ${total:.2f}" in merged.stdout
    assert sorted(ledger.entries(), key=lambda e: e.job_id) == before

    dry_prune = run_in(local_stack, shell, "costs", "rebuild", "--prune", "--dry-run")
    assert "missing from storage 2 (pruned)" in dry_prune.stdout and "-> 3 jobs" in dry_prune.stdout
    assert len(ledger.entries()) == 5
    pruned = run_in(local_stack, shell, "costs", "rebuild", "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert sorted(e.job_id for e in ledger.entries()) == sorted(ids[:3])

    # Budgets recount from the ledger: what was pruned no longer counts as spent.
    assert usage(local_stack.redis, keys.budget_counter_key("tag:rebuild"))[1] == total
    recount = run(local_stack, "budget", "rebuild")
    assert recount.returncode == 0, recount.stderr
    kept = sum((e.actual_usd for e in ledger.entries()), Decimal(0))
    assert f"tag:rebuild: spent ${total:.4f} -> ${kept:.4f}" in recount.stdout
    assert usage(local_stack.redis, keys.budget_counter_key("tag:rebuild")) == (Decimal(0), kept)


def _manifest(job_id: str, writer: str | None, budget_keys: list[str], cost: str) -> dict[str, object]:
    """The manifest a worker of namespace `writer` writes; None: one written before
    manifests named their namespace, known only by its job's budget counter keys."""
    now = datetime.now(UTC)
    record = JobRecord(
        id=job_id,
        status=JobStatus.SUCCEEDED,
        provider="byteplus",
        model="seedance-1-5-pro-251215",
        request={
            "prompt": "shared storage",
            "provider": "byteplus",
            "model": "seedance-1-5-pro-251215",
            "duration": 5,
            "resolution": "720p",
            "ratio": "16:9",
            "audio": False,
            "service_tier": "default",
            "tags": ["shared"],
        },
        cost_estimate_usd=Decimal(cost),
        cost_usd=Decimal(cost),
        budget_keys=budget_keys,
        created_at=now,
        updated_at=now,
        finished_at=now,
        deadline_at=now + timedelta(hours=1),
    )
    with namespace.using(writer or namespace.DEFAULT):
        document = build_manifest(record, 1000)
    if writer is None:
        document.pop("namespace", None)
    return document


def test_costs_rebuild_takes_only_the_manifests_of_its_own_namespace(local_stack: Stack, tmp_path: Path) -> None:
    # Seen: in namespace dev, with the storage every deployment shares by default (./videos),
    # the rebuild added 11 jobs of the demo, default and bq namespaces to dev's ledger
    # (7 jobs / $2.49 -> 18 / $4.99), and `budget rebuild` then doubled dev's spent.
    own = namespace.current()
    day = datetime.now(UTC).date().isoformat()
    shared = tmp_path / "videos"
    shared.mkdir()
    # Manifests written before the `namespace` field name it only by their budget keys, as
    # those versions spelled them: stored data, so literal here.
    manifests = {
        "own-new": _manifest("own-new", own, [], "0.25"),
        "own-old": _manifest("own-old", None, [f"vq@{own}:budget:day:{day}"], "0.50"),
        "demo-new": _manifest("demo-new", "demo", [], "1.00"),
        "bq-old": _manifest("bq-old", None, [f"vq@bq:budget:day:{day}"], "1.00"),
        "default-old": _manifest("default-old", None, [f"vq:budget:day:{day}"], "1.00"),
        "unknown-old": _manifest("unknown-old", None, [], "1.00"),
    }
    for job_id, document in manifests.items():
        (shared / f"{job_id}.json").write_text(json.dumps(document))
    shell = {"STORAGE_URL": f"file://{shared}"}
    skipped = "skipped 4 manifests of other deployments: bq 1, default 2, demo 1"

    dry = run_in(local_stack, shell, "costs", "rebuild", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"read local folder {shared}, namespace {own} ({skipped}): 2 manifests" in dry.stdout
    assert "added 2, changed 0" in dry.stdout and "demo-new" not in dry.stdout
    assert Ledger(local_stack.redis).entries() == []

    merged = run_in(local_stack, shell, "costs", "rebuild")
    assert merged.returncode == 0, merged.stderr
    assert skipped in merged.stdout and "-> 2 jobs / $0.75" in merged.stdout
    assert sorted(e.job_id for e in Ledger(local_stack.redis).entries()) == ["own-new", "own-old"]
    recount = run(local_stack, "budget", "rebuild")
    assert recount.returncode == 0, recount.stderr
    assert usage(local_stack.redis, keys.budget_counter_key("tag:shared")) == (Decimal(0), Decimal("0.75"))
