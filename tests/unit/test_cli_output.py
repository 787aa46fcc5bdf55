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

from producer import (
    AmbiguousJobIdError,
    InvalidRequestError,
    Settings,
    UnknownJobError,
    VideoQueue,
    VideoRequest,
)
from producer.api import EnqueueError
from producer.cli import OUTPUT_MIN_CHARS, PIPED_COLUMNS, _job_table, _show
from producer.cli_errors import explain, redact
from producer.cli_table import ELLIPSIS, Col, cut, fit_table, wrap_words
from videoqueue import namespace
from videoqueue.job import ErrorCode, JobFailure, JobRecord, JobStatus, utcnow
from videoqueue.jobstore import JobStore
from worker import logs

LONG_PATH = "file:///home/someone/projects/videoqueue/videos/2026/11/29/" + "7" * 36 + ".mp4"


def _record(job_id: str, status: JobStatus = JobStatus.QUEUED, **changes: Any) -> JobRecord:
    now = utcnow()
    fields: dict[str, Any] = {
        "id": job_id,
        "status": status,
        "provider": "veo",
        "model": "veo-3.1-fast-generate-001",
        "request": {
            "prompt": "a fox",
            "provider": "veo",
            "model": "veo-3.1-fast-generate-001",
            "duration": 4,
            "resolution": "720p",
            "ratio": "16:9",
            "audio": True,
            "service_tier": "default",
        },
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
            error=JobFailure(code=ErrorCode.CONTENT_FILTERED, message="rejected by the safety system: " + "x " * 30),
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
    # At 80 the model is cut before the output column goes below a readable width.
    assert "7b98bf1c-b691" not in at_80 and "veo-3.1-fast" in at_80 and "cost" in at_80
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
    full = redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
    assert explain(full).message == (
        "Redis at redis://:***@127.0.0.1:6390/0 is full (used memory over its maxmemory, noeviction): nothing was "
        "changed; raise maxmemory (REDIS_MAXMEMORY in the compose stack) or delete old jobs"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p@ss@127.0.0.1:6390/0", "redis://:***@127.0.0.1:6390/0"),  # an unencoded @
        ("redis://vq:pa ss@127.0.0.1:6390/0", "redis://vq:***@127.0.0.1:6390/0"),  # a space
        ("redis://hunter2@127.0.0.1:6390/0", "redis://***@127.0.0.1:6390/0"),  # a bare password
        ("redis://127.0.0.1:6390/0", "redis://127.0.0.1:6390/0"),
    ],
)
def test_no_part_of_an_odd_password_is_shown(monkeypatch: pytest.MonkeyPatch, url: str, shown: str) -> None:
    monkeypatch.setenv("REDIS_URL", url)
    refused = redis.exceptions.AuthenticationError("invalid username-password pair or user is disabled.")
    assert explain(refused).message.startswith(f"Redis at {shown} refused our credentials")


def test_redact_hides_a_password_up_to_the_last_at_sign() -> None:
    """Text-level redaction (the CLI's last net, and worker.logs.redact): an unencoded @ in a
    password does not leave the rest of it shown."""
    assert redact("at redis://:p@ss@127.0.0.1:6390/0 now") == "at redis://:***@127.0.0.1:6390/0 now"
    assert logs.redact("at redis://:p@ss@h:1/0") == f"at redis://:{logs.REDACTED}@h:1/0"


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
    assert prepared.record.request.duration == 5


def _store_with(ids: list[str]) -> VideoQueue:
    store = JobStore(fakeredis.FakeRedis(decode_responses=True))
    for job_id in ids:
        store.create_many([_record(job_id)])
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


# Records as a user test met them: a local output path, an S3 URI, an error with words longer
# than the column, a long model name.
LOCAL_URI = "file:///work/ut/videos/0c1c0196-b691-4b60-84f2-8b141d27c475.mp4"
S3_URI = "s3://videoqueue-production-bucket/renders/2026/11/29/1d2d0196-b691-4b60-84f2-8b141d27c475.mp4"
LONG_ERROR = (
    "rejected by the provider's content_filtered_by_policy_v2 check: the prompt was flagged "
    "(see https://docs.example.com/safety/policies/video-generation#content-filter) and nothing billed"
)
LONG_MODEL = "seedance-1-0-pro-fast-experimental-251215"


def _user_records() -> list[JobRecord]:
    return [
        _record("0c1c0196-b691-4b60-84f2-8b141d27c475", JobStatus.SUCCEEDED, output_uri=LOCAL_URI),
        _record("1d2d0196-b691-4b60-84f2-8b141d27c475", JobStatus.SUCCEEDED, output_uri=S3_URI, model=LONG_MODEL),
        _record(
            "2e3e0196-b691-4b60-84f2-8b141d27c475",
            JobStatus.FAILED,
            error=JobFailure(code=ErrorCode.CONTENT_FILTERED, message=LONG_ERROR),
        ),
    ]


def _pieces_of(shown: str, whole: str, sep: str) -> None:
    """Every `sep`-separated piece of `shown` is a whole piece of `whole`, or holds an
    ellipsis and its other characters come from `whole` in order (a cut piece)."""
    pieces = whole.split(sep)
    for piece in shown.split(sep):
        if ELLIPSIS in piece:
            assert all(part in whole for part in piece.split(ELLIPSIS)), (piece, whole)
        else:
            assert piece in pieces, (piece, shown, whole)


@pytest.mark.parametrize("width", [60, 80, 120])
def test_output_and_errors_never_break_inside_a_word(width: int) -> None:
    # Seen: at 80 columns a local path folded over 5 lines of 14 characters
    # ("file:///work/u|t/videos/0c1c0…") and "content_filter|ed" split, while the model kept
    # all its 25 characters.
    records = _user_records()
    lines = _render(_job_table(records, width), width)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    header = _cells(next(line for line in lines if line.startswith("┃")))
    column = header.index("output / error")
    rows = [_cells(line) for line in lines if line.startswith("│")]
    by_job: list[list[str]] = []
    for row in rows:
        if row[0]:
            by_job.append([])
        by_job[-1].append(row[column])
    assert len(by_job) == len(records)
    local, s3, failed = (" ".join(c for c in cells if c) for cells in by_job)
    # A path or URI: on one line, its file name's start and end kept, with an ellipsis.
    for shown, uri in ((local, LOCAL_URI), (s3, S3_URI)):
        assert [c for c in by_job[(LOCAL_URI, S3_URI).index(uri)] if c] == [shown], "\n".join(lines)
        assert shown.endswith("475.mp4") and ELLIPSIS in shown, shown
        assert len(shown) >= min(OUTPUT_MIN_CHARS, len(uri)) - 1, shown
        _pieces_of(shown, uri, "/")
    # An error: wrapped at spaces only; a word too long for the column cut with an ellipsis.
    words = f"content_filtered: {LONG_ERROR}".split()
    for token in failed.split():
        if ELLIPSIS in token:
            assert any(w.startswith(token.split(ELLIPSIS)[0]) for w in words if "/" not in w) or "/" in token, token
            if "/" in token:
                _pieces_of(token, next(w for w in words if "/" in w), "/")
        else:
            assert token in words, (token, "\n".join(lines))
    if "model" in header:
        width_of_model = max(len(row[header.index("model")]) for row in rows)
        output_width = max(len(row[column]) for row in rows)
        # The model gives way before the output column narrows below a readable width.
        assert output_width >= OUTPUT_MIN_CHARS or width_of_model <= 12, "\n".join(lines)


def test_cut_keeps_the_end_of_a_path_and_the_start_of_a_word() -> None:
    assert cut(LOCAL_URI, 80) == LOCAL_URI
    assert cut(LOCAL_URI, 50) == "…/videos/0c1c0196-b691-4b60-84f2-8b141d27c475.mp4"
    assert cut("file:///work/ut/videos/0c1c0196.mp4", 26) == "…/ut/videos/0c1c0196.mp4"
    assert cut("s3://b/very-long-folder-name/videos/x.mp4", 24) == "s3://b/…/videos/x.mp4"
    shown = cut(LOCAL_URI, 24)
    assert len(shown) == 24 and shown.startswith("…/0c1c0196") and shown.endswith(".mp4"), shown
    assert cut("content_filtered", 10) == "content_f…"
    assert wrap_words("a content_filtered b", 8) == ["a", "content…", "b"]
    assert all(len(line) <= 30 for line in wrap_words(LONG_ERROR, 30))


def test_piped_output_keeps_whole_values_and_a_plain_status(capsys: pytest.CaptureFixture[str]) -> None:
    # Seen: piped `status` said "running · stalled 1m" in the status field, so `cut -f2`
    # was not a plain status.
    records = [*_user_records(), _record("3f4f0196-b691-4b60-84f2-8b141d27c475", JobStatus.RUNNING)]
    _show(records, {records[3].id: 75.6})
    header, *lines = capsys.readouterr().out.splitlines()
    assert header.split("\t") == list(PIPED_COLUMNS)
    assert header.split("\t")[1] == "status" and header.split("\t")[-1] == "stalled_s"
    rows = [dict(zip(PIPED_COLUMNS, line.split("\t"), strict=True)) for line in lines]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded", "failed", "running"]
    assert [r["stalled_s"] for r in rows] == ["", "", "", "75"]
    assert rows[0]["output_or_error"] == LOCAL_URI and rows[1]["output_or_error"] == S3_URI
    assert rows[1]["model"] == LONG_MODEL
    assert rows[2]["output_or_error"] == f"content_filtered: {LONG_ERROR}"
    assert [r.public_dict()["output_uri"] for r in records[:2]] == [LOCAL_URI, S3_URI]  # --json


def test_ids_and_prefixes_are_matched_in_any_case() -> None:
    # Seen: `status 0C1C0196` said "unknown job id"; ids are lowercase uuids.
    ids = ["0c1c0196-b691-4b60-84f2-8b141d27c475", "ef012345-0000-4000-8000-000000000000"]
    vq = _store_with(ids)
    assert vq.resolve_ids(["0C1C0196", ids[1].upper()]) == ids
    assert vq.resolve_id("EF01") == ids[1]


def test_an_unknown_id_names_the_namespace_it_was_looked_up_in() -> None:
    # Seen: `status ID` with the wrong VQ_NAMESPACE said only "unknown job id".
    vq = _store_with([])
    with pytest.raises(UnknownJobError) as info:
        vq.resolve_ids(["0c1c0196"])
    assert str(info.value) == (
        f"unknown job id(s): 0c1c0196 (in namespace {namespace.current()!r}; VQ_NAMESPACE picks the deployment)"
    )
