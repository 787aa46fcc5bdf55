"""Memory per job (issue 18): what each Redis key of a job costs in the job store, queued
and again once real workers have finished it, and what a queued message costs the broker.

N jobs of one request are enqueued (`--memory-request`, default `both`: one after the
other in the same run, on a flushed store each time):

- `typical`: a prompt of 200 characters, two tags and a client job id
  (`shop-order-2026-12-06-NNNNNNN`), the default model and parameters;
- `overhead`: the request of the overhead bench (`bench/drain.py`, `harness.enqueue`): a
  prompt `overhead N`, no tags, no client job id, the default model and parameters. The
  issue's targets were set against this one ("3.0 KB today" is its finished job).

Every
key of the job store is then grouped by kind, the job's own ids replaced by placeholders
(`job:{job}`, `client:{client}`, `task:byteplus:{task}`): a kind that holds one key per job
is counted as MEMORY USAGE of its keys over N; a key shared by the jobs (an index, a
counter) as its MEMORY USAGE over N, its members (ZCARD, HLEN) given beside. The totals
are the sum of the kinds and, as the figure that counts everything (MEMORY USAGE leaves out
a zset member's dictionary entry, the key tables' buckets and the expiry entries of keys
with a TTL), the delta over N of Redis's data plus key tables (MEMORY STATS
`dataset.bytes` + `overhead.hashtable.*`): the target's figure. The used_memory delta is
given beside; it also holds the connections' buffers, which are not per job.

Target (issue 18): at most 1.2 KB per queued job and 1.0 KB per finished job.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any

import redis

from bench.harness import BenchStack, redis_counters
from producer import VideoRequest

TARGET_QUEUED_B = 1200
TARGET_FINISHED_B = 1000

PROMPT = (
    "A slow dolly shot through a rain-soaked night market in Taipei: neon signs reflect in "
    "puddles, steam rises from food stalls, a vendor hands a paper bowl of noodles to a "
    "customer, shallow depth of field, 35 mm film look. "
)
TAGS = ("campaign-winter-sale", "team-social")

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_CLIENT = re.compile(r"client:shop-order-[0-9-]+$")
_TASK = re.compile(r"(task:[^:]+:).+$")


def prompt(i: int) -> str:
    """A prompt of exactly 200 characters, numbered so that no two jobs are the same."""
    suffix = f" Take {i:07d}."
    return (PROMPT * 2)[: 200 - len(suffix)] + suffix


def request(i: int) -> VideoRequest:
    """The typical request of the scenario: 200-character prompt, two tags, a client job id."""
    return VideoRequest(prompt=prompt(i), tags=TAGS, client_job_id=f"shop-order-2026-12-06-{i:07d}")


def overhead_request(i: int) -> VideoRequest:
    """The overhead bench's request (`harness.enqueue(producer, n, "overhead")`)."""
    return VideoRequest(prompt=f"overhead {i}")


REQUESTS: dict[str, Callable[[int], VideoRequest]] = {"typical": request, "overhead": overhead_request}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The memory scenario's option (`python -m bench memory --memory-request overhead`)."""
    group = parser.add_argument_group("memory options")
    group.add_argument(
        "--memory-request",
        choices=[*REQUESTS, "both"],
        default="both",
        help="the request measured: typical (200-character prompt, two tags, a client job id), "
        "overhead (the overhead bench's), or both, one after the other (default)",
    )


def _describe(name: str) -> dict[str, Any]:
    sample = REQUESTS[name](0)
    return {
        "name": name,
        "prompt_chars": len(sample.prompt),
        "tags": list(sample.tags),
        "client_job_id": sample.client_job_id,
    }


def kind_of(key: str) -> str:
    """A key's kind: the key with the job's own ids replaced by placeholders."""
    key = _UUID.sub("{job}", key)
    key = _CLIENT.sub("client:{client}", key)
    return _TASK.sub(r"\1{task}", key)


def _members(client: redis.Redis, key: str, kind: str) -> int | None:
    count: Any = {"zset": client.zcard, "hash": client.hlen, "set": client.scard, "list": client.llen}.get(kind)
    return int(count(key)) if count else None


def key_kinds(url: str, jobs: int) -> list[dict[str, Any]]:
    """Every key of the Redis at `url` grouped by kind, with its bytes per job."""
    client = redis.Redis.from_url(url, decode_responses=True)
    names = sorted(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.memory_usage(name, samples=0)
        pipe.type(name)
        pipe.ttl(name)
    answers = pipe.execute()
    kinds: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        usage, kind, ttl = answers[3 * i : 3 * i + 3]
        row = kinds.setdefault(
            kind_of(name), {"kind": kind_of(name), "type": kind, "keys": 0, "bytes": 0, "ttl": ttl > 0, "members": 0}
        )
        row["keys"] += 1
        row["bytes"] += int(usage or 0)
        members = _members(client, name, kind)
        if members is not None:
            row["members"] += members
    rows = []
    for row in kinds.values():
        per_job = row["keys"] > 1 or "{" in row["kind"]
        rows.append(
            {
                "kind": row["kind"],
                "type": row["type"],
                "keys": row["keys"],
                "members": row["members"] if row["type"] != "string" else None,
                "ttl": row["ttl"],
                "bytes_per_key": round(row["bytes"] / row["keys"]),
                "bytes_per_member": round(row["bytes"] / row["members"]) if row["members"] else None,
                "per_job_key": per_job,
                "bytes_per_job": round(row["bytes"] / jobs, 1),
            }
        )
    return sorted(rows, key=lambda r: -r["bytes_per_job"])


def _record_sizes(url: str) -> dict[str, float]:
    """Average length (bytes) of the stored JSON of records and ledger rows."""
    client = redis.Redis.from_url(url)
    out: dict[str, float] = {}
    for label, pattern in (("record_json_bytes", "*:job:*"), ("ledger_row_json_bytes", "*:ledger:entry:*")):
        names = list(client.scan_iter(match=pattern, count=1000))
        if names:
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.strlen(name)
            out[label] = round(sum(pipe.execute()) / len(names), 1)
    return out


def _sample(url: str) -> dict[str, str]:
    """One stored record and ledger row, as they are in Redis (for the report)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    out: dict[str, str] = {}
    for label, pattern in (("record", "*:job:*"), ("ledger_row", "*:ledger:entry:*")):
        for name in client.scan_iter(match=pattern, count=1000):
            out[label] = str(client.get(name))
            break
    return out


def memory_stats(url: str | redis.Redis) -> dict[str, float]:
    """Redis's own split of its used memory (MEMORY STATS): the data, the key tables (main
    and expiry dictionaries of db 0) and the client connections' buffers. Given a client,
    on its connection (a new connection would count as data moved about)."""
    client = redis.Redis.from_url(url) if isinstance(url, str) else url
    # The slow log keeps the arguments of up to 128 slow commands (most are, on a busy
    # machine): hundreds of bytes per job at N = 2,000 that no job holds.
    client.slowlog_reset()
    stats: dict[str, Any] = client.memory_stats()  # type: ignore[assignment]
    db: dict[str, Any] = stats.get("db.0") or {}
    return {
        "used_memory": float(stats["total.allocated"]),
        "dataset": float(stats["dataset.bytes"]),
        "key_tables": float(db.get("overhead.hashtable.main", 0)) + float(db.get("overhead.hashtable.expires", 0)),
        "clients": float(stats["clients.normal"]),
    }


def drop_streams(url: str) -> dict[str, Any]:
    """DEL the event stream(s) of the job store at `url` (issue 16: `keys.EVENTS_STREAM`,
    capped at EVENTS_MAXLEN entries, so a fixed ceiling, not a cost per job) and return
    their entries and what deleting them freed (MEMORY STATS data + key tables, bytes):
    exact but for about 16 KB that moves from run to run (so a figure at N = 2,000, noise at
    100), where MEMORY USAGE of a stream is an estimate. The next phase's stream starts
    empty."""
    client = redis.Redis.from_url(url, decode_responses=True)
    streams = list(client.scan_iter(_type="stream", count=1000))
    entries = sum(int(client.xlen(name)) for name in streams)  # type: ignore[arg-type, misc]
    # Twice each: the first call also frees what the commands before it left (the slow
    # log, a client's buffers), which would count as the stream's otherwise.
    memory_stats(client)
    before = memory_stats(client)
    if streams:
        client.delete(*streams)
    memory_stats(client)
    after = memory_stats(client)
    client.close()
    freed = before["dataset"] + before["key_tables"] - after["dataset"] - after["key_tables"]
    per_entry = round(freed / entries, 1) if entries else None
    return {"entries": entries, "bytes": round(freed), "bytes_per_entry": per_entry}


SHORT_LIVED = ("*:task:*", "*:limits:creates:*")
"""Keys of a finished job that expire long before it does: its provider task's claim
(`retention.claim_after_end_s`: about 50 h at the defaults) and the create window of the last
minute (120 s)."""


def drop_short_lived(url: str) -> dict[str, int]:
    """DEL the keys of `SHORT_LIVED` at `url`, as their TTLs will, so that what is left is
    what a finished job holds for the rest of its retention; returns how many of each."""
    client = redis.Redis.from_url(url, decode_responses=True)
    dropped: dict[str, int] = {}
    for pattern in SHORT_LIVED:
        names = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(names), 500):
            client.delete(*names[start : start + 500])
        dropped[pattern] = len(names)
    return dropped


def _phase(stack: BenchStack, jobs: int, base: dict[str, float], label: str) -> dict[str, Any]:
    now = memory_stats(stack.store_url)
    delta = {name: (now[name] - base[name]) / jobs for name in now}
    kinds = key_kinds(stack.store_url, jobs)
    # Taken out here so that the next phase's figure does not count this one's entries.
    stream = drop_streams(stack.store_url)
    with_stream = delta["dataset"] + delta["key_tables"]
    return {
        "phase": label,
        # Everything Redis holds for the jobs: their data plus the key tables' entries and
        # buckets, but the event stream, a capped key whose size does not grow with the jobs
        # kept (given apart); the connections' buffers (not per job) are left out too.
        "store_bytes_per_job": round(with_stream - stream["bytes"] / jobs),
        "store_bytes_per_job_with_stream": round(with_stream),
        "events_stream": stream,
        "store_bytes_per_job_used_memory": round(delta["used_memory"]),
        "store_bytes_per_job_dataset": round(delta["dataset"]),
        "store_bytes_per_job_key_tables": round(delta["key_tables"]),
        "store_client_buffers_bytes": round(delta["clients"] * jobs),
        "store_bytes_per_job_sum_of_keys": round(sum(r["bytes_per_job"] for r in kinds)),
        "kinds": kinds,
        **_record_sizes(stack.store_url),
        "sample": _sample(stack.store_url),
    }


def run(stack: BenchStack, quick: bool, options: argparse.Namespace | None = None) -> dict[str, Any]:
    """Measure each request asked for (`--memory-request`, default both): the top-level
    figures are the first one's (typical when both), every request's under `by_request`."""
    choice = getattr(options, "memory_request", None) or "both"
    names = list(REQUESTS) if choice == "both" else [choice]
    results = {name: measure(stack, quick, name) for name in names}
    first = results[names[0]]
    rows = [{"request": name, **row} for name, result in results.items() for row in result["rows"]]
    return {
        **first,
        "rows": rows,
        "by_request": {name: {k: v for k, v in result.items() if k != "rows"} for name, result in results.items()},
        "notes": [f"{name}: {note}" for name, result in results.items() for note in result["notes"]],
    }


def measure(stack: BenchStack, quick: bool, name: str) -> dict[str, Any]:
    """Enqueue 2,000 jobs of request `name` (quick: 100), measure; let one worker finish
    them, measure."""
    make = REQUESTS[name]
    jobs = 100 if quick else 2000
    stack.stop_workers()
    stack.flush()
    stack.sim_reset()
    stack.sim_config(latency=0.0, latency_jitter=0.0)
    env = stack.env(poll_initial_s=1, poll_jitter=0)
    producer = stack.producer(env)
    store0, broker0 = memory_stats(stack.store_url), redis_counters(stack.broker_url)
    for first in range(0, jobs, 500):
        producer.submit_many([make(i) for i in range(first, min(first + 500, jobs))])
    broker_q = redis_counters(stack.broker_url)
    queued = _phase(stack, jobs, store0, "queued")
    stack.start_workers(1, concurrency=2, pool="prefork", env=env)
    stack.wait_final(jobs, 900, interval=0.5)
    stack.stop_workers()
    counts = stack.counts()
    finished = _phase(stack, jobs, store0, "finished")
    finished["short_lived"] = drop_short_lived(stack.store_url)
    after = memory_stats(stack.store_url)
    finished["store_bytes_per_job_for_its_retention"] = round(
        (after["dataset"] + after["key_tables"] - store0["dataset"] - store0["key_tables"]) / jobs
    )
    broker_per_message = round((broker_q["used_memory"] - broker0["used_memory"]) / jobs)

    rows: list[dict[str, Any]] = []
    by_kind: dict[str, dict[str, Any]] = {}
    for phase in (queued, finished):
        for kind in phase["kinds"]:
            row = by_kind.setdefault(kind["kind"], {"key kind": kind["kind"], "type": kind["type"]})
            row[f"{phase['phase']} B/job"] = kind["bytes_per_job"]
            if kind["members"] is not None:
                row[f"{phase['phase']} members"] = kind["members"]
    rows += sorted(by_kind.values(), key=lambda r: -(r.get("finished B/job") or r.get("queued B/job") or 0))
    rows.append(
        {
            "key kind": "total: sum of the key kinds",
            "queued B/job": queued["store_bytes_per_job_sum_of_keys"],
            "finished B/job": finished["store_bytes_per_job_sum_of_keys"],
        }
    )
    for label, field in (
        ("key tables (main and expiry dicts): delta / N", "store_bytes_per_job_key_tables"),
        ("total: dataset + key tables delta / N, the event stream apart (the target's figure)", "store_bytes_per_job"),
        ("the same with this phase's event stream entries", "store_bytes_per_job_with_stream"),
        ("used_memory delta / N (with connection buffers)", "store_bytes_per_job_used_memory"),
    ):
        rows.append({"key kind": label, "queued B/job": queued[field], "finished B/job": finished[field]})
    rows.append(
        {
            "key kind": "finished, once its task claim and create window expired (the rest of its retention)",
            "finished B/job": finished["store_bytes_per_job_for_its_retention"],
        }
    )
    rows.append(
        {
            "key kind": "event stream (capped at EVENTS_MAXLEN entries: not per job), B per entry",
            "queued B/job": queued["events_stream"]["bytes_per_entry"],
            "finished B/job": finished["events_stream"]["bytes_per_entry"],
        }
    )
    rows.append({"key kind": "broker: used_memory delta / N, queued", "queued B/job": broker_per_message})
    met_q = queued["store_bytes_per_job"] <= TARGET_QUEUED_B
    met_f = finished["store_bytes_per_job"] <= TARGET_FINISHED_B
    return {
        "rows": rows,
        "jobs": jobs,
        "counts": counts,
        "request": _describe(name),
        "queued": queued,
        "finished": finished,
        "broker_bytes_per_queued_message": broker_per_message,
        "targets": {
            "queued_bytes": TARGET_QUEUED_B,
            "finished_bytes": TARGET_FINISHED_B,
            "queued_met": met_q,
            "finished_met": met_f,
        },
        "notes": [
            f"record JSON {queued.get('record_json_bytes')} B queued, {finished.get('record_json_bytes')} B "
            f"finished; ledger row JSON {finished.get('ledger_row_json_bytes', '(none: no per-job row)')} B",
            f"per queued job {queued['store_bytes_per_job']} B (target {TARGET_QUEUED_B}: "
            f"{'met' if met_q else 'not met'}), per finished job {finished['store_bytes_per_job']} B "
            f"(target {TARGET_FINISHED_B}: {'met' if met_f else 'not met'}); jobs by status {counts}",
        ],
    }
