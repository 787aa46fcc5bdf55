"""A day in an hour (issue 18): a compressed day of jobs through one worker host, with
retention set to minutes so that finished records expire while the run goes on.

A producer thread enqueues `--day-jobs` jobs (200,000) at a steady `--day-rate` (35
jobs/s: 1 h 35 min of enqueueing, then a minute or two to drain), the simulator renders
each in `--day-render` seconds (uniform 1-3 s), and one worker host as docker-compose.yml
deploys it (`--day-fleet split`: a `worker` node, threads(32), on the submit and poll
queues and a `store-worker` node, prefork(2), on the store queue; `prefork`: one
prefork(2) node on every queue) stores into a local folder, with `JOB_RETENTION_S` =
`--day-retention` (300 s). What else outlives a record is compressed with it: the event
stream's cap, `EVENTS_MAXLEN` = `--day-events-maxlen` (50,000 entries, about 10,000 jobs;
at its default 1,000,000 it would grow for the first 200,000), and the task claim's life
after the end (the deadline span plus `FOLLOW_PAST_DEADLINE_S` plus 10 minutes: 50 h at
the defaults), through `JOB_DEADLINE_S` = `FOLLOW_PAST_DEADLINE_S` = `--day-deadline`
(600 s: 30 minutes). The rate: a 15,000-job run at 40 jobs/s on this code kept up (at
most 158 jobs queued or in flight) with the workers at 1.1 cores and the host at 70-99 %;
35 leaves room, so what is measured is a steady state, not a growing backlog (queued
records do not expire).

Every `--day-sample` seconds (30) a sample goes into the JSON: the job store's and the
broker's `used_memory`, commands per second on each Redis (`INFO commandstats` deltas, the
busiest commands by name), Redis CPU, the worker processes' CPU (cores, psutil over the
nodes and their pool children) and RSS, the host's CPU, jobs by status (the fleet's
counters, keys.STATS_JOBS: records expire, the counters stay) and the backlog (queued jobs,
messages waiting on the broker, unacknowledged ones: countdowns held by a worker).

At the end: the slope of the job store's memory over the first part of the enqueueing
(the first retention period, at most a third of it) and over its last third, and their
ratio (levelled off: the last slope at most a tenth of the first), with whether the host
kept up meanwhile (unfinished records do not expire, so a backlog grows the memory whatever
the retention: if it did not, lower `--day-rate` or give the store node more processes,
`--day-store-concurrency`); that every job
succeeded, from the counters and from the ledger's report by status; the ledger's total
(`VideoQueue.costs`, what `videoqueue costs` prints) against the sum of the ledger entries
of every manifest in the storage folder, and the difference; and a census of the job
store's keys by pattern (count, sampled MEMORY USAGE), to show what does not expire.

Videos are deleted from the folder once their manifest is there (`--day-keep-videos` keeps
them: 200,000 x 33 KB is 6.6 GB); the manifests stay, for the final check.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.day_measure import KEPT_UP_S, LEVEL_RATIO, Sampler, final_checks, key_census, memory_slopes
from bench.harness import BenchStack
from producer import VideoQueue, VideoRequest
from videoqueue import namespace
from videoqueue.settings import Settings

TABLE_ROWS = 24  # samples printed (all of them are in the JSON)


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class Plan:
    """The run's sizes, from the options (quick or full defaults)."""

    jobs: int
    rate: float
    retention_s: int
    sample_s: float
    render: tuple[float, float]
    fleet: str
    store_concurrency: int
    timeout_s: float
    keep_videos: bool
    events_maxlen: int
    deadline_s: float

    @classmethod
    def from_options(cls, options: argparse.Namespace | None, quick: bool) -> Plan:
        """Options given win over the (quick or full) defaults."""
        opts = vars(options) if options is not None else {}

        def pick(name: str, full: Any, small: Any) -> Any:
            value = opts.get(name)
            return value if value is not None else (small if quick else full)

        jobs, rate = int(pick("day_jobs", 200_000, 200)), float(pick("day_rate", 35.0, 10.0))
        low, _, high = str(pick("day_render", "1,3", "1,3")).partition(",")
        timeout = opts.get("day_timeout")
        return cls(
            jobs=jobs,
            rate=rate,
            retention_s=int(pick("day_retention", 300, 5)),
            sample_s=float(pick("day_sample", 30.0, 1.0)),
            render=(float(low), float(high or low)),
            fleet=str(pick("day_fleet", "split", "split")),
            store_concurrency=int(pick("day_store_concurrency", 2, 2)),
            timeout_s=float(timeout) if timeout is not None else jobs / rate + (120 if quick else 1800),
            keep_videos=bool(opts.get("day_keep_videos")),
            events_maxlen=int(pick("day_events_maxlen", 50_000, 1_000)),
            deadline_s=float(pick("day_deadline", 600.0, 120.0)),
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The day scenario's options (`python -m bench day --day-jobs 5000`)."""
    group = parser.add_argument_group("day options")
    group.add_argument("--day-jobs", type=int, help="jobs in the day (default 200000; quick 200)")
    group.add_argument("--day-rate", type=float, help="jobs/s the producer enqueues (default 35; quick 10)")
    group.add_argument("--day-retention", type=int, help="JOB_RETENTION_S of the workers (default 300; quick 5)")
    group.add_argument("--day-sample", type=float, help="seconds between samples (default 30; quick 1)")
    group.add_argument("--day-render", help="render seconds MIN,MAX, uniform (default 1,3)")
    group.add_argument("--day-fleet", choices=["split", "prefork"], help="worker host layout (default split)")
    group.add_argument("--day-store-concurrency", type=int, help="split: store node's prefork processes (default 2)")
    group.add_argument("--day-timeout", type=float, help="seconds the run may take (default jobs/rate + 1800)")
    group.add_argument("--day-keep-videos", action="store_true", help="keep the stored videos (6.6 GB at full size)")
    group.add_argument(
        "--day-events-maxlen", type=int, help="EVENTS_MAXLEN, the event stream's cap (default 50000; quick 1000)"
    )
    group.add_argument(
        "--day-deadline",
        type=float,
        help="JOB_DEADLINE_S and FOLLOW_PAST_DEADLINE_S, which bound the task claim's life (default 600; quick 120)",
    )


def check_options(options: argparse.Namespace | None, quick: bool) -> None:
    """Refuse bad sizes before anything starts."""
    plan = Plan.from_options(options, quick)
    if plan.jobs < 1 or plan.rate <= 0 or plan.sample_s <= 0 or plan.retention_s < 0 or plan.store_concurrency < 1:
        raise ValueError(
            "--day-jobs, --day-rate, --day-sample and --day-store-concurrency must be positive, "
            "--day-retention at least 0"
        )
    if plan.events_maxlen < 1000 or plan.deadline_s < 60:
        raise ValueError("--day-events-maxlen at least 1000 (EVENTS_MAXLEN's bound), --day-deadline at least 60")
    if not 0 <= plan.render[0] <= plan.render[1]:
        raise ValueError("--day-render: MIN,MAX with 0 <= MIN <= MAX")


# ----------------------------------------------------------------------------- the run


def run(stack: BenchStack, quick: bool, options: argparse.Namespace | None) -> dict[str, Any]:
    """Enqueue at a steady rate while sampling; then check every job and the ledger."""
    plan = Plan.from_options(options, quick)
    low, high = plan.render
    stack.sim_config(latency=low, latency_jitter=high - low)
    # The day is compressed, and so is what bounds the keys that outlive a record: the event
    # stream's cap (at 1,000,000 entries it would grow for the first 200,000 jobs) and the
    # task claim's life after the end (the deadline span plus FOLLOW_PAST_DEADLINE_S plus
    # 10 minutes: 50 h at the defaults).
    env = stack.env(
        job_retention_s=plan.retention_s,
        events_maxlen=plan.events_maxlen,
        job_deadline_s=plan.deadline_s,
        follow_past_deadline_s=plan.deadline_s,
    )
    _start_fleet(stack, plan, env)
    producer = stack.producer(env)
    sampler = Sampler(stack)
    feeder = Feeder(producer, plan.jobs, plan.rate)
    started = time.monotonic()
    feeder.start()
    samples: list[dict[str, Any]] = []
    enqueued_at: float | None = None
    next_sample = started + plan.sample_s
    while True:
        time.sleep(min(1.0, max(0.0, next_sample - time.monotonic())))
        feeder.raise_error()
        dead = [w.name for w in stack.workers if not w.alive()]
        if dead:
            raise RuntimeError(f"workers exited: {dead}")
        if enqueued_at is None and not feeder.is_alive():
            enqueued_at = time.monotonic() - started
        done = enqueued_at is not None and sampler.final_jobs() >= plan.jobs
        if done or time.monotonic() >= next_sample:
            samples.append(sampler.take(time.monotonic() - started, feeder.sent))
            next_sample += plan.sample_s
            if not plan.keep_videos:
                _drop_stored_videos(stack.out)
        if done:
            break
        if time.monotonic() - started > plan.timeout_s:
            raise TimeoutError(f"not all {plan.jobs} jobs final after {plan.timeout_s:g} s: {sampler.job_counts()}")
    seconds = time.monotonic() - started
    census = key_census(stack.jobs.redis)
    checks = final_checks(stack, producer, plan.jobs)
    sim = stack.sim_stats()
    stack.stop_workers()
    memory = memory_slopes(samples, enqueued_at or seconds, plan.retention_s, plan.rate)
    totals = _per_job(sampler, plan.jobs, seconds)
    totals["provider_status_calls_per_job"] = round(sim["gets_total"] / plan.jobs, 2)
    return {
        "plan": {**plan.__dict__, "render": list(plan.render)},
        "retention_in_code": "job_retention_s" in Settings.model_fields,
        "enqueue_s": round(enqueued_at or seconds, 1),
        "run_s": round(seconds, 1),
        "enqueue_lag_max_s": round(feeder.lag_max_s, 2),
        "memory": memory,
        "checks": checks,
        "per_job": totals,
        "census": census,
        "samples": samples,
        "rows": _table(samples),
        "notes": _notes(plan, memory, checks, totals, enqueued_at or seconds, seconds),
    }


def _start_fleet(stack: BenchStack, plan: Plan, env: dict[str, str]) -> None:
    if plan.fleet == "prefork":
        stack.start_workers(1, concurrency=2, pool="prefork", env=env)
        return
    submit_poll = f"{namespace.queue('submit')},{namespace.queue('poll')}"
    stack.start_workers(1, concurrency=32, pool="threads", env=env, extra_args=["-Q", submit_poll])
    store = ["-Q", namespace.queue("store")]
    stack.start_workers(1, concurrency=plan.store_concurrency, pool="prefork", env=env, extra_args=store)


class Feeder(threading.Thread):
    """Submits `jobs` jobs at `rate` jobs/s: each moment, the jobs due by then (at most 500
    per call), so a slow call is caught up at once and the rate holds on average."""

    def __init__(self, producer: VideoQueue, jobs: int, rate: float) -> None:
        super().__init__(name="day-feeder", daemon=True)
        self.producer, self.jobs, self.rate = producer, jobs, rate
        self.sent = 0
        self.lag_max_s = 0.0  # how far behind its schedule it ever was
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            started = time.monotonic()
            while self.sent < self.jobs:
                elapsed = time.monotonic() - started
                due = min(self.jobs, int(elapsed * self.rate) + 1)
                if due <= self.sent:
                    time.sleep(min(0.2, self.sent / self.rate - elapsed))  # until the next is due
                    continue
                self.lag_max_s = max(self.lag_max_s, elapsed - self.sent / self.rate)
                count = min(due - self.sent, 500)
                self.producer.submit_many([VideoRequest(prompt=f"day {self.sent + i}") for i in range(count)])
                self.sent += count
        except BaseException as exc:  # handed to the main thread
            self.error = exc

    def raise_error(self) -> None:
        """Raise, in the caller's thread, what stopped the feeder."""
        if self.error is not None:
            raise RuntimeError(f"the producer failed after {self.sent} jobs: {self.error!r}") from self.error


def _drop_stored_videos(folder: Path) -> None:
    """Delete each video whose manifest is written (the job's last write to storage)."""
    try:
        names = {entry.name for entry in os.scandir(folder)}
    except FileNotFoundError:
        return
    for name in names:
        if name.endswith(".mp4") and f"{name[:-4]}.json" in names:
            (folder / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- results


def _per_job(sampler: Sampler, jobs: int, seconds: float) -> dict[str, Any]:
    """Whole-run costs per job, from the first read to the last sample."""
    first, last = sampler.first, sampler.last

    def delta(server: str, key: str) -> float:
        return float(last[server].get(key, 0.0) - first[server].get(key, 0.0))

    return {
        "store_cmds_per_job": round(delta("store", "commands") / jobs, 1),
        "broker_cmds_per_job": round(delta("broker", "commands") / jobs, 1),
        "worker_cpu_ms_per_job": round((last["worker_cpu_s"] - first["worker_cpu_s"]) / jobs * 1000, 2),
        "redis_cpu_ms_per_job": round(
            (delta("store", "cpu_seconds") + delta("broker", "cpu_seconds")) / jobs * 1000, 2
        ),
        "jobs_per_s_overall": round(jobs / seconds, 2),
    }


def _table(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At most TABLE_ROWS samples, evenly spread, the last one included."""
    step = max(1, -(-len(samples) // TABLE_ROWS))
    chosen = samples[::step]
    if samples and chosen[-1] is not samples[-1]:
        chosen.append(samples[-1])
    return [
        {
            "t_s": s["t_s"],
            "submitted": s["submitted"],
            "queued": s["queued"],
            "active": s["active"],
            "succeeded": s["succeeded"],
            "failed": s["failed"],
            "store_mib": round(s["store_used_memory"] / 2**20, 2),
            "broker_mib": round(s["broker_used_memory"] / 2**20, 2),
            "store_cmd/s": s["store_cmds_per_s"],
            "broker_cmd/s": s["broker_cmds_per_s"],
            "redis_cores": s["redis_cpu_cores"],
            "worker_cores": s["worker_cpu_cores"],
            "worker_rss_mib": s["worker_rss_mib"],
            "host_cpu_%": s["host_cpu_pct"],
            "unacked": s["broker_unacked"],
        }
        for s in chosen
    ]


def _notes(
    plan: Plan,
    memory: dict[str, Any],
    checks: dict[str, Any],
    per_job: dict[str, Any],
    enqueue_s: float,
    seconds: float,
) -> list[str]:
    notes = [
        f"{plan.jobs:,} jobs at {plan.rate:g} jobs/s (enqueued in {enqueue_s:,.0f} s, "
        f"all final after {seconds:,.0f} s), "
        f"renders {plan.render[0]:g}-{plan.render[1]:g} s, JOB_RETENTION_S={plan.retention_s}, "
        f"EVENTS_MAXLEN={plan.events_maxlen}, JOB_DEADLINE_S=FOLLOW_PAST_DEADLINE_S={plan.deadline_s:g}, "
        f"fleet {plan.fleet}",
        f"job-store memory slope: first {memory['slope_first_bytes_per_s']} B/s "
        f"({memory['bytes_kept_per_job_first']} B per job), last third {memory['slope_last_bytes_per_s']} B/s: "
        f"ratio {memory['ratio_last_to_first']} (levelled off at <= {LEVEL_RATIO}: {memory['levelled_off']}); "
        f"jobs queued or in flight in the last third at most {memory['unfinished_max_last']} "
        f"(host kept up, <= {KEPT_UP_S} s of jobs: {memory['kept_up']})",
        f"every job succeeded: {checks['every_job_succeeded']} (counters {checks['succeeded_by_counters']}, "
        f"ledger {checks['succeeded_by_ledger']}, manifests {checks['succeeded_by_manifests']} of {checks['jobs']}; "
        f"other statuses {checks['other_statuses_by_counters'] or 'none'})",
        f"ledger ${checks['ledger_usd']} ({checks['ledger_jobs']} jobs) vs manifests ${checks['manifests_usd']} "
        f"({checks['manifests_with_ledger_entry']} entries in {checks['manifests']} manifests): "
        f"difference ${checks['difference_usd']}",
        f"per job: {per_job['store_cmds_per_job']} job-store and {per_job['broker_cmds_per_job']} broker commands, "
        f"{per_job['worker_cpu_ms_per_job']} ms worker CPU, {per_job['redis_cpu_ms_per_job']} ms Redis CPU, "
        f"{per_job['provider_status_calls_per_job']} status calls",
    ]
    if "job_retention_s" not in Settings.model_fields:
        notes.append("JOB_RETENTION_S is not a setting of this code: records never expire, memory cannot level off")
    return notes
