"""The overload benchmark's measures (bench/overload.py), on made-up provider timelines:
what each figure of issue 15 counts, without starting anything."""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

import pytest

from bench.overload import (
    Job,
    Plan,
    Trace,
    check_options,
    make_request,
    missing_features,
    order_measures,
    rolling_max,
    share_measures,
    slot_measures,
)
from producer import VideoRequest


def trace(tasks: list[tuple[Job, float, float]], slots: int, enqueued: float = 0.0) -> Trace:
    """A trace of tasks (job, created, finished): renders start at their create."""
    timeline: list[dict[str, Any]] = [
        {"job": job, "created": created, "started": created, "finished": finished, "prompt": job.prompt}
        for job, created, finished in tasks
    ]
    return Trace(
        label="t",
        jobs=[job for job, _, _ in tasks],
        slots=slots,
        tasks=timeline,
        records={},
        enqueue_started=0.0,
        enqueued=enqueued,
        ended=0.0,
        complete=True,
        messages=Counter(),
        broker={},
        store={},
        bench_store_commands=0.0,
    )


def test_full_slots_refilled_at_once_are_fully_used() -> None:
    # 2 slots, 4 renders of 10 s, each next create 0.1 s after a finish
    jobs = [Job(seq=n, prompt=f"#{n}") for n in range(4)]
    m = slot_measures(trace([(jobs[0], 0, 10), (jobs[1], 0, 10), (jobs[2], 10.1, 20.1), (jobs[3], 10.1, 20.1)], 2))
    assert m["refills"] == 2 and m["refill_p50_s"] == pytest.approx(0.1)
    assert m["ideal_s"] == 20.0 and m["makespan_s"] == pytest.approx(20.1)
    assert m["utilisation"] == pytest.approx(40 / (2 * 20.1), abs=1e-3)
    assert m["peak_in_flight"] == 2


def test_a_slot_left_idle_shows_in_utilisation_and_refill() -> None:
    jobs = [Job(seq=n, prompt=f"#{n}") for n in range(3)]
    m = slot_measures(trace([(jobs[0], 0, 10), (jobs[1], 0, 10), (jobs[2], 40, 50)], 2))
    assert m["refill_p50_s"] == pytest.approx(30.0)  # the first finish (10) -> the third create (40)
    assert m["utilisation"] == pytest.approx(30 / (2 * 50))
    assert m["makespan_ratio"] == pytest.approx(50 / 15, abs=1e-3)


def test_inversions_count_jobs_created_before_an_earlier_one_of_their_class() -> None:
    a = [Job(seq=n, prompt=f"#{n}") for n in range(4)]
    other = Job(seq=4, prompt="#4", tenant="B")
    # seq 2 is created 1 s before seq 1: an inversion; seq 3 only 0.02 s before seq 1: the
    # same instant; the tenant-B job, created first, is in a class of its own
    t = trace([(a[0], 0.0, 1), (a[1], 2.0, 3), (a[2], 1.0, 2), (a[3], 1.98, 3), (other, -1.0, 1)], 5)
    m = order_measures(t, 0.05)
    assert (m["jobs"], m["inversions"]) == (5, 1)
    assert order_measures(t, 0.01)["inversions"] == 2
    assert order_measures(t, 1.5)["inversions"] == 0


def test_rolling_max_counts_a_60_second_window() -> None:
    assert rolling_max([0, 10, 59.9, 60, 61]) == 4  # 0..59.9 and 10..61 hold 4 each
    assert rolling_max([]) == 0


def test_fair_share_windows_stop_when_a_tenant_runs_out() -> None:
    a = [Job(seq=n, prompt=f"#{n} A", tenant="A") for n in range(6)]
    b = [Job(seq=10 + n, prompt=f"#{10 + n} B", tenant="B") for n in range(2)]
    # A alone, then A, B, A, B, then only A left: windows of 2 from B's first create
    # (t=2) to before B's last one (t=4)
    order = [a[0], a[1], b[0], a[2], b[1], a[3], a[4], a[5]]
    t = trace([(job, float(i), float(i) + 5) for i, job in enumerate(order)], 2)
    m = share_measures(t, 2, (1, 1))
    assert m["creates_measured"] == 2
    assert (m["windows"], m["worst_window_deviation_pts"]) == (1, 0.0)


def test_parts_needing_issue_15_fields_are_refused_by_name_when_absent() -> None:
    options = argparse.Namespace(parts="A,D")
    if "priority" in VideoRequest.model_fields:
        check_options(options, quick=True)
        assert make_request("x", priority=9).priority == 9
        return
    assert missing_features("D") == ["priority (field of producer.VideoRequest)"]
    with pytest.raises(ValueError, match="part D needs priority"):
        check_options(options, quick=True)
    with pytest.raises(RuntimeError, match="no field 'priority'"):
        make_request("x", priority=9)
    assert make_request("x").prompt == "x"
    check_options(argparse.Namespace(parts="all"), quick=True)  # skipped with a note instead


def test_plan_options_win_over_the_defaults() -> None:
    plan = Plan.from_options(argparse.Namespace(parts="a,c", jobs=400, c_backlogs="5,50"), quick=False)
    assert (plan.parts, plan.jobs, plan.c_backlogs, plan.slots, plan.render) == ("AC", 400, [5, 50], 20, 30.0)
    with pytest.raises(ValueError, match="unknown part"):
        Plan.from_options(argparse.Namespace(parts="A,Z"), quick=False)
