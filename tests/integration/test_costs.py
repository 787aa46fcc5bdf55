"""The ledger and budgets against real Redis, real workers and the simulator."""

from __future__ import annotations

import csv
import io
import json
import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from producer import BudgetExceededError, JobStatus, VideoRequest
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_status
from tests.integration.test_cli import run
from videoqueue import keys, namespace
from videoqueue.budget import usage
from videoqueue.ledger import Ledger, LedgerEntry

pytestmark = pytest.mark.integration

EST = Decimal("0.249163")  # Seedance 1.5 Pro, 720p 16:9, 5 s, audio


def test_twenty_concurrent_producers_never_reserve_more_than_the_cap(local_stack: Stack) -> None:
    cap = Decimal("5.00")  # room for 20 jobs of $0.249163; 60 are attempted
    accepted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(20)

    def producer(n: int) -> None:
        vq = local_stack.queue(budget_daily_usd=cap)
        start.wait()
        for i in range(3):
            try:
                job = vq.submit(VideoRequest(prompt=f"producer {n} job {i}"))
            except BudgetExceededError:
                with lock:
                    refused.append(f"{n}/{i}")
            else:
                with lock:
                    accepted.append(job.id)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    reserved, spent = usage(local_stack.redis, keys.budget_counter_key(f"day:{datetime.now(UTC).date().isoformat()}"))
    print(f"accepted={len(accepted)} refused={len(refused)} reserved=${reserved}")
    assert reserved <= cap and spent == 0
    assert len(accepted) == 20 and len(refused) == 40
    assert reserved == EST * 20
    assert local_stack.redis.llen(namespace.queue("submit")) == 20  # refused submits sent nothing
    assert sum(local_stack.queue().store.count_by_status().values()) == 20


def test_reservations_are_released_or_settled_to_what_the_provider_charged(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue(
        budget_monthly_usd=Decimal("50"), budget_tags_usd={"batch-7": Decimal("10")}, job_deadline_s=6
    )
    ok, failed, held = vq.submit_many(
        [
            VideoRequest(prompt="paid", tags=("batch-7",)),
            VideoRequest(prompt="refused by the provider [sim:fail]", tags=("batch-7",)),
            VideoRequest(prompt="never starts [sim:hold]", tags=("batch-7",)),
        ]
    )
    cancelled = vq.submit(VideoRequest(prompt="cancelled [sim:hold]", tags=("batch-7",)))
    wait_status(vq, cancelled.id, {"running"})
    vq.cancel(cancelled.id)
    done = {j.id: j for j in vq.wait([ok.id, failed.id, held.id, cancelled.id], timeout=60)}

    assert [done[j.id].status for j in (ok, failed, held, cancelled)] == [
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.EXPIRED,
        JobStatus.CANCELLED,
    ]
    charged = done[ok.id].cost_usd
    assert charged == EST
    month = keys.budget_counter_key(f"month:{datetime.now(UTC).date().isoformat()[:7]}")
    for key in (month, keys.budget_counter_key("tag:batch-7")):
        assert usage(local_stack.redis, key) == (Decimal(0), charged)
    entries = Ledger(local_stack.redis).entries()
    assert [(e.job_id, e.actual_usd) for e in entries] == [(ok.id, charged)]


def test_a_submit_over_budget_is_refused_with_a_clear_error_from_the_cli(local_stack: Stack) -> None:
    local_stack.extra_env["BUDGET_DAILY_USD"] = "0.30"
    first = run(local_stack, "submit", "fits")
    assert first.returncode == 0, first.stderr
    state = (local_stack.keys(f"{keys.PREFIX}*"), local_stack.redis.llen(namespace.queue("submit")))
    second = run(local_stack, "submit", "does not fit")
    assert second.returncode == 2
    error = " ".join(second.stderr.split())  # however the terminal width wraps it
    assert "budget day:" in error and "would be exceeded" in error
    assert "cap $0.30, spent $0.0000, reserved $0.2492, requested $0.2492" in error
    assert "nothing was enqueued" in error
    assert (local_stack.keys(f"{keys.PREFIX}*"), local_stack.redis.llen(namespace.queue("submit"))) == state


def _seed_ledger(stack: Stack) -> None:
    def entry(
        job_id: str, day: str, model: str, provider: str, tags: tuple[str, ...], est: str, act: str
    ) -> LedgerEntry:
        return LedgerEntry(
            job_id=job_id,
            provider=provider,
            model=model,
            status="succeeded",
            tags=tags,
            settled_at=datetime.fromisoformat(f"{day}T08:30:00+00:00"),
            estimate_usd=Decimal(est),
            actual_usd=Decimal(act),
            billed_units=1,
            unit="token",
        )

    Ledger(stack.redis).merge(
        [
            entry("j1", "2026-11-01", "seedance-1-5-pro-251215", "byteplus", ("ads",), "0.249163", "0.249163"),
            entry("j2", "2026-11-01", "veo-3.1-fast-generate-001", "veo", ("ads",), "0.40", "0.40"),
            entry("j3", "2026-11-02", "seedance-1-5-pro-251215", "byteplus", (), "0.249163", "0.20"),
        ]
    )


def test_costs_report_as_table_json_and_csv(local_stack: Stack) -> None:
    _seed_ledger(local_stack)
    as_json = json.loads(run(local_stack, "costs", "--by", "model", "--json").stdout)
    assert as_json == [
        {
            "group": "seedance-1-5-pro-251215",
            "jobs": 2,
            "estimate_usd": 0.498326,
            "actual_usd": 0.449163,
            "difference_usd": -0.049163,
        },
        {
            "group": "veo-3.1-fast-generate-001",
            "jobs": 1,
            "estimate_usd": 0.4,
            "actual_usd": 0.4,
            "difference_usd": 0.0,
        },
        {"group": "total", "jobs": 3, "estimate_usd": 0.898326, "actual_usd": 0.849163, "difference_usd": -0.049163},
    ]
    as_csv = list(csv.reader(io.StringIO(run(local_stack, "costs", "--by", "day", "--csv").stdout)))
    assert as_csv == [
        ["day", "jobs", "estimate_usd", "actual_usd", "difference_usd"],
        ["2026-11-01", "2", "0.649163", "0.649163", "0.000000"],
        ["2026-11-02", "1", "0.249163", "0.200000", "-0.049163"],
        ["total", "3", "0.898326", "0.849163", "-0.049163"],
    ]
    since = run(local_stack, "costs", "--by", "tag", "--since", "2026-11-02", "--until", "2026-11-30", "--csv").stdout
    assert list(csv.reader(io.StringIO(since)))[1:] == [
        ["(untagged)", "1", "0.249163", "0.200000", "-0.049163"],
        ["total", "1", "0.249163", "0.200000", "-0.049163"],
    ]
    table = run(local_stack, "costs", "--by", "provider").stdout
    assert "byteplus" in table and "veo" in table and "$0.8492" in table and "$-0.0492" in table
    bad = run(local_stack, "costs", "--by", "colour")
    assert bad.returncode == 2 and "--by must be one of day, month, provider, model, tag, status" in bad.stderr


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_costs_rebuild_from_storage_reproduces_the_ledger_exactly(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "local":
        stack: Stack = request.getfixturevalue("local_stack")
    else:
        stack, _, _ = request.getfixturevalue("s3_stack")
    stack.start_worker(concurrency=3)
    vq = stack.queue(job_deadline_s=20)
    jobs = vq.submit_many(
        [VideoRequest(prompt=f"rebuild {i}", tags=("rebuild",), duration=4 + i) for i in range(4)]
        + [VideoRequest(prompt="veo rebuild", provider="veo"), VideoRequest(prompt="nothing charged [sim:fail]")]
    )
    charged_but_cancelled = vq.submit(VideoRequest(prompt="cancel too late [sim:latency=2]"))
    wait_status(vq, charged_but_cancelled.id, {"running"})
    vq.cancel(charged_but_cancelled.id)
    vq.wait([j.id for j in [*jobs, charged_but_cancelled]], timeout=120)
    ledger = Ledger(stack.redis)
    before = sorted(ledger.entries(), key=lambda e: e.job_id)
    assert len(before) == 6  # 5 succeeded + 1 cancelled after the provider charged; the failed one cost nothing
    assert {e.status for e in before} == {"succeeded", "cancelled"}

    # Redis lost the ledger and the job records (which hold their jobs' entries).
    for key in stack.keys(f"{keys.LEDGER_PREFIX}*") + [keys.job_key(e.job_id) for e in before]:
        stack.redis.delete(key)
    assert ledger.entries() == []
    rebuilt = run(stack, "costs", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "added 6, changed 0, unchanged 0, missing from storage 0" in rebuilt.stdout
    bucket = stack.storage_url.removeprefix("s3://").split("/")[0]
    named = f"read S3 bucket {bucket}, prefix renders, endpoint http://" if backend == "s3" else "read local folder /"
    assert rebuilt.stdout.startswith(named), rebuilt.stdout
    assert "testing-secret" not in rebuilt.stdout

    after = sorted(ledger.entries(), key=lambda e: e.job_id)
    assert after == before
