"""Overload (issue 15): a fleet with far more jobs than the provider's quota lets in flight.

The quota is ours (MAX_IN_FLIGHT_PER_MODEL, CREATES_PER_MINUTE_PER_MODEL); the simulator
itself never queues (BenchStack gives it a concurrency of a million), so a task's render
starts the moment its create reaches the simulator. Everything is measured at the provider
side from `GET /_sim/tasks` (each task's prompt, create, start and finish time); the
prompt carries the job's place in the enqueue order (`#<seq>`), and the bench remembers
each job's priority and tenant. Broker messages are counted on the broker's own
redis-server: kombu publishes every task message with one LPUSH (a restored message with
an LPUSH or RPUSH), and the broker's keyspace notifications of those two commands, counted
per list, tell the messages of each queue apart (cross-checked against `INFO
commandstats`). Job-store commands are that server's `INFO` counts minus the bench's own
status polls.

Parts (`--parts`, default all), render times uniform over mean +-20 %:

- A, slots: `--jobs` jobs (2,000) on `--slots` (20) with `--render` s renders (30): slot
  utilisation = sum of render times / (slots x (last finish - first create)), target
  >= 0.97; refill latency = a slot freed at the provider (a task finished) -> the next
  create reaching the provider, the k-th finish matched with the (slots + k)-th create,
  p50 < 0.2 s, p95 < 1 s; makespan (first create -> last finish) <= 1.05 x ideal (sum of
  render times / slots).
- B, order (from the same run as A): within one priority and tenant, a job created more
  than 50 ms (`--same-instant`) before a job enqueued earlier is an inversion.
- C, backlog independence: `--c-backlogs` (200,20000) jobs, `--c-slots` (50), 1 s renders;
  broker messages, broker commands and job-store commands per job within 10 % across them.
- D, priority: a priority-9 job enqueued behind `--d-backlog` (1,000) waiting priority-5
  jobs, `--d-probes` times: creates and slot releases between its enqueue and its create
  (target: one of the next 2 slot releases, i.e. at most 1 other create first).
- E, fair share: tenants A and B, `--e-jobs` each (A's enqueued first), weights 1:1 then 3:1
  (TENANT_WEIGHTS); every window of `--e-window` (200) consecutive creates while both
  still wait: each tenant's share within 5 points of its weight's share.
- F, create rate: CREATES_PER_MINUTE_PER_MODEL=`--f-rpm` (60) with `--slots`, 5 s renders,
  `--f-jobs` (60,180) jobs: the most creates in any rolling 60 s, and broker messages per
  job for each size (a waiting job should cost no messages while it waits).

D and E need the request fields `priority` and `tenant` (and the TENANT_WEIGHTS setting):
without them a part named in `--parts` stops the run at once with a message; with the
default (all parts) it is skipped with that message as a note.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from bench.harness import FINAL, BenchStack, redis_counters
from producer import VideoRequest
from videoqueue.job import JobRecord, JobStatus
from videoqueue.settings import Settings

PARTS = "ABCDEF"
UNLIMITED = 1_000_000
TOLERANCE_SHARE = 0.05
TOLERANCE_RATIO = 0.10
SEQ_RE = re.compile(r"#(\d+)\b")


class MissingFeature(RuntimeError):
    """A part needs a request field or setting this code does not have yet."""


# ------------------------------------------------------------------------------ options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The overload scenario's options (`python -m bench overload --parts A,D --jobs 400`)."""
    group = parser.add_argument_group("overload options")
    group.add_argument("--parts", default="all", help="parts of the overload scenario, e.g. A,D (default: all)")
    group.add_argument("--jobs", type=int, help="A/B: jobs (default 2000; quick 8)")
    group.add_argument("--slots", type=int, help="A/B/D/E/F: MAX_IN_FLIGHT_PER_MODEL (default 20; quick 8)")
    group.add_argument("--render", type=float, help="A/B/D: mean render seconds, +-20%% (default 30; quick 1)")
    group.add_argument("--same-instant", type=float, default=0.05, help="B: creates this close are simultaneous (s)")
    group.add_argument("--c-backlogs", help="C: backlog sizes, comma-separated (default 200,20000; quick 4,8)")
    group.add_argument("--c-slots", type=int, help="C: slots (default 50; quick 10)")
    group.add_argument("--c-render", type=float, help="C: mean render seconds (default 1; quick 0.5)")
    group.add_argument("--d-backlog", type=int, help="D: waiting priority-5 jobs (default 1000; quick 40)")
    group.add_argument("--d-probes", type=int, help="D: priority-9 jobs, one after the other (default 3; quick 1)")
    group.add_argument("--e-jobs", type=int, help="E: jobs per tenant (default 600; quick 16)")
    group.add_argument("--e-window", type=int, help="E: creates per window (default 200; quick 8)")
    group.add_argument("--e-weights", help="E: weights A:B, comma-separated (default 1:1,3:1)")
    group.add_argument("--e-render", type=float, help="E: mean render seconds (default 4; quick 1)")
    group.add_argument("--f-rpm", type=int, help="F: CREATES_PER_MINUTE_PER_MODEL (default 60; quick 10)")
    group.add_argument("--f-jobs", help="F: job counts, comma-separated (default 60,180; quick 3,6)")
    group.add_argument("--f-render", type=float, help="F: mean render seconds (default 5; quick 1)")
    group.add_argument("--pool", help="worker pool (default threads)")
    group.add_argument("--concurrency", type=int, help="worker pool size (default 32; quick 8)")
    group.add_argument("--timeout", type=float, default=None, help="seconds a load may run (default: from its size)")


@dataclass
class Plan:
    """Sizes of every part, from the options (quick or full defaults)."""

    parts: str
    explicit: bool
    jobs: int
    slots: int
    render: float
    same_instant: float
    c_backlogs: list[int]
    c_slots: int
    c_render: float
    d_backlog: int
    d_probes: int
    e_jobs: int
    e_window: int
    e_weights: list[tuple[int, int]]
    e_render: float
    f_rpm: int
    f_jobs: list[int]
    f_render: float
    pool: str
    concurrency: int
    timeout: float | None

    @classmethod
    def from_options(cls, options: argparse.Namespace | None, quick: bool) -> Plan:
        """Options given win over the (quick or full) defaults."""
        opts = vars(options) if options is not None else {}

        def pick(name: str, full: Any, small: Any) -> Any:
            value = opts.get(name)
            return value if value is not None else (small if quick else full)

        parts_opt = str(opts.get("parts") or "all")
        explicit = parts_opt.lower() != "all"
        parts = "".join(p.strip().upper() for p in parts_opt.split(",")) if explicit else PARTS
        unknown = sorted(set(parts) - set(PARTS))
        if unknown or not parts:
            raise ValueError(
                f"--parts: unknown part(s) {', '.join(unknown) or '(none)'}; choose from {','.join(PARTS)}"
            )
        weights = []
        for item in str(pick("e_weights", "1:1,3:1", "1:1,3:1")).split(","):
            a, _, b = item.partition(":")
            weights.append((int(a), int(b)))
        return cls(
            parts=parts,
            explicit=explicit,
            jobs=pick("jobs", 2000, 8),
            slots=pick("slots", 20, 8),
            render=pick("render", 30.0, 1.0),
            same_instant=float(opts.get("same_instant") or 0.05),
            c_backlogs=_ints(pick("c_backlogs", "200,20000", "4,8")),
            c_slots=pick("c_slots", 50, 10),
            c_render=pick("c_render", 1.0, 0.5),
            d_backlog=pick("d_backlog", 1000, 40),
            d_probes=pick("d_probes", 3, 1),
            e_jobs=pick("e_jobs", 600, 16),
            e_window=pick("e_window", 200, 8),
            e_weights=weights,
            e_render=pick("e_render", 4.0, 1.0),
            f_rpm=pick("f_rpm", 60, 10),
            f_jobs=_ints(pick("f_jobs", "60,180", "3,6")),
            f_render=pick("f_render", 5.0, 1.0),
            pool=pick("pool", "threads", "threads"),
            concurrency=pick("concurrency", 32, 8),
            timeout=opts.get("timeout"),
        )


def _ints(text: str) -> list[int]:
    return [int(item) for item in str(text).split(",") if item.strip()]


# -------------------------------------------------------- request fields of issue 15


def missing_features(part: str) -> list[str]:
    """What part `part` needs that this code lacks (request fields, settings)."""
    needs = {"D": [("field", "priority")], "E": [("field", "tenant"), ("setting", "tenant_weights")]}
    missing = []
    for kind, name in needs.get(part, []):
        present = name in VideoRequest.model_fields if kind == "field" else hasattr(Settings, name)
        if not present:
            where = "producer.VideoRequest" if kind == "field" else "the settings (TENANT_WEIGHTS)"
            missing.append(f"{name} ({kind} of {where})")
    return missing


def check_options(options: argparse.Namespace | None, quick: bool) -> None:
    """Refuse before anything starts: bad options, or a part named explicitly that this
    code cannot run yet."""
    plan = Plan.from_options(options, quick)
    if "D" in plan.parts and plan.d_backlog < 2 * plan.slots + plan.d_probes * max(2, plan.slots // 2):
        raise ValueError("--d-backlog: too small to keep jobs waiting behind the probes; give at least 2 x slots more")
    if plan.explicit:
        for part in plan.parts:
            missing = missing_features(part)
            if missing:
                raise ValueError(
                    f"part {part} needs {', '.join(missing)}, which this code does not have yet "
                    "(issue 15's request fields); run the other parts, or merge the branch that adds them"
                )


def make_request(prompt: str, *, priority: int | None = None, tenant: str | None = None) -> VideoRequest:
    """A default request; `priority` and `tenant` only when given (they are issue 15's
    fields: MissingFeature, naming the field, where VideoRequest has none)."""
    extra: dict[str, Any] = {}
    if priority is not None:
        extra["priority"] = priority
    if tenant is not None:
        extra["tenant"] = tenant
    for name in extra:
        if name not in VideoRequest.model_fields:
            raise MissingFeature(f"producer.VideoRequest has no field {name!r} yet (issue 15)")
    return VideoRequest(prompt=prompt, **extra)


# ------------------------------------------------------------------- the broker tap


class BrokerTap:
    """Counts the messages published on each list of the broker (kombu's Redis transport
    pushes every task message with LPUSH, a restored one with LPUSH or RPUSH), from the
    broker's keyspace notifications of those commands."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.client.config_set("notify-keyspace-events", "El")
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.psubscribe(**{"__keyevent@*__:lpush": self._on, "__keyevent@*__:rpush": self._on})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.05, daemon=True)

    def _on(self, message: dict[str, Any]) -> None:
        key = message["data"].decode(errors="replace") if isinstance(message["data"], bytes) else str(message["data"])
        # kombu's priority lists are "<queue>\x06\x16<n>"
        with self._lock:
            self.counts[key.split("\x06\x16")[0]] += 1

    def snapshot(self) -> Counter[str]:
        """Messages so far by queue (give the notifications a moment to arrive)."""
        time.sleep(0.3)
        with self._lock:
            return Counter(self.counts)

    def close(self) -> None:
        """Stop listening."""
        self._thread.stop()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self.client.close()


# -------------------------------------------------------------------------- loads


@dataclass
class Job:
    """One job of a load, as the bench enqueued it."""

    seq: int
    prompt: str
    priority: int = 5
    tenant: str = "default"
    enqueued: float = 0.0
    job_id: str = ""


@dataclass
class Trace:
    """What one load did, seen from the provider and the two Redis servers."""

    label: str
    jobs: list[Job]
    slots: int
    tasks: list[dict[str, Any]]  # the simulator's timeline entries of this load's tasks, with "job"
    records: dict[str, JobRecord]
    enqueue_started: float
    enqueued: float
    ended: float
    complete: bool
    messages: Counter[str]
    broker: dict[str, float]
    store: dict[str, float]
    bench_store_commands: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def created(self) -> list[dict[str, Any]]:
        """Tasks in create order."""
        return sorted(self.tasks, key=lambda t: t["created"])


def _settings_env(stack: BenchStack, slots: int, rpm: int | None, **extra: object) -> dict[str, str]:
    return stack.env(
        max_in_flight_per_model=slots,
        creates_per_minute_per_model=rpm or UNLIMITED,
        log_level="WARNING",
        **extra,
    )


def _sim_tasks(stack: BenchStack) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = httpx.get(f"{stack.sim_url}/_sim/tasks", timeout=60).json()
    return data


def run_load(
    stack: BenchStack,
    plan: Plan,
    label: str,
    jobs: list[Job],
    *,
    slots: int,
    render: float,
    rpm: int | None = None,
    settings: dict[str, object] | None = None,
    timeout: float,
    during: Callable[[BenchStack, Any, list[Job]], dict[str, Any]] | None = None,
    until: Callable[[BenchStack], bool] | None = None,
) -> Trace:
    """Start a fresh fleet with this quota, enqueue `jobs` (one submit_many per 500, in
    order), and wait until all are final, `until` says so, or `timeout` passes. `during`
    runs after the enqueue (part D enqueues its probes there)."""
    stack.stop_workers()
    stack.flush()
    stack.sim_reset()
    stack.sim_config(latency=0.8 * render, latency_jitter=0.4 * render)
    env = _settings_env(stack, slots, rpm, **(settings or {}))
    stack.start_workers(1, concurrency=plan.concurrency, pool=plan.pool, env=env)
    producer = stack.producer(env)
    tap = BrokerTap(stack.broker_url)
    polls = 0
    try:
        store0, broker0, msgs0 = redis_counters(stack.store_url), redis_counters(stack.broker_url), tap.snapshot()
        enqueue_started = time.time()
        for first in range(0, len(jobs), 500):
            batch = jobs[first : first + 500]
            requests = [make_request(j.prompt, priority=_priority(j), tenant=_tenant(j)) for j in batch]
            submitted = producer.submit_many(requests)
            now = time.time()
            for job, record in zip(batch, submitted, strict=True):
                job.enqueued, job.job_id = now, record.id
        enqueued = time.time()
        extra = during(stack, producer, jobs) if during else {}
        deadline = time.monotonic() + timeout
        complete = False
        while time.monotonic() < deadline:
            counts = stack.counts()
            polls += 1
            if sum(counts.get(s, 0) for s in FINAL) >= len(jobs):
                complete = True
                break
            if until is not None and until(stack):
                break
            if any(not w.alive() for w in stack.workers):
                raise RuntimeError("a worker exited")
            time.sleep(1.0)
        ended = time.time()
        store1, broker1, msgs1 = redis_counters(stack.store_url), redis_counters(stack.broker_url), tap.snapshot()
    finally:
        tap.close()
        stack.stop_workers()
    timeline = _sim_tasks(stack)
    by_seq = {job.seq: job for job in jobs}
    tasks = []
    for task_id, times in timeline.items():
        match = SEQ_RE.search(times["prompt"])
        if match and int(match.group(1)) in by_seq:
            tasks.append({**times, "id": task_id, "job": by_seq[int(match.group(1))]})
    ids = [job.job_id for job in jobs if job.job_id]
    records: dict[str, JobRecord] = {}
    for first in range(0, len(ids), 1000):
        for found in stack.jobs.get_many(ids[first : first + 1000]):
            if found is not None:
                records[found.id] = found
    return Trace(
        label=label,
        jobs=jobs,
        slots=slots,
        tasks=tasks,
        records=records,
        enqueue_started=enqueue_started,
        enqueued=enqueued,
        ended=ended,
        complete=complete,
        messages=msgs1 - msgs0,
        broker={k: broker1.get(k, 0.0) - broker0.get(k, 0.0) for k in broker1},
        store={k: store1.get(k, 0.0) - store0.get(k, 0.0) for k in store1},
        # count_by_status: one ZCARD per status, in one pipeline
        bench_store_commands=polls * len(JobStatus),
        extra=extra,
    )


def _tenant(job: Job) -> str | None:
    return None if job.tenant == "default" else job.tenant


def _priority(job: Job) -> int | None:
    return None if job.priority == 5 else job.priority


def _jobs(label: str, count: int, start: int = 0, priority: int = 5, tenant: str = "default") -> list[Job]:
    return [
        Job(
            seq=start + n,
            prompt=f"overload {label} #{start + n} p{priority} {tenant}",
            priority=priority,
            tenant=tenant,
        )
        for n in range(count)
    ]


# ---------------------------------------------------------------------- measures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def slot_measures(trace: Trace) -> dict[str, Any]:
    """Part A's figures from one trace (every job of the load enqueued at its start)."""
    done = [t for t in trace.tasks if t["started"] is not None and t["finished"] is not None]
    if not done:
        return {"created": 0}
    creates = sorted(t["created"] for t in trace.tasks)
    finishes = sorted(t["finished"] for t in done)
    renders = [t["finished"] - t["started"] for t in done]
    span = max(finishes) - min(creates)
    busy = sum(renders)
    slots = trace.slots
    refills = [creates[slots + k] - finishes[k] for k in range(min(len(creates) - slots, len(finishes)))]
    detect = []
    for task in done:
        job: Job = task["job"]
        record = trace.records.get(job.job_id)
        if record is not None and record.provider_done_at is not None:
            detect.append(record.provider_done_at.timestamp() - task["finished"])
    stored = [r.finished_at.timestamp() for r in trace.records.values() if r.finished_at is not None]
    return {
        "created": len(creates),
        "succeeded": sum(1 for r in trace.records.values() if r.status is JobStatus.SUCCEEDED),
        "peak_in_flight": _peak(trace.tasks),
        "utilisation": round(busy / (slots * span), 3),
        "refill_p50_s": round(percentile(refills, 0.5), 3) if refills else None,
        "refill_p95_s": round(percentile(refills, 0.95), 3) if refills else None,
        "refill_max_s": round(max(refills), 3) if refills else None,
        "refills": len(refills),
        "detect_p50_s": round(percentile(detect, 0.5), 3) if detect else None,
        "makespan_s": round(span, 1),
        "ideal_s": round(busy / slots, 1),
        "makespan_ratio": round(span / (busy / slots), 3),
        "mean_render_s": round(statistics.fmean(renders), 2),
        "end_to_end_s": round(max(stored) - trace.enqueue_started, 1) if stored else None,
    }


def _peak(tasks: list[dict[str, Any]]) -> int:
    events = []
    for task in tasks:
        events.append((task["created"], 1))
        if task["finished"] is not None:
            events.append((task["finished"], -1))
    peak = level = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        level += step
        peak = max(peak, level)
    return peak


def order_measures(trace: Trace, same_instant: float) -> dict[str, Any]:
    """Part B: within each (priority, tenant), jobs created more than `same_instant` s
    before a job of the class enqueued earlier (the enqueue order is the bench's)."""
    classes: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for task in trace.tasks:
        job: Job = task["job"]
        classes.setdefault((job.priority, job.tenant), []).append((job.seq, task["created"]))
    inverted = total = 0
    displacement = []
    for members in classes.values():
        members.sort()
        latest = float("-inf")
        for _, created in members:
            if created < latest - same_instant:
                inverted += 1
            latest = max(latest, created)
        total += len(members)
        create_rank = {seq: rank for rank, (seq, _) in enumerate(sorted(members, key=lambda m: m[1]))}
        displacement += [abs(create_rank[seq] - rank) for rank, (seq, _) in enumerate(members)]
    return {
        "jobs": total,
        "inversions": inverted,
        "inversion_fraction": round(inverted / total, 3) if total else None,
        "displacement_p95": percentile(displacement, 0.95) if displacement else None,
        "displacement_max": max(displacement) if displacement else None,
    }


def cost_measures(trace: Trace) -> dict[str, Any]:
    """Messages and Redis commands per job (per created job when the load did not finish)."""
    per = len(trace.jobs) if trace.complete else max(1, len(trace.tasks))
    messages = sum(trace.messages.values())
    pushes = trace.broker.get("lpush", 0.0) + trace.broker.get("rpush", 0.0)
    by_queue = {q.rsplit(".", 1)[-1]: round(n / per, 2) for q, n in sorted(trace.messages.items())}
    store = trace.store.get("commands", 0.0) - trace.bench_store_commands
    return {
        "jobs": len(trace.jobs),
        "complete": trace.complete,
        "created": len(trace.tasks),
        "seconds": round(trace.ended - trace.enqueue_started, 1),
        "broker_msgs_per_job": round(messages / per, 2),
        "msgs_by_queue_per_job": by_queue,
        "broker_pushes_commandstats": int(pushes),
        "broker_msgs_tapped": messages,
        "broker_cmds_per_job": round(trace.broker.get("commands", 0.0) / per, 1),
        "store_cmds_per_job": round(store / per, 1),
        "poll_steps_per_job": round(statistics.fmean(r.poll_seq for r in trace.records.values()), 2)
        if trace.records
        else None,
    }


def rolling_max(times: Sequence[float], window: float = 60.0) -> int:
    """The most events in any window of `window` seconds."""
    ordered = sorted(times)
    best = start = 0
    for end, moment in enumerate(ordered):
        while ordered[start] <= moment - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def share_measures(trace: Trace, window: int, weights: tuple[int, int]) -> dict[str, Any]:
    """Part E: tenant A's share in every `window` consecutive creates made while both
    tenants had jobs waiting: from the first create of the later tenant (before it, the
    free slots went to the only tenant waiting, as they should) until either had none left
    waiting."""
    first_create = {
        tenant: min((t["created"] for t in trace.tasks if t["job"].tenant == tenant), default=float("inf"))
        for tenant in ("A", "B")
    }
    both_waiting = max(trace.enqueued, *first_create.values())
    creates = [t for t in trace.created if t["created"] >= both_waiting]
    last_create = {
        tenant: max((t["created"] for t in trace.tasks if t["job"].tenant == tenant), default=0.0)
        for tenant in ("A", "B")
    }
    everything_created = {tenant: sum(1 for j in trace.jobs if j.tenant == tenant) for tenant in ("A", "B")}
    created_count = Counter(t["job"].tenant for t in trace.tasks)
    # a tenant whose jobs were not all created still had a backlog when the run stopped
    ends = [last_create[t] for t in ("A", "B") if created_count[t] >= everything_created[t]]
    cutoff = min(ends) if ends else float("inf")
    both = [t for t in creates if t["created"] < cutoff]
    target = weights[0] / (weights[0] + weights[1])
    worst_dev, worst_at = 0.0, -1
    shares = []
    for start in range(0, max(0, len(both) - window + 1)):
        share = sum(1 for t in both[start : start + window] if t["job"].tenant == "A") / window
        shares.append(share)
        if abs(share - target) > worst_dev:
            worst_dev, worst_at = abs(share - target), start
    overall = sum(1 for t in both if t["job"].tenant == "A") / len(both) if both else None
    return {
        "weights": f"{weights[0]}:{weights[1]}",
        "target_share_A": round(target, 3),
        "creates_measured": len(both),
        "windows": len(shares),
        "share_A_overall": round(overall, 3) if overall is not None else None,
        "share_A_min": round(min(shares), 3) if shares else None,
        "share_A_max": round(max(shares), 3) if shares else None,
        "worst_window_deviation_pts": round(100 * worst_dev, 1) if shares else None,
        "worst_window_start": worst_at,
        "order": order_measures(trace, 0.05),
    }


# -------------------------------------------------------------------------- parts


def _timeout(plan: Plan, jobs: int, slots: int, render: float, rpm: int | None = None) -> float:
    if plan.timeout is not None:
        return plan.timeout
    ideal = jobs / slots * render
    if rpm:
        ideal = max(ideal, jobs / rpm * 60)
    return 3 * ideal + 120


def part_ab(stack: BenchStack, plan: Plan) -> tuple[Trace, dict[str, Any]]:
    """One load for A and B."""
    jobs = _jobs("A", plan.jobs)
    trace = run_load(
        stack,
        plan,
        "A",
        jobs,
        slots=plan.slots,
        render=plan.render,
        timeout=_timeout(plan, plan.jobs, plan.slots, plan.render),
    )
    return trace, {**slot_measures(trace), "cost": cost_measures(trace)}


def part_c(stack: BenchStack, plan: Plan) -> list[dict[str, Any]]:
    """Each backlog size in turn, same quota and render time."""
    out = []
    for backlog in plan.c_backlogs:
        jobs = _jobs(f"C{backlog}", backlog)
        trace = run_load(
            stack,
            plan,
            f"C{backlog}",
            jobs,
            slots=plan.c_slots,
            render=plan.c_render,
            timeout=_timeout(plan, backlog, plan.c_slots, max(plan.c_render, 0.05 * plan.c_slots)),
        )
        out.append({"backlog": backlog, **cost_measures(trace), "utilisation": slot_measures(trace).get("utilisation")})
    return out


def part_d(stack: BenchStack, plan: Plan) -> dict[str, Any]:
    """Probes of priority 9 behind a priority-5 backlog, one at a time once the backlog
    is flowing: probe n goes in once slots + (n + 1) x max(2, slots / 2) creates were seen
    (slots refilled since the last probe), while most of the backlog still waits."""
    backlog = _jobs("D", plan.d_backlog)
    probes_done: list[dict[str, Any]] = []
    finished = threading.Event()

    def during(stack: BenchStack, producer: Any, jobs: list[Job]) -> dict[str, Any]:
        seq = plan.d_backlog
        for n in range(plan.d_probes):
            step = max(2, plan.slots // 2)
            wait_s = _timeout(plan, 2 * plan.slots, plan.slots, plan.render)
            _wait_creates(stack, plan.slots + step * (n + 1), timeout=wait_s)
            probe = Job(seq=seq + n, prompt=f"overload D probe #{seq + n} p9", priority=9)
            record = producer.submit(make_request(probe.prompt, priority=9))
            probe.enqueued, probe.job_id = time.time(), record.id
            jobs.append(probe)
            deadline = time.monotonic() + max(60.0, 20 * plan.render)
            while time.monotonic() < deadline:
                current = stack.jobs.get(record.id)
                if current is not None and current.provider_task_id:
                    break
                time.sleep(0.2)
            probes_done.append({"seq": probe.seq})
        finished.set()
        return {}

    trace = run_load(
        stack,
        plan,
        "D",
        backlog,
        slots=plan.slots,
        render=plan.render,
        timeout=_timeout(plan, plan.d_backlog, plan.slots, plan.render),
        during=during,
        until=lambda _: finished.is_set(),
    )
    creates = sorted(t["created"] for t in trace.tasks)
    finishes = sorted(t["finished"] for t in trace.tasks if t["finished"] is not None)
    rows = []
    for task in trace.tasks:
        job: Job = task["job"]
        if job.priority != 9:
            continue
        before = sum(1 for c in creates if job.enqueued < c < task["created"])
        releases = sum(1 for f in finishes if job.enqueued < f <= task["created"])
        rows.append(
            {
                "probe": job.seq,
                "creates_before_it": before,
                "slot_releases_before_it": releases,
                "wait_s": round(task["created"] - job.enqueued, 2),
            }
        )
    lost = plan.d_probes - len(rows)
    return {
        "backlog": plan.d_backlog,
        "probes": rows,
        "probes_not_created": lost,
        "order": order_measures(trace, plan.same_instant),
    }


def _wait_creates(stack: BenchStack, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while stack.sim_stats()["creates_total"] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} creates after {timeout:g} s")
        time.sleep(0.5)


def part_e(stack: BenchStack, plan: Plan) -> list[dict[str, Any]]:
    """Tenant A's jobs enqueued first, then B's; one load per weighting."""
    out = []
    for weights in plan.e_weights:
        jobs = _jobs("EA", plan.e_jobs, tenant="A") + _jobs("EB", plan.e_jobs, start=plan.e_jobs, tenant="B")
        total = len(jobs)

        def one_tenant_done(stack: BenchStack) -> bool:
            # prompts end in the tenant: "overload EA #12 p5 A"
            created = Counter(t["prompt"].rsplit(" ", 1)[-1] for t in _sim_tasks(stack).values())
            return any(created[tenant] >= plan.e_jobs for tenant in ("A", "B"))

        trace = run_load(
            stack,
            plan,
            f"E {weights[0]}:{weights[1]}",
            jobs,
            slots=plan.slots,
            render=plan.e_render,
            settings={"tenant_weights": json.dumps({"A": weights[0], "B": weights[1]})},
            timeout=_timeout(plan, total, plan.slots, plan.e_render),
            until=one_tenant_done,
        )
        out.append(share_measures(trace, plan.e_window, weights))
    return out


def part_f(stack: BenchStack, plan: Plan) -> list[dict[str, Any]]:
    """A create-rate quota tighter than the slots: each job count in turn."""
    out = []
    for count in plan.f_jobs:
        jobs = _jobs(f"F{count}", count)
        trace = run_load(
            stack,
            plan,
            f"F{count}",
            jobs,
            slots=plan.slots,
            render=plan.f_render,
            rpm=plan.f_rpm,
            timeout=_timeout(plan, count, plan.slots, plan.f_render, plan.f_rpm),
        )
        creates = sorted(t["created"] for t in trace.tasks)
        span = creates[-1] - creates[0] if len(creates) > 1 else 0.0
        out.append(
            {
                "jobs": count,
                "rpm_limit": plan.f_rpm,
                "max_creates_in_60s": rolling_max(creates),
                "creates_per_min_after_first_minute": round(
                    sum(1 for c in creates if c >= creates[0] + 60) / max(span - 60, 1e-9) * 60, 1
                )
                if span > 60
                else None,
                **cost_measures(trace),
            }
        )
    return out


# -------------------------------------------------------------------------- report


def run(stack: BenchStack, quick: bool, options: argparse.Namespace | None = None) -> dict[str, Any]:
    """Run the selected parts; one table row per figure, next to its target."""
    plan = Plan.from_options(options, quick)
    rows: list[dict[str, Any]] = []
    parts: dict[str, Any] = {}
    notes: list[str] = []
    skipped: dict[str, str] = {}
    for part in plan.parts:
        missing = missing_features(part)
        if missing:
            skipped[part] = f"needs {', '.join(missing)}: not in this code yet (issue 15)"
    if "A" in plan.parts or "B" in plan.parts:
        trace, measures = part_ab(stack, plan)
        case = f"{plan.jobs} jobs, {plan.slots} slots, {plan.render:g} s renders"
        if "A" in plan.parts:
            parts["A"] = measures
            rows += _rows_a(case, measures)
        if "B" in plan.parts:
            parts["B"] = order_measures(trace, plan.same_instant)
            # the same with a loose tolerance: concurrent creates of one moment land in any order
            parts["B"]["within_1s"] = order_measures(trace, 1.0)
            rows += _rows_b(case, parts["B"], plan.same_instant)
    if "C" in plan.parts:
        parts["C"] = part_c(stack, plan)
        rows += _rows_c(plan, parts["C"])
    if "D" in plan.parts and "D" not in skipped:
        parts["D"] = part_d(stack, plan)
        rows += _rows_d(plan, parts["D"])
    if "E" in plan.parts and "E" not in skipped:
        parts["E"] = part_e(stack, plan)
        rows += _rows_e(plan, parts["E"])
    if "F" in plan.parts:
        parts["F"] = part_f(stack, plan)
        rows += _rows_f(plan, parts["F"])
    for part, why in skipped.items():
        rows.append({"part": part, "case": "skipped", "metric": why})
        notes.append(f"part {part} skipped: {why}")
    notes += [
        "measured at the provider (GET /_sim/tasks): the simulator never queues, so a create starts its render",
        f"render times uniform over mean +-20 %; fleet: 1 worker node, {plan.pool}({plan.concurrency}), all queues; "
        "poll schedule at its defaults (cold, then learned after 10 renders)",
        "refill = the k-th task finish at the provider -> the (slots + k)-th create there; it includes noticing the "
        "finish (detect_p50_s: finish -> the worker saw it)",
        "broker messages = LPUSH/RPUSH on the broker's queues (keyspace notifications, per queue); "
        "job-store commands exclude the bench's own status polls",
    ]
    return {"rows": rows, "parts": parts, "plan": vars(plan), "skipped": skipped, "notes": notes}


def _met(ok: bool | None) -> str:
    return "" if ok is None else ("yes" if ok else "no")


def _rows_a(case: str, m: dict[str, Any]) -> list[dict[str, Any]]:
    cost = m["cost"]
    return [
        {
            "part": "A",
            "case": case,
            "metric": "slot utilisation",
            "value": m.get("utilisation"),
            "target": ">= 0.97",
            "met": _met(m.get("utilisation") is not None and m["utilisation"] >= 0.97),
        },
        {
            "part": "A",
            "case": case,
            "metric": "refill p50 (s)",
            "value": m.get("refill_p50_s"),
            "target": "< 0.2",
            "met": _met(m.get("refill_p50_s") is not None and m["refill_p50_s"] < 0.2),
        },
        {
            "part": "A",
            "case": case,
            "metric": "refill p95 (s)",
            "value": m.get("refill_p95_s"),
            "target": "< 1",
            "met": _met(m.get("refill_p95_s") is not None and m["refill_p95_s"] < 1),
        },
        {
            "part": "A",
            "case": case,
            "metric": "makespan / ideal",
            "value": m.get("makespan_ratio"),
            "target": "<= 1.05",
            "met": _met(m.get("makespan_ratio") is not None and m["makespan_ratio"] <= 1.05),
            "detail": f"{m.get('makespan_s')} s vs {m.get('ideal_s')} s; peak in flight {m.get('peak_in_flight')}; "
            f"detect p50 {m.get('detect_p50_s')} s",
        },
        {
            "part": "A",
            "case": case,
            "metric": "broker messages / job",
            "value": cost["broker_msgs_per_job"],
            "detail": f"by queue {cost['msgs_by_queue_per_job']}; store cmds/job {cost['store_cmds_per_job']}",
        },
    ]


def _rows_b(case: str, m: dict[str, Any], same_instant: float) -> list[dict[str, Any]]:
    return [
        {
            "part": "B",
            "case": case,
            "metric": f"inversions (> {same_instant * 1000:g} ms)",
            "value": m["inversion_fraction"],
            "target": "0",
            "met": _met(m["inversions"] == 0),
            "detail": f"{m['inversions']} of {m['jobs']} jobs; rank displacement p95 {m['displacement_p95']}, "
            f"max {m['displacement_max']}; counting creates within 1 s as one instant: "
            f"{m['within_1s']['inversions']} inversions",
        },
    ]


def _rows_c(plan: Plan, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in runs:
        rows.append(
            {
                "part": "C",
                "case": f"backlog {r['backlog']}, {plan.c_slots} slots, {plan.c_render:g} s renders",
                "metric": "broker msgs / broker cmds / store cmds per job",
                "value": f"{r['broker_msgs_per_job']} / {r['broker_cmds_per_job']} / {r['store_cmds_per_job']}",
                "detail": f"{'complete' if r['complete'] else 'TIMED OUT, per created job'} in {r['seconds']} s; "
                f"by queue {r['msgs_by_queue_per_job']}; utilisation {r['utilisation']}",
            }
        )
    if len(runs) >= 2:
        for key, name in (
            ("broker_msgs_per_job", "broker msgs"),
            ("broker_cmds_per_job", "broker cmds"),
            ("store_cmds_per_job", "store cmds"),
        ):
            values = [r[key] for r in runs]
            spread = max(values) / min(values) - 1 if min(values) > 0 else float("inf")
            rows.append(
                {
                    "part": "C",
                    "case": "largest vs smallest backlog",
                    "metric": f"{name} per job, spread",
                    "value": round(spread, 3),
                    "target": "<= 0.10",
                    "met": _met(spread <= TOLERANCE_RATIO),
                }
            )
    return rows


def _rows_d(plan: Plan, m: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for probe in m["probes"]:
        rows.append(
            {
                "part": "D",
                "case": f"priority 9 behind {m['backlog']} priority 5, {plan.slots} slots",
                "metric": "creates before it",
                "value": probe["creates_before_it"],
                "target": "<= 1 (within 2 releases)",
                "met": _met(probe["creates_before_it"] <= 1),
                "detail": f"slot releases before it {probe['slot_releases_before_it']}; waited {probe['wait_s']} s",
            }
        )
    if m["probes_not_created"]:
        rows.append(
            {"part": "D", "case": "", "metric": "probes never created", "value": m["probes_not_created"], "met": "no"}
        )
    return rows


def _rows_e(plan: Plan, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "part": "E",
            "case": f"weights A:B {r['weights']}, {plan.e_jobs} jobs each, {plan.slots} slots",
            "metric": f"worst {plan.e_window}-create window, points off",
            "value": r["worst_window_deviation_pts"],
            "target": "<= 5",
            "met": _met(r["worst_window_deviation_pts"] is not None and r["worst_window_deviation_pts"] <= 5),
            "detail": f"A's share: target {r['target_share_A']}, overall {r['share_A_overall']}, windows "
            f"{r['share_A_min']}-{r['share_A_max']} over {r['windows']} windows",
        }
        for r in runs
    ]


def _rows_f(plan: Plan, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for r in runs:
        case = f"{r['jobs']} jobs, {plan.f_rpm} creates/min, {plan.slots} slots, {plan.f_render:g} s renders"
        rows.append(
            {
                "part": "F",
                "case": case,
                "metric": "max creates in a rolling 60 s",
                "value": r["max_creates_in_60s"],
                "target": f"<= {plan.f_rpm}",
                "met": _met(r["max_creates_in_60s"] <= plan.f_rpm),
                "detail": f"creates/min after the first minute {r['creates_per_min_after_first_minute']}",
            }
        )
        rows.append(
            {
                "part": "F",
                "case": case,
                "metric": "broker messages / job",
                "value": r["broker_msgs_per_job"],
                "detail": f"by queue {r['msgs_by_queue_per_job']}; {r['seconds']} s",
            }
        )
    if len(runs) >= 2:
        values = [r["broker_msgs_per_job"] for r in runs]
        spread = max(values) / min(values) - 1 if min(values) > 0 else float("inf")
        rows.append(
            {
                "part": "F",
                "case": "most vs fewest jobs",
                "metric": "broker messages per job, spread",
                "value": round(spread, 3),
                "target": "<= 0.10",
                "met": _met(spread <= TOLERANCE_RATIO),
            }
        )
    return rows
