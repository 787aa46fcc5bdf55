"""Flower shows the fleet's tasks live, each with the job id as its argument and where
the job stands as its result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from producer import VideoRequest
from simulator.stack import ManagedProcess, free_port, http_ok, wait_until
from tests.integration.conftest import Stack
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def test_flower_lists_tasks_by_job_id_with_the_jobs_status(local_stack: Stack) -> None:
    port = free_port()
    celery = str(Path(sys.executable).with_name("celery"))
    flower = ManagedProcess(
        "flower",
        [celery, "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:flower-pass"],
        local_stack.env(),
        local_stack.log_dir / "flower-test.log",
    )
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthcheck"), 30, "flower")
        local_stack.start_worker()
        vq = local_stack.queue()
        job = vq.wait([vq.submit(VideoRequest(prompt="watched by flower")).id], timeout=60)[0]

        def tasks() -> dict[str, dict[str, object]]:
            response = httpx.get(f"http://127.0.0.1:{port}/api/tasks", auth=("ops", "flower-pass"), timeout=5)
            data: dict[str, dict[str, object]] = response.json()
            return data

        def store_seen() -> bool:
            return any(t.get("name") == "videoqueue.store" and t.get("result") for t in tasks().values())

        wait_for(store_seen, 30, "the store task in flower")
        seen = tasks().values()
        assert {t["name"] for t in seen} >= {"videoqueue.submit", "videoqueue.poll", "videoqueue.store"}
        for task in seen:
            assert job.id in str(task["args"])
            assert "watched by flower" not in json.dumps(task)
        store = next(t for t in seen if t["name"] == "videoqueue.store")
        assert "'status': 'succeeded'" in str(store["result"])
        assert str(job.provider_task_id) in str(store["result"])
    finally:
        flower.stop()
