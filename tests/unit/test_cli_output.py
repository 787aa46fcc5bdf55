"""The CLI's output for people and scripts, and the API's own errors (issue 13): tables that
fit the terminal, errors as one line, id prefixes, InvalidRequestError for every bad request."""

from __future__ import annotations

import errno
import io
import json
import re
from datetime import timedelta
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
import redis
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from rich.console import Console

from producer import AmbiguousJobIdError, InvalidRequestError, Settings, UnknownJobError, VideoQueue, VideoRequest
from producer.api import EnqueueError
from producer.cli import _job_table
from producer.cli_errors import explain, redact
from producer.cli_table import Col, fit_table
from producer.contract import ErrorCode, JobError, JobRecord, JobStatus, utcnow
from producer.jobstore import JobStore

LONG_PATH = "file:///home/someone/projects/videoqueue/videos/2026/11/29/" + "7" * 36 + ".mp4"


def _record(job_id: str, status: JobStatus = JobStatus.QUEUED, **changes: Any) -> JobRecord:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": job_id,
        "status": status,
        "provider": "veo",
        "model": "veo-3.1-fast-generate-001",
        "request": {"prompt": "a fox"},
        "cost_estimate_usd": Decimal("0.4"),
        "billed_unit": "second",
        "created_at": now,
        "updated_at": now,
        "deadline_at": now + timedelta(hours=2),
    }
    fields.update(changes)
    return JobRecord(**fields)


def _records() -> list[JobRecord]:
    return [
        _record("7b98bf1c-b691-4b60-84f2-8b141d27c475", JobStatus.SUCCEEDED, output_uri=LONG_PATH, cost_usd=Decimal(1)),
        _record(
            "5b557bc5-1a7b-4bae-a00a-60a077f83d2e",
            JobStatus.FAILED,
            error=JobError(code=ErrorCode.CONTENT_FILTERED, message="rejected by the safety system: " + "x " * 30),
        ),
        _record("dcc7c0cc-adef-41c9-b469-918d6e2e5b2b", model="seedance-1-5-pro-251215", provider="byteplus"),
    ]


def _render(table: Any, width: int) -> list[str]:
    buffer = io.StringIO()
    Console(width=width, file=buffer, color_system=None, legacy_windows=False).print(table)
    return buffer.getvalue().splitlines()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in re.split(r"[│┃]", line)[1:-1]]


@pytest.mark.parametrize("width", [60, 80, 120])
def test_the_job_table_fits_and_never_squeezes_a_column_to_letters(width: int) -> None:
    # Seen: at 80 columns the model and output columns took one letter a line.
    lines = _render(_job_table(_records(), width), width)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    header = _cells(next(line for line in lines if "id" in line and "status" in line))
    rows = [_cells(line) for line in lines if line.startswith("│")]
    for column, name in enumerate(header):
        widest = max(len(row[column]) for row in rows)
        assert widest >= min(len(name), 4), (name, "\n".join(lines))
    for record in _records():
        assert any(record.id[:8] in line for line in lines)
        assert any(record.status.value in line for line in lines)
    if "model" in header:
        # Whole, or cut with an ellipsis: never folded onto the next line.
        models = [row[header.index("model")] for row in rows if row[header.index("model")]]
        assert all(m in {r.model for r in _records()} or m.endswith("…") for m in models), models
        assert all(len(m) >= 10 for m in models)


def test_wide_terminals_show_whole_ids_and_narrow_ones_drop_low_priority_columns() -> None:
    wide = "\n".join(_render(_job_table(_records(), 240), 240))
    assert "7b98bf1c-b691-4b60-84f2-8b141d27c475" in wide and LONG_PATH in wide
    assert "veo-3.1-fast-generate-001" in wide and "$1.0000" in wide and "~$0.4000" in wide
    at_80 = "\n".join(_render(_job_table(_records(), 80), 80))
    assert "7b98bf1c-b691" not in at_80 and "veo-3.1-fast-generate-001" in at_80 and "cost" in at_80
    at_60 = "\n".join(_render(_job_table(_records(), 60), 60))
    assert "cost" not in at_60 and "output / error" in at_60


def test_fit_table_drops_by_priority_until_the_rest_fit() -> None:
    columns = [Col("a", 0), Col("b", 2), Col("c", 1)]
    rows = [["x" * 20, "y" * 20, "z" * 20]]
    headers = [col.header for col in fit_table(columns, rows, 50).columns]
    assert headers == ["a", "c"]
    assert [col.header for col in fit_table(columns, rows, 80).columns] == ["a", "b", "c"]


def test_errors_name_the_cause_and_the_fix_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@127.0.0.1:6390/0")
    refused = redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
    explained = explain(refused)
    assert explained.code == 2
    assert explained.message == (
        "cannot reach Redis at redis://:***@127.0.0.1:6390/0 (connection refused): "
        "start it (make redis) or set REDIS_URL"
    )
    # Celery wraps the broker's refusal in kombu's OperationalError, the API in EnqueueError.
    try:
        try:
            raise OperationalError("[Errno 111] Connection refused")
        except OperationalError as exc:
            raise EnqueueError("broker refused the job messages") from exc
    except EnqueueError as wrapped:
        assert "cannot reach Redis at redis://:***@" in explain(wrapped).message
    assert "hunter2" not in explain(RuntimeError("redis://user:hunter2@host/0 broke")).message
    assert (
        redact("amqp://guest:pw@rabbit:5672// and redis://:pw@h") == "amqp://guest:***@rabbit:5672// and redis://:***@h"
    )
    assert explain(RuntimeError("boom")).message == "unexpected RuntimeError: boom (run with --debug for the traceback)"
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    assert explain(in_use).message.endswith("choose another --port")
    pricing = ValueError("cannot read PRICING_FILE p.toml: [Errno 2] No such file or directory: 'p.toml'")
    assert explain(pricing).message.endswith("fix the file or unset PRICING_FILE")


def test_settings_errors_escaping_as_pydantic_errors_are_one_line() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(budget_daily_usd="lots", _env_file=None)
    assert explain(info.value).message.startswith("invalid setting BUDGET_DAILY_USD:")


@pytest.mark.parametrize(
    "make",
    [
        lambda: VideoRequest(prompt="a fox", colour="red"),  # type: ignore[call-arg]
        lambda: VideoRequest(prompt="a fox", duration="5"),  # type: ignore[arg-type]
        lambda: VideoRequest.parse({"prompt": "a fox", "colour": "red"}),
        lambda: VideoRequest.parse(json.dumps({"prompt": "a fox", "colour": "red"})),
        lambda: VideoRequest.parse(["a fox"]),
        lambda: VideoQueue(Settings(), store=JobStore(fakeredis.FakeRedis())).submit({"prompt": "a", "colour": "red"}),
        lambda: VideoQueue(Settings(), store=JobStore(fakeredis.FakeRedis())).submit_many([{"prompt": "a", "x": 1}]),
    ],
)
def test_every_bad_request_raises_invalid_request_error(make: Any) -> None:
    # Seen: an unknown field raised pydantic's ValidationError, not InvalidRequestError.
    with pytest.raises(InvalidRequestError) as info:
        make()
    assert info.value.problems
    assert all("invalid video request" not in message for message in info.value.problems.values())


def test_unknown_fields_are_named() -> None:
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest(prompt="a fox", colour="red")  # type: ignore[call-arg]
    assert info.value.problems == {"colour": "unknown field (check the spelling)"}


def test_a_dict_is_a_request_too() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(), store=JobStore(client))
    prepared = vq.prepare({"prompt": "a fox", "duration": 5})
    assert prepared.record.request["duration"] == 5


def _store_with(ids: list[str]) -> VideoQueue:
    store = JobStore(fakeredis.FakeRedis(decode_responses=True))
    for job_id in ids:
        store.create(_record(job_id))
    return VideoQueue(Settings(), store=store)


def test_unique_prefixes_resolve_like_git_short_hashes() -> None:
    ids = [
        "abcd1111-0000-4000-8000-000000000000",
        "abcd2222-0000-4000-8000-000000000000",
        "ef012345-0000-4000-8000-000000000000",
    ]
    vq = _store_with(ids)
    assert vq.resolve_id("ef01") == ids[2]
    assert vq.resolve_id("abcd1") == ids[0]
    assert vq.resolve_ids([ids[1], "ef012345"]) == [ids[1], ids[2]]
    with pytest.raises(AmbiguousJobIdError, match=r"'abcd' is ambiguous: matches abcd1111-.*, abcd2222-"):
        vq.resolve_id("abcd")
    with pytest.raises(AmbiguousJobIdError, match="too short"):
        vq.resolve_id("ef0")
    with pytest.raises(UnknownJobError, match=r"unknown job id\(s\): 9999, ffff"):
        vq.resolve_ids(["9999", "ef01", "ffff"])
    with pytest.raises(UnknownJobError):
        vq.resolve_id("ab*d")  # glob characters are matched literally


def test_prefix_lookup_finds_one_job_among_many() -> None:
    ids = [f"{n:08x}-0000-4000-8000-000000000000" for n in range(3000)]
    vq = _store_with(ids)
    assert vq.resolve_id("00000bb7") == ids[0xBB7]
