"""`videoqueue metrics` serves job-level Prometheus metrics read from the shared Redis."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer import VideoRequest
from simulator.stack import free_port, http_ok, wait_until
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_the_exporter_reports_jobs_costs_and_times(local_stack: Stack) -> None:
    local_stack.start_worker()
    vq = local_stack.queue()
    jobs = vq.submit_many(
        [VideoRequest(prompt="m1"), VideoRequest(prompt="m2", provider="veo"), VideoRequest(prompt="x [sim:fail]")]
    )
    vq.wait([j.id for j in jobs], timeout=60)

    port = free_port()
    cli = str(Path(sys.executable).with_name("videoqueue"))
    proc = subprocess.Popen(
        [cli, "metrics", "--port", str(port), "--host", "127.0.0.1"],
        env=local_stack.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: http_ok(url), 20, "metrics exporter")
        text = httpx.get(url).text
    finally:
        proc.terminate()
        proc.wait(10)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    seedance = (("model", "seedance-1-5-pro-251215"), ("provider", "byteplus"))
    veo = (("model", "veo-3.1-fast-generate-001"), ("provider", "veo"))
    assert samples[("videoqueue_jobs", (*seedance, ("status", "succeeded")))] == 1
    assert samples[("videoqueue_jobs", (*seedance, ("status", "failed")))] == 1
    assert samples[("videoqueue_jobs", (*veo, ("status", "succeeded")))] == 1
    assert samples[("videoqueue_jobs_active", ())] == 0
    assert samples[("videoqueue_cost_usd_total", seedance)] == 0.249163
    assert samples[("videoqueue_cost_usd_total", veo)] == 0.4
    assert samples[("videoqueue_provider_render_seconds_count", seedance)] == 1
    assert samples[("videoqueue_store_seconds_count", veo)] == 1
    assert "python_gc_objects_collected_total" in text  # the standard process metrics too
