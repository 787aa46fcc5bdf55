"""Log lines: text or JSON, the job id of the running task on every line, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.signals import celeryd_after_setup, setup_logging, task_postrun, task_prerun

from videoqueue.settings import get_settings
from worker import logs

JOB = "5f0c7a52-3d4e-4f55-9a1e-2b7c8d9e0f11"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Tests reconfigure the videoqueue and root loggers; put them back afterwards."""
    saved = {}
    for name in ("videoqueue", None):
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    logs.clear_job()
    yield
    logs.clear_job()
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


class FakeTask:
    name = "videoqueue.poll"


def configured(fmt: str) -> io.StringIO:
    stream = io.StringIO()
    logs.configure("DEBUG", fmt, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_text_lines_keep_the_key_value_style() -> None:
    stream = configured("text")
    logging.getLogger("videoqueue.pipeline").info("video stored", extra={"job_id": JOB, "bytes": 1234})
    [line] = lines(stream)
    assert " INFO videoqueue.pipeline video stored " in line
    assert line.endswith(f"bytes=1234 job_id={JOB}")


def test_json_lines_are_one_object_each_with_the_standard_fields() -> None:
    stream = configured("json")
    log = logging.getLogger("videoqueue.pipeline")
    log.info("video stored", extra={"job_id": JOB, "uri": "s3://videos/x.mp4"})
    log.warning("no job here")
    first, second = (json.loads(line) for line in lines(stream))
    assert first["level"] == "INFO" and first["logger"] == "videoqueue.pipeline"
    assert first["message"] == "video stored" and first["job_id"] == JOB and first["uri"] == "s3://videos/x.mp4"
    assert first["time"].endswith("+00:00") and "T" in first["time"]
    assert list(first)[:6] == ["time", "level", "logger", "message", "job_id", "task"]
    assert second["job_id"] is None and second["task"] is None


def test_the_format_comes_from_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    get_settings.cache_clear()
    assert logs.log_format() == "json"
    monkeypatch.delenv("LOG_FORMAT")
    get_settings.cache_clear()
    assert logs.log_format() == "text"
    assert logs.log_format("Json") == "json"
    monkeypatch.setenv("LOG_FORMAT", "xml")
    get_settings.cache_clear()
    with pytest.raises(ValueError, match="invalid setting LOG_FORMAT"):
        logs.log_format()
    with pytest.raises(ValueError, match="LOG_FORMAT must be one of text, json"):
        logs.log_format("xml")


def test_task_signals_put_the_job_id_on_every_line_until_the_task_ends() -> None:
    stream = configured("json")
    task = FakeTask()
    log = logging.getLogger("videoqueue.pipeline")
    task_prerun.send(sender=task, task_id="celery-task-1", task=task, args=(JOB, 3), kwargs={})
    log.info("polled")
    logging.getLogger("videoqueue.providers").debug("status call")
    task_postrun.send(sender=task, task_id="celery-task-1", task=task, args=(JOB, 3), kwargs={}, retval=None)
    log.info("between tasks")
    polled, status, between = (json.loads(line) for line in lines(stream))
    for entry in (polled, status):
        assert entry["job_id"] == JOB and entry["task"] == "videoqueue.poll" and entry["task_id"] == "celery-task-1"
    assert between["job_id"] is None and "task_id" not in between


def test_the_admit_task_binds_no_job_id() -> None:
    stream = configured("json")
    task = FakeTask()
    task.name = "videoqueue.admit"
    task_prerun.send(sender=task, task_id="celery-task-2", task=task, args=("byteplus", "m"), kwargs={})
    logging.getLogger("videoqueue.admission").info("admitted waiting jobs")
    task_postrun.send(sender=task, task_id="celery-task-2", task=task, args=("byteplus", "m"), kwargs={}, retval=None)
    (entry,) = (json.loads(line) for line in lines(stream))
    assert entry["job_id"] is None and entry["task"] == "videoqueue.admit"


def test_an_explicit_job_id_wins_over_the_context() -> None:
    stream = configured("text")
    other = "0b5e8f5e-0000-4000-8000-000000000000"
    with logs.job_context(JOB, "videoqueue.store"):
        logging.getLogger("videoqueue.x").info("about another job", extra={"job_id": other})
        logging.getLogger("videoqueue.x").info("about this one")
    explicit, implicit = lines(stream)
    assert f"job_id={other}" in explicit and JOB not in explicit
    assert f"job_id={JOB}" in implicit and "task=videoqueue.store" in implicit
    assert logs.current_job_id() is None


def test_celery_lines_go_through_the_same_handler_with_the_job_id(capsys: pytest.CaptureFixture[str]) -> None:
    """The setup_logging receiver takes over Celery's logging: its own lines, such as the
    "received" line logged before any task runs, come out in our format with the job id."""
    logging.getLogger("videoqueue").handlers.clear()
    capsys.readouterr()
    os.environ["LOG_FORMAT"] = "json"
    try:
        setup_logging.send(sender=None, loglevel=logging.INFO, logfile=None, format="", colorize=False)
    finally:
        del os.environ["LOG_FORMAT"]
    context = {"id": "celery-task-9", "name": "videoqueue.submit", "args": f"('{JOB}',)", "kwargs": "{}", "eta": None}
    logging.getLogger("celery.worker.strategy").info("Task %(name)s[%(id)s] received", context, extra={"data": context})
    logging.getLogger("celery.worker.strategy").info("not about a task")
    received, other = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert received["message"] == "Task videoqueue.submit[celery-task-9] received"
    assert received["job_id"] == JOB and received["task"] == "videoqueue.submit"
    assert received["task_id"] == "celery-task-9" and "data" not in received
    assert other["job_id"] is None


def test_json_mode_replaces_the_worker_banner_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = configured("json")
    monkeypatch.setenv("LOG_FORMAT", "json")
    queues = SimpleNamespace(consume_from={"vq.poll": None, "vq.submit": None})
    worker = SimpleNamespace(quiet=False, concurrency=4, app=SimpleNamespace(amqp=SimpleNamespace(queues=queues)))
    celeryd_after_setup.send(sender="worker@abc123", instance=worker, conf=None)
    assert worker.quiet is True
    [line] = (json.loads(x) for x in lines(stream))
    assert line["message"] == "worker starting" and line["node"] == "worker@abc123"
    assert line["queues"] == ["vq.poll", "vq.submit"] and line["concurrency"] == 4


SECRET_MESSAGES = [
    "HTTP Request: POST https://ark.ap-southeast.bytepluses.com/api/v3/contents/generations/tasks "
    "headers={'Authorization': 'Bearer sk-xxx', 'Content-Type': 'application/json'}",
    "Request options: Authorization: Bearer sk-xxx",
    "retrying with bearer sk-xxx",
    "headers: {'x-goog-api-key': 'sk-xxx'}",
    "x-goog-api-key: sk-xxx",
    "Ark(api_key=sk-xxx, base_url=...)",
    '{"apiKey": "sk-xxx"}',
    "settings BYTEPLUS_API_KEY=sk-xxx GOOGLE_API_KEY=sk-xxx",
    "GET https://aiplatform.googleapis.com/v1/publishers/google/models/veo:fetch?key=sk-xxx&alt=json",
    "connecting to redis://:sk-xxx@redis:6379/0",
    "aws_secret_access_key=sk-xxx MINIO_ROOT_PASSWORD=sk-xxx",
]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("message", SECRET_MESSAGES)
def test_credentials_never_reach_the_log(fmt: str, message: str) -> None:
    stream = configured(fmt)
    # As an SDK would log it: through its own logger, with the secret in the arguments.
    logging.getLogger("videoqueue.sdk").warning("%s", message)
    output = stream.getvalue()
    assert "sk-xxx" not in output
    assert logs.REDACTED in output


def test_google_api_keys_are_redacted_anywhere() -> None:
    key = "AIza" + "B" * 35
    assert logs.redact(f"the key {key} was used") == f"the key {logs.REDACTED} was used"


def test_the_redaction_filter_cleans_records_for_any_handler() -> None:
    """Celery's or a library's handler gets clean records too: the filter rewrites the
    record itself (message, string extras, traceback), not just our formatted output."""
    record = logging.LogRecord(
        "httpx", logging.INFO, __file__, 1, "sending %s", ("Authorization: Bearer sk-xxx",), None
    )
    record.__dict__["headers"] = {"Authorization": "Bearer sk-xxx"}
    assert logs.RedactFilter().filter(record)
    assert "sk-xxx" not in record.getMessage()
    assert "sk-xxx" not in str(record.__dict__["headers"])


def test_tracebacks_are_redacted() -> None:
    stream = configured("json")
    try:
        raise RuntimeError("401 for Authorization: Bearer sk-xxx")
    except RuntimeError:
        logging.getLogger("videoqueue.pipeline").exception("create failed")
    [entry] = (json.loads(line) for line in lines(stream))
    assert "RuntimeError" in entry["exc_info"] and "sk-xxx" not in entry["exc_info"]


def test_ordinary_fields_are_left_alone() -> None:
    text = "usage completion_tokens=108900 provider_task_id=cgt-2025 key_frames=3 monkey=1"
    assert logs.redact(text) == text


def test_celery_logfile_gets_the_same_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "text")
    logfile = tmp_path / "worker.log"
    setup_logging.send(sender=None, loglevel=logging.INFO, logfile=str(logfile), format="", colorize=False)
    with logs.job_context(JOB, "videoqueue.submit"):
        logging.getLogger("celery.app.trace").info("Task videoqueue.submit[x] succeeded in 0.1s: None")
    logging.getLogger().handlers[0].close()
    [line] = logfile.read_text().splitlines()
    assert line.endswith(f"job_id={JOB} task=videoqueue.submit")


def test_skipping_the_patterns_for_lines_with_no_trigger_word_never_changes_a_line() -> None:
    def every_pattern(text: str) -> str:
        for pattern, replacement in logs._SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    google = "AIza" + "B" * 35
    lines = [
        "provider task created job_id=0193f6a2-aaaa-bbbb-cccc-123456789abc",
        "Authorization: Bearer abc.def",
        "{'AUTHORIZATION': 'Basic dXNlcjpwdw=='}",
        "bearer xyz",
        "X-Goog-Api-Key: k123",
        "API-KEY=v1 Api_Key: v2 apikey=v3",
        "ACCESS_TOKEN=t refresh-token: r Client_Secret=c",
        "aws_secret_access_key=s SECRET_KEY=s2 PassWord=p passwd=q",
        "GET https://host/v1/models?key=abc&x=1",
        f"sent with {google} inside",
        f"sent with {google.lower()} inside",
        "redis://:pw@host:6379/0 https://user:pa55@example.com/path",
        "no secret here: a/b c=d",
    ]
    for line in lines:
        assert logs.redact(line) == every_pattern(line), line
