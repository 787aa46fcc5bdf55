"""Log lines of videoqueue and of the Celery worker: `LOG_FORMAT=text` (the default: time,
level, logger, message, then key=value pairs) or `LOG_FORMAT=json` (one JSON object per line
with time, level, logger, message, job_id, task and the extras).

Every line carries the job id when one is known: a task's first argument is its job id,
bound to a context variable from Celery's `task_prerun` signal until `task_postrun`, and
the "Task ... received" lines take it from the message's arguments. An explicit
`extra={"job_id": ...}` wins.

Nothing from settings is ever passed to a log call, and a redaction filter masks what an
SDK or a traceback might still carry (`Authorization: Bearer ...`, `x-goog-api-key: ...`,
`api_key=...`, passwords in URLs), so no secret reaches the logs.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Literal

from celery.signals import celeryd_after_setup, setup_logging, task_postrun, task_prerun

from videoqueue.job import TASK_ADMIT
from videoqueue.settings import get_settings

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Celery repeats a message's format arguments in `data`; uvicorn adds a coloured copy.
_NOISE = {"data", "color_message"}
_CONTEXT_FIELDS = ("job_id", "task", "task_id")

_job_id: ContextVar[str | None] = ContextVar("videoqueue_job_id", default=None)
_task: ContextVar[str | None] = ContextVar("videoqueue_task", default=None)
_task_id: ContextVar[str | None] = ContextVar("videoqueue_task_id", default=None)

REDACTED = "[REDACTED]"
_VALUE = r"[^\s'\",;&}\]\\]+"
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization headers in any notation: "Authorization: Bearer x", {'authorization': 'Basic x'}.
    (
        re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?(?:bearer|basic|token)?\s*)" + _VALUE),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"(?i)(\bbearer\s+)" + _VALUE), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)" + _VALUE), rf"\1{REDACTED}"),
    # api_key=..., "apiKey": "...", BYTEPLUS_API_KEY=..., aws_secret_access_key=..., password=...
    (
        re.compile(
            r"(?i)((?:api[_-]?key|access[_-]?token|refresh[_-]?token|client[_-]?secret"
            r"|secret[_-]?access[_-]?key|secret[_-]?key|password|passwd)['\"]?\s*[:=]\s*['\"]?)" + _VALUE
        ),
        rf"\1{REDACTED}",
    ),
    # Google's ?key=... query parameter, and Google API keys wherever they appear.
    (re.compile(r"([?&]key=)[^&\s'\"\\]+"), rf"\1{REDACTED}"),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), REDACTED),
    # user:password@ in URLs (redis://:pw@host, https://user:pw@host), to the last @ before the path.
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^\s/]+(@)"), rf"\1{REDACTED}\2"),
    # The token of a provider callback URL (/callbacks/byteplus/<job id>/<token>, worker.callback_url).
    (re.compile(r"(/callbacks/[a-z]+/[^/\s'\"]+/)[^/\s'\",;&}\]\\]+"), rf"\1{REDACTED}"),
)
# Every secret pattern needs one of these (in any case); most log lines have none and skip
# the patterns. Substring tests of the case-folded text: a case-insensitive regex of these
# alternatives took 30-60 us per log line (measured), as much as the rest of the line.
_TRIGGERS = (
    "authorization",
    "bearer",
    "apikey",
    "api_key",
    "api-key",
    "token",
    "secret",
    "passw",
    "key=",
    "aiza",
    "://",
    "/callbacks/",
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def redact(text: str) -> str:
    """`text` with every credential-looking value replaced by [REDACTED]."""
    folded = text.casefold()
    if not any(trigger in folded for trigger in _TRIGGERS):
        return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


# -- job context ------------------------------------------------------------------------------


def current_job_id() -> str | None:
    """The job id bound to this context, if any."""
    return _job_id.get()


def bind_job(job_id: str | None, task: str | None = None, task_id: str | None = None) -> None:
    """Bind a job id (and the task running for it) to every log line of this context."""
    _job_id.set(job_id)
    _task.set(task)
    _task_id.set(task_id)


def clear_job() -> None:
    """Forget the bound job id."""
    bind_job(None)


@contextmanager
def job_context(job_id: str, task: str | None = None) -> Iterator[None]:
    """Log lines inside the block carry `job_id` (for work outside a Celery task)."""
    tokens = (_job_id.set(job_id), _task.set(task), _task_id.set(None))
    try:
        yield
    finally:
        _task_id.reset(tokens[2])
        _task.reset(tokens[1])
        _job_id.reset(tokens[0])


@task_prerun.connect
def _bind_task(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    name = getattr(task, "name", None)
    # Every task's first argument is its job id, but the admit task's (a provider).
    first = args[0] if isinstance(args, list | tuple) and args and name != TASK_ADMIT else None
    bind_job(first if isinstance(first, str) else None, name, task_id)


@task_postrun.connect
def _unbind_task(**_: Any) -> None:
    clear_job()


def _job_of_celery_record(record: logging.LogRecord) -> tuple[str | None, str | None, str | None]:
    """(job id, task name, task id) of a Celery "Task name[id] received" line: the first
    argument of our tasks is the job id, in the message's args repr."""
    data = getattr(record, "data", None)
    if not isinstance(data, dict):
        return None, None, None
    name = data.get("name")
    task_id = data.get("id")
    job_id = None
    if isinstance(name, str) and name.startswith("videoqueue."):
        found = _UUID.search(str(data.get("args", "")))
        job_id = found.group(0) if found else None
    return job_id, name if isinstance(name, str) else None, task_id if isinstance(task_id, str) else None


# -- filters and formatters ---------------------------------------------------------------------


class JobContextFilter(logging.Filter):
    """Adds `job_id`, `task` and `task_id` to a record when they are known and not given."""

    def filter(self, record: logging.LogRecord) -> bool:
        job_id, task, task_id = _job_id.get(), _task.get(), _task_id.get()
        if job_id is None and task is None:
            job_id, task, task_id = _job_of_celery_record(record)
        for field, value in zip(_CONTEXT_FIELDS, (job_id, task, task_id), strict=True):
            if value is not None and getattr(record, field, None) is None:
                setattr(record, field, value)
        return True


class RedactFilter(logging.Filter):
    """Masks credentials in the message, the string extras and the traceback of a record."""

    _traceback = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the handler's to report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._traceback.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str | dict | list | tuple):
                setattr(record, key, _redact_value(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and k not in _NOISE and v is not None}


class KeyValueFormatter(logging.Formatter):
    """`time level logger message key=value ...` for the fields given in `extra` and the
    job context."""

    def __init__(self, fmt: str = "%(asctime)s %(levelname)s %(name)s %(message)s") -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _extras(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, job_id,
    task, the extras, and `exc_info` with the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": extras.pop("job_id", None),
            "task": extras.pop("task", None),
        }
        for key, value in sorted(extras.items()):
            document.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            document["exc_info"] = record.exc_text
        if record.stack_info:
            document["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(_redact_value(document), default=str, ensure_ascii=False)


# -- configuration ----------------------------------------------------------------------------


def log_format(value: str | None = None) -> LogFormat:
    """The format named by `value`, else by LOG_FORMAT (default text)."""
    name = (value or get_settings().log_format).strip().lower()
    if name == "json":
        return "json"
    if name == "text":
        return "text"
    raise ValueError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {name!r}")


def make_handler(fmt: LogFormat, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing `fmt` lines to `stream` (stderr), with the job context and the
    redaction filters attached."""
    return _prepared(logging.StreamHandler(stream if stream is not None else sys.stderr), fmt)


def _prepared(handler: logging.Handler, fmt: LogFormat) -> logging.Handler:
    handler.addFilter(JobContextFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    return handler


def configure(level: str, fmt: str | None = None, stream: IO[str] | None = None) -> None:
    """Send videoqueue's logs to stderr (or `stream`) in `fmt` (default: LOG_FORMAT)."""
    handler = make_handler(log_format(fmt), stream)
    root = logging.getLogger("videoqueue")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The SDKs log request details at DEBUG; keep them quiet whatever our level is.
    for noisy in ("httpx", "httpcore", "byteplussdkarkruntime", "botocore", "boto3", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@setup_logging.connect
def _celery_logging(loglevel: int | str | None = None, logfile: str | None = None, **_: Any) -> None:
    """Celery's own lines (worker, "Task ... received/succeeded") in our format, with the
    same filters, on stderr or in `--logfile`. Connecting this receiver tells Celery not to
    configure logging itself."""
    fmt = log_format()
    if logfile:
        handler = _prepared(logging.handlers.WatchedFileHandler(logfile, encoding="utf-8"), fmt)
    else:
        handler = make_handler(fmt)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(loglevel or get_settings().log_level.upper())


@celeryd_after_setup.connect
def _startup_line(sender: str | None = None, instance: Any = None, **_: Any) -> None:
    """In JSON mode the multi-line banner would break one-object-per-line: log one line instead."""
    if log_format() != "json" or instance is None:
        return
    instance.quiet = True
    app = getattr(instance, "app", None)
    queues = sorted(app.amqp.queues.consume_from) if app is not None else []
    logging.getLogger("videoqueue.worker").info(
        "worker starting",
        extra={"node": sender, "concurrency": getattr(instance, "concurrency", None), "queues": queues},
    )
