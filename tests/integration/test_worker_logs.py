"""A real worker's log: one JSON object per line with LOG_FORMAT=json, the job id on every
line about a job (Celery's own "received"/"succeeded" lines included), no key anywhere."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from producer import VideoRequest
from tests.integration.conftest import SIM_KEY, Stack
from tests.integration.helpers import wait_for, wait_status
from videoqueue import namespace

pytestmark = pytest.mark.integration

# The text formats a line must not come out in when JSON was asked for: Celery's own and ours.
OTHER_FORMATS = re.compile(r"^(\[\d{4}-\d\d-\d\d |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ )")


def test_json_logs_carry_the_job_id_on_every_line_about_the_job(local_stack: Stack) -> None:
    worker = local_stack.start_worker(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="a fox in json"))
    wait_status(vq, job.id, {"succeeded"})
    # The job is done before the store task's own "succeeded in" line is written.
    wait_for(lambda: worker.log_text().count(" succeeded in ") >= 3, 20, "the three task lines")
    text = worker.log_text()
    entries: list[dict[str, Any]] = []
    for line in text.splitlines():
        assert not OTHER_FORMATS.match(line), line
        if line.startswith("{"):
            entries.append(json.loads(line))
    assert SIM_KEY not in text
    assert entries[0]["message"] == "worker starting" and set(entries[0]["queues"]) == {
        namespace.queue("submit"),
        namespace.queue("poll"),
        namespace.queue("store"),
        namespace.queue("webhooks"),
    }
    about_job = [e for e in entries if job.id in e["message"] or e.get("job_id") == job.id]
    for entry in about_job:
        assert entry["job_id"] == job.id, entry
        assert {"time", "level", "logger", "message", "task"} <= set(entry)
    for task in ("videoqueue.submit", "videoqueue.poll", "videoqueue.store"):
        lines = [e for e in about_job if e["task"] == task]
        assert any(e["message"].endswith("received") for e in lines), task
        assert any(" succeeded in " in e["message"] for e in lines), task
    assert any(e["message"] == "video stored" for e in about_job)


def test_text_logs_carry_the_job_id_too(local_stack: Stack) -> None:
    worker = local_stack.start_worker(LOG_FORMAT="text")
    vq = local_stack.queue()
    job = vq.submit(VideoRequest(prompt="a fox in text"))
    wait_status(vq, job.id, {"succeeded"})
    wait_for(lambda: worker.log_text().count(" succeeded in ") >= 3, 20, "the three task lines")
    lines = [line for line in worker.log_text().splitlines() if "Task videoqueue." in line]
    assert lines
    for line in lines:
        assert f"job_id={job.id}" in line, line
