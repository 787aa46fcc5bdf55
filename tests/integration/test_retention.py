"""Retention against real Redis, real workers and the simulator: final records (which hold
their ledger entries), their inputs and index entries go JOB_RETENTION_S after the jobs
end, the cost reports stay the same, and the archive in storage answers for the expired
jobs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from producer import JobStatus, VideoRequest
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_for
from tests.integration.test_cli import run
from videoqueue import keys, retention
from videoqueue.budget import usage
from videoqueue.keys import budget_counter_key, input_key, job_key, ledger_entry_key, status_index
from videoqueue.settings import get_settings

pytestmark = pytest.mark.integration

# A few seconds, so that the records expire while the test watches: Redis TTLs count whole
# seconds and the sweep (every second here) trims the indexes right after.
RETENTION_S = "4"

REPORTS = (
    ("--by", "day"),
    ("--by", "month"),
    ("--by", "tag"),
    ("--by", "provider"),
    ("--by", "model"),
    ("--by", "status"),
    ("--by", "day", "--tag", "q4"),
    ("--by", "status", "--provider", "byteplus"),
)


@pytest.fixture
def short_retention(local_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    # The workers, the CLI and this process (the producer's own final moves: a cancel of a
    # queued job) keep final records RETENTION_S.
    local_stack.extra_env.update({"JOB_RETENTION_S": RETENTION_S, "SWEEP_INTERVAL_S": "1"})
    monkeypatch.setenv("JOB_RETENTION_S", RETENTION_S)
    get_settings.cache_clear()
    yield local_stack
    get_settings.cache_clear()


def _costs(stack: Stack) -> dict[tuple[str, ...], list[dict[str, object]]]:
    reports: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for args in REPORTS:
        done = run(stack, "costs", *args, "--json")
        assert done.returncode == 0, done.stderr
        reports[args] = json.loads(done.stdout)
    return reports


def _ttl(stack: Stack, key: str) -> int:
    ttl: int = stack.redis.ttl(key)  # type: ignore[assignment]
    return ttl


def _per_job_keys(stack: Stack, job_ids: list[str]) -> list[str]:
    names = [job_key(j) for j in job_ids] + [ledger_entry_key(j) for j in job_ids]
    names += [input_key(j, "first_frame") for j in job_ids]
    return [n for n in names if stack.redis.exists(n)]


def _index_entries(stack: Stack, job_ids: list[str]) -> list[str]:
    indexes = [keys.LEGACY_ALL_INDEX, keys.LEDGER_INDEX, keys.INPUTS_RELEASE_INDEX]
    indexes += [status_index(s) for s in JobStatus]
    return [f"{i} {j}" for i in indexes for j in job_ids if stack.redis.zscore(i, j) is not None]


def test_final_records_expire_and_the_ledger_and_archive_remain(short_retention: Stack) -> None:
    stack = short_retention
    vq = stack.queue()
    cancelled = vq.submit(VideoRequest(prompt="cancelled while queued"))
    vq.cancel(cancelled.id)  # before any worker: no cost, no manifest
    paid = [
        vq.submit(VideoRequest(prompt="a fox", tags=("ads",))),
        vq.submit(VideoRequest(prompt="a fox in snow", tags=("ads", "q4"))),
        vq.submit(VideoRequest(prompt="an owl")),
    ]
    # A legacy input key (as producers before object-storage inputs wrote it), kept a day:
    # the retention shortens it.
    stack.redis.set(input_key(paid[0].id, "first_frame"), "{}", ex=86400)
    stack.start_worker()
    done = vq.wait([j.id for j in paid], timeout=60)
    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 3
    ids = [cancelled.id, *(j.id for j in paid)]
    assert 0 < _ttl(stack, job_key(paid[0].id)) <= int(RETENTION_S)
    assert 0 < _ttl(stack, input_key(paid[0].id, "first_frame")) <= int(RETENTION_S)
    # The task claim outlives the record: until no other job's lookup may see the task
    # (JOB_DEADLINE_S and FOLLOW_PAST_DEADLINE_S at their defaults here), not 7 days.
    claims = [keys.task_claim_key(j.provider, str(j.provider_task_id)) for j in done]
    kept = retention.claim_after_end_s(done[0])
    assert kept == 7200 + 172800 + retention.CLAIM_MARGIN_S
    assert all(kept - 60 <= _ttl(stack, claim) <= kept for claim in claims)
    # No per-job ledger row nor index member: the records hold the entries (issue 18).
    assert stack.keys(f"{keys.LEDGER_PREFIX}entry:*") == [] and stack.redis.zcard(keys.LEDGER_INDEX) == 0
    before = _costs(stack)
    assert before[("--by", "day")][-1]["jobs"] == 3
    assert [r["group"] for r in before[("--by", "tag")]] == ["(untagged)", "ads", "q4", "total"]
    # `costs rebuild` while the records live: the manifests say what the records say.
    for _ in range(2):
        rebuilt = run(stack, "costs", "rebuild")
        assert "added 0, changed 0, unchanged 3" in rebuilt.stdout, rebuilt.stdout
        assert _costs(stack) == before
    assert stack.redis.zcard(keys.LEDGER_INDEX) == 0

    def gone() -> bool:
        return not _per_job_keys(stack, ids) and not _index_entries(stack, ids)

    wait_for(gone, 60, "records expired and trimmed")

    assert _costs(stack) == before
    assert stack.redis.zcard(keys.LEDGER_DAYS) == 1  # what stays: one day's aggregates
    assert all(_ttl(stack, claim) > 0 for claim in claims)  # and, for a while, the task claims

    # `costs rebuild` reads the three manifests: their rows expired, their amounts are in the
    # day's aggregates, so nothing is added again.
    rebuilt = run(stack, "costs", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "added 0, changed 0, unchanged 3" in rebuilt.stdout, rebuilt.stdout
    assert _costs(stack) == before
    # Redis lost the aggregates too: the rebuild adds the three back, totals only (their rows
    # would have expired).
    stack.redis.delete(keys.LEDGER_DAYS, *stack.keys(f"{keys.LEDGER_PREFIX}day:*"))
    rebuilt = run(stack, "costs", "rebuild")
    assert "added 3, changed 0, unchanged 0" in rebuilt.stdout, rebuilt.stdout
    assert _costs(stack) == before
    assert stack.redis.zcard(keys.LEDGER_INDEX) == 0

    status = run(stack, "status", paid[1].id)
    assert status.returncode == 1
    manifest = f"{paid[1].id}.json"
    assert "expired after the retention (JOB_RETENTION_S=4" in status.stderr, status.stderr
    assert manifest in status.stderr and f"videoqueue archive get {paid[1].id}" in status.stderr

    archived = run(stack, "archive", "get", paid[1].id, "--json")
    assert archived.returncode == 0, archived.stderr
    record = json.loads(archived.stdout)
    assert (record["id"], record["status"], record["request"]["tags"]) == (paid[1].id, "succeeded", ["ads", "q4"])
    assert record["manifest_uri"].endswith(f"/{paid[1].id}.json")
    shown = run(stack, "archive", "get", paid[1].id)
    assert shown.returncode == 0 and "succeeded" in shown.stdout

    # The 8 characters `jobs` shows find the expired job by its manifest's name.
    short = paid[1].id[:8]
    by_prefix = run(stack, "status", short)
    assert by_prefix.returncode == 1, by_prefix.stderr
    assert f"expired {paid[1].id}: succeeded; its record expired" in by_prefix.stderr, by_prefix.stderr
    by_prefix = run(stack, "archive", "get", short)
    assert by_prefix.returncode == 0 and f"job       {paid[1].id}" in by_prefix.stdout, by_prefix.stderr
    assert run(stack, "archive", "get", "ffffffff").returncode == 1

    unknown = run(stack, "status", cancelled.id)  # no manifest: nothing says it existed
    assert unknown.returncode != 0 and "unknown job" in unknown.stderr, unknown.stderr
    assert run(stack, "archive", "get", cancelled.id).returncode == 1
    assert vq.archived(paid[2].id) is not None and vq.archived(cancelled.id) is None


def test_budget_rebuild_after_the_rows_expired_keeps_what_was_spent(short_retention: Stack) -> None:
    # Recounted from the rows alone, the tag (all time) and today's counters would drop to
    # zero once the rows expired, and the caps would let the same money be spent again.
    stack = short_retention
    vq = stack.queue()
    jobs = [vq.submit(VideoRequest(prompt=f"spent {i}", tags=("ads",))) for i in range(2)]
    stack.start_worker()
    assert [j.status for j in vq.wait([j.id for j in jobs], timeout=60)] == [JobStatus.SUCCEEDED] * 2
    today = datetime.now(UTC).date().isoformat()
    counters = [budget_counter_key(b) for b in ("tag:ads", f"day:{today}", f"month:{today[:7]}")]
    spent = [usage(stack.redis, c)[1] for c in counters]
    assert spent[0] > 0 and spent == [spent[0]] * 3
    wait_for(lambda: not _per_job_keys(stack, [j.id for j in jobs]), 60, "ledger rows expired")

    dry = run(stack, "budget", "rebuild", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "0 counters would change" in dry.stdout, dry.stdout
    rebuilt = run(stack, "budget", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "counted 0 ledger entries (spent)" in rebuilt.stdout and "0 counters changed" in rebuilt.stdout
    # A 4 s retention is under the one-day margin: today's and this month's counters cannot
    # be recounted from rows, and the command says so.
    assert "kept 2 day/month counters, not recounted" in rebuilt.stdout, rebuilt.stdout
    assert f"day:{today}, month:{today[:7]}" in rebuilt.stdout
    assert [usage(stack.redis, c)[1] for c in counters] == spent
    # Redis lost the tag counter: the day aggregates give it back in full.
    stack.redis.delete(counters[0])
    again = run(stack, "budget", "rebuild")
    assert "tag:ads: spent $0.0000 -> $" in again.stdout, again.stdout
    assert usage(stack.redis, counters[0]) == (Decimal(0), spent[0])
