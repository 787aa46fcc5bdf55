"""Job statistics kept with every status change, and their Prometheus export."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import fakeredis
from prometheus_client import CollectorRegistry

from producer import Settings, VideoQueue, VideoRequest
from tests.unit.helpers import walk_to
from videoqueue.job import JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.metrics import JobMetricsCollector


def registry_for(client: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(JobMetricsCollector(client))
    return registry


def test_jobs_costs_and_durations_are_exported_for_the_fleet() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(budget_daily_usd=Decimal(10)), store=JobStore(client))
    jobs = [vq.prepare(VideoRequest(prompt=f"p{i}")).record for i in range(3)]
    veo = vq.prepare(VideoRequest(prompt="v", provider="veo")).record
    vq.store.create_many([*jobs, veo], budget=vq.budget)
    done, failed, _running = jobs
    now = done.created_at
    walk_to(vq.store, done.id, JobStatus.RUNNING, submitted_at=now)
    vq.store.transition(
        done.id,
        {JobStatus.RUNNING},
        JobStatus.DOWNLOADING,
        provider_done_at=now + timedelta(seconds=45),
        cost_usd=Decimal("0.2"),
        billed_units=1,
    )
    vq.store.transition(
        done.id,
        {JobStatus.DOWNLOADING},
        JobStatus.SUCCEEDED,
        finished_at=now + timedelta(seconds=46.5),
        output_uri="file:///v.mp4",
    )
    vq.store.transition(done.id, {JobStatus.DOWNLOADING}, JobStatus.SUCCEEDED)  # a duplicate: no effect
    vq.store.transition(failed.id, {JobStatus.QUEUED}, JobStatus.FAILED)

    registry = registry_for(client)

    def m(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    seedance = {"provider": "byteplus", "model": "seedance-1-5-pro-251215"}
    assert m("videoqueue_jobs", status="succeeded", **seedance) == 1
    assert m("videoqueue_jobs", status="failed", **seedance) == 1
    assert m("videoqueue_jobs", status="queued", **seedance) == 1
    assert m("videoqueue_jobs", status="queued", provider="veo", model="veo-3.1-fast-generate-001") == 1
    assert m("videoqueue_jobs", status="running", **seedance) == 0
    assert m("videoqueue_jobs_active") == 2
    assert m("videoqueue_cost_usd_total", **seedance) == 0.2
    assert m("videoqueue_cost_estimate_usd_total", **seedance) == 0.249163
    assert m("videoqueue_cost_settled_jobs_total", **seedance) == 1
    assert m("videoqueue_provider_render_seconds_bucket", le="30.0", **seedance) == 0
    assert m("videoqueue_provider_render_seconds_bucket", le="60.0", **seedance) == 1
    assert m("videoqueue_provider_render_seconds_sum", **seedance) == 45
    assert m("videoqueue_store_seconds_bucket", le="1.0", **seedance) == 0
    assert m("videoqueue_store_seconds_bucket", le="2.0", **seedance) == 1
    assert m("videoqueue_store_seconds_count", **seedance) == 1
    day = f"day:{done.created_at.date().isoformat()}"
    assert round(m("videoqueue_budget_usd", budget=day, kind="reserved") or 0, 6) == round(0.249163 + 0.40, 6)
    assert m("videoqueue_budget_usd", budget=day, kind="spent") == 0.2
