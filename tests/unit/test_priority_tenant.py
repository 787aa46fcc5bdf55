"""The `priority` and `tenant` request fields (issue 15): checked before anything is
stored, carried into the stored request, left out of its JSON at their defaults (records
stored before they existed serialise back unchanged), and compared by client job id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from typer.testing import CliRunner, Result

from producer import InvalidRequestError, Settings, VideoQueue, VideoRequest, cli
from producer.request import resolve
from tests.unit.helpers import seedance_request
from tests.unit.test_pipeline import Env, make_settings, succeeded
from tests.unit.test_resolved import BYTEPLUS_RECORD, VEO_RECORD
from videoqueue.catalog import load_catalog
from videoqueue.job import JobRecord, JobStatus
from videoqueue.jobstore import DuplicateClientJobIdError, JobStore, request_differences
from videoqueue.keys import job_key
from videoqueue.resolved import ResolvedRequest
from videoqueue.storedform import with_long_names

PRIORITY_RULE = "must be a whole number from 0 to 9 (higher first; default 5)"
TENANT_RULE = "must be 1-64 characters, each an ASCII letter, a digit, '.', '_' or '-'"


def _problems(**fields: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest.parse({"prompt": "a fox", **fields})
    return info.value.problems


def test_the_defaults_are_priority_5_and_tenant_default() -> None:
    request = VideoRequest(prompt="a fox")
    assert (request.priority, request.tenant) == (5, "default")
    resolved, _ = resolve(request, load_catalog(), "byteplus")
    assert (resolved.priority, resolved.tenant) == (5, "default")


@pytest.mark.parametrize("priority", [0, 1, 5, 9])
def test_every_priority_from_0_to_9_is_taken_and_stored(priority: int) -> None:
    request = VideoRequest.parse({"prompt": "a fox", "priority": priority})
    assert request.priority == priority
    assert resolve(request, load_catalog(), "byteplus")[0].priority == priority
    # JSON text, as a --file line or the API gives it.
    assert VideoRequest.parse(json.dumps({"prompt": "a fox", "priority": priority})).priority == priority


@pytest.mark.parametrize(
    ("priority", "shown"),
    [
        (10, "10"),
        (-1, "-1"),
        ("high", "'high'"),
        (5.5, "5.5"),
        (True, "True"),
        ("5", "'5'"),
        (5.0, "5.0"),
        (None, "None"),
    ],
)
def test_a_priority_that_is_not_0_to_9_is_refused_naming_the_field(priority: Any, shown: str) -> None:
    assert _problems(priority=priority) == {"priority": f"{PRIORITY_RULE}, not {shown}"}
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest(prompt="a fox", priority=priority)
    assert list(info.value.problems) == ["priority"]


def test_a_bad_priority_in_json_text_is_refused_too() -> None:
    with pytest.raises(InvalidRequestError) as info:
        VideoRequest.parse('{"prompt": "a fox", "priority": 9.0}')
    assert info.value.problems == {"priority": f"{PRIORITY_RULE}, not 9.0"}


@pytest.mark.parametrize("tenant", ["default", "acme", "a", "Team_7.eu-west", "x" * 64, "0"])
def test_a_tenant_name_of_allowed_characters_is_taken_and_stored(tenant: str) -> None:
    request = VideoRequest(prompt="a fox", tenant=tenant)
    assert resolve(request, load_catalog(), "byteplus")[0].tenant == tenant


@pytest.mark.parametrize(
    "tenant",
    ["", "x" * 65, "two words", "acme:eu", "a/b", "ünïcode", "tab\t", "new\nline", "a*", 7, None, ["acme"]],
)
def test_a_tenant_that_is_not_a_name_is_refused_naming_the_field(tenant: Any) -> None:
    problems = _problems(tenant=tenant)
    assert list(problems) == ["tenant"]
    assert problems["tenant"].startswith(TENANT_RULE + ", not ")


def test_a_long_bad_tenant_is_shown_cut() -> None:
    assert _problems(tenant="!" * 100)["tenant"] == f"{TENANT_RULE}, not '{'!' * 36}..."


def test_bad_priority_and_tenant_store_nothing() -> None:
    redis = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(_env_file=None), store=JobStore(redis))
    with pytest.raises(InvalidRequestError) as info:
        vq.submit_many([{"prompt": "fine"}, {"prompt": "bad", "priority": 10, "tenant": "a b"}])
    assert list(info.value.problems) == ["[1].priority", "[1].tenant"]
    assert redis.keys("*") == []


# ------------------------------------------------------------------------- the stored request


@pytest.mark.parametrize("stored", [BYTEPLUS_RECORD, VEO_RECORD], ids=["byteplus", "veo"])
def test_a_record_stored_before_the_fields_existed_loads_with_the_defaults(stored: str) -> None:
    assert "priority" not in stored and "tenant" not in stored
    record = JobRecord.model_validate_json(stored)
    assert (record.request.priority, record.request.tenant) == (5, "default")
    # Byte for byte as stored (tests/unit/test_resolved.py checks the whole record).
    assert record.request.model_dump_json() == json.dumps(
        json.loads(stored)["request"], separators=(",", ":"), ensure_ascii=False
    )


def test_the_fields_are_stored_when_not_at_their_defaults_and_load_back() -> None:
    request = seedance_request(priority=9, tenant="acme")
    data = json.loads(request.model_dump_json())
    assert list(data)[-2:] == ["priority", "tenant"]
    assert (data["priority"], data["tenant"]) == (9, "acme")
    assert ResolvedRequest.model_validate_json(request.model_dump_json()) == request
    # One of them at its default: only the other is written.
    assert "tenant" not in seedance_request(priority=0).model_dump(mode="json")
    assert "priority" not in seedance_request(tenant="acme").model_dump(mode="json")
    assert seedance_request(priority=0).model_dump()["priority"] == 0


def test_json_fields_gives_every_field_defaults_included() -> None:
    fields = seedance_request().json_fields()
    assert (fields["priority"], fields["tenant"]) == (5, "default")
    assert list(fields) == list(ResolvedRequest.model_fields)


def test_a_record_with_the_fields_round_trips_through_the_job_store() -> None:
    redis: Any = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(_env_file=None), store=JobStore(redis))
    prepared = vq.prepare(VideoRequest(prompt="a fox", priority=8, tenant="acme"))
    vq.store.create_many([prepared.record])
    stored = with_long_names(json.loads(redis.get(job_key(prepared.record.id))))
    assert (stored["request"]["priority"], stored["request"]["tenant"]) == (8, "acme")
    loaded = vq.get(prepared.record.id)
    assert (loaded.request.priority, loaded.request.tenant) == (8, "acme")
    assert loaded.public_dict()["request"]["priority"] == 8


# ------------------------------------------------------------------ client job ids compare them


def test_request_differences_name_priority_and_tenant() -> None:
    stored = seedance_request()
    assert request_differences(stored, seedance_request(priority=5, tenant="default")) == {}
    assert request_differences(stored, seedance_request(priority=9)) == {"priority": (5, 9)}
    assert request_differences(stored, seedance_request(tenant="acme")) == {"tenant": ("default", "acme")}
    assert request_differences(seedance_request(priority=2, tenant="b"), stored) == {
        "priority": (2, 5),
        "tenant": ("b", "default"),
    }


def _queue() -> tuple[VideoQueue, Any]:
    redis = fakeredis.FakeRedis(decode_responses=True)
    return VideoQueue(Settings(_env_file=None), store=JobStore(redis)), redis


@pytest.mark.parametrize(
    ("again", "message"),
    [
        ({"priority": 9}, "priority (5 stored, 9 now)"),
        ({"tenant": "acme"}, 'tenant ("default" stored, "acme" now)'),
    ],
)
def test_a_used_client_id_with_another_priority_or_tenant_is_a_different_request(
    again: dict[str, Any], message: str
) -> None:
    vq, redis = _queue()
    first = vq.prepare(VideoRequest(prompt="a fox", client_job_id="order-1")).record
    vq.store.create_many([first])
    before = sorted(redis.keys("*"))
    with pytest.raises(DuplicateClientJobIdError) as info:
        vq.enqueue([vq.prepare(VideoRequest(prompt="a fox", client_job_id="order-1", **again))])
    assert info.value.problems["client_job_id"].endswith(f"for a different request: {message}")
    assert [list(c.differences) for c in info.value.conflicts] == [list(again)]
    assert sorted(redis.keys("*")) == before


def test_a_job_stored_before_the_fields_existed_matches_a_resubmit_with_the_defaults() -> None:
    vq, redis = _queue()
    record = JobRecord.model_validate_json(BYTEPLUS_RECORD)
    vq.store.create_many([record])
    raw = redis.get(job_key(record.id))
    assert "priority" not in raw and "tenant" not in raw
    same = record.request.model_copy(update={"priority": 5, "tenant": "default"})
    assert vq.store.create_many([record.model_copy(update={"id": "other", "request": same})]) == {"other": record}
    with pytest.raises(DuplicateClientJobIdError) as info:
        vq.store.create_many(
            [record.model_copy(update={"id": "other", "request": same.model_copy(update={"priority": 1})})]
        )
    assert info.value.conflicts[0].differences == {"priority": (5, 1)}


# ------------------------------------------------------------------------- the command line


@pytest.fixture
def cli_queue(monkeypatch: pytest.MonkeyPatch) -> tuple[VideoQueue, list[str]]:
    """`videoqueue submit` on fakeredis: the jobs it would send to the broker, by id."""
    vq = VideoQueue(Settings(_env_file=None), store=JobStore(fakeredis.FakeRedis(decode_responses=True)))
    sent: list[str] = []
    monkeypatch.setattr(vq, "_send", lambda records: sent.extend(r.id for r in records))
    monkeypatch.setattr(cli, "VideoQueue", lambda: vq)
    monkeypatch.setattr(cli, "producer_app_for", lambda settings: None)
    monkeypatch.setattr(cli, "no_worker_warning", lambda app: None)
    return vq, sent


def test_submit_takes_priority_and_tenant(cli_queue: tuple[VideoQueue, list[str]]) -> None:
    vq, sent = cli_queue
    result = CliRunner().invoke(cli.app, ["submit", "a fox", "--priority", "9", "--tenant", "acme", "--json"])
    assert result.exit_code == 0, result.output
    [shown] = json.loads(result.stdout)
    assert (shown["request"]["priority"], shown["request"]["tenant"]) == (9, "acme")
    stored = vq.get(sent[0]).request
    assert (stored.priority, stored.tenant) == (9, "acme")
    result = CliRunner().invoke(cli.app, ["submit", "another fox", "--json"])
    [shown] = json.loads(result.stdout)
    assert "priority" not in shown["request"] and "tenant" not in shown["request"]
    assert (vq.get(sent[1]).request.priority, vq.get(sent[1]).request.tenant) == (5, "default")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--priority", "10"], f"error: invalid priority: {PRIORITY_RULE}, not 10; nothing was enqueued"),
        (["--priority", "-1"], f"error: invalid priority: {PRIORITY_RULE}, not -1; nothing was enqueued"),
        (["--tenant", "two words"], f"error: invalid tenant: {TENANT_RULE}, not 'two words'; nothing was enqueued"),
        (["--tenant", ""], f"error: invalid tenant: {TENANT_RULE}, not ''; nothing was enqueued"),
    ],
)
def test_submit_refuses_a_bad_priority_or_tenant_in_one_line(
    args: list[str], expected: str, cli_queue: tuple[VideoQueue, list[str]]
) -> None:
    vq, sent = cli_queue
    result = CliRunner().invoke(cli.app, ["submit", "a fox", *args])
    assert result.exit_code == 2
    assert result.stderr == expected + "\n"
    assert sent == [] and vq.store.redis.keys("*") == []


def test_submit_refuses_a_priority_that_is_not_a_number(
    cli_queue: tuple[VideoQueue, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    vq, sent = cli_queue
    with pytest.raises(SystemExit) as info:
        cli.main(["submit", "a fox", "--priority", "high"])
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: Invalid value for '--priority': Input should be a valid integer"), stderr
    assert stderr.count("\n") == 1
    assert sent == [] and vq.store.redis.keys("*") == []


def test_file_lines_may_carry_priority_and_tenant(tmp_path: Path, cli_queue: tuple[VideoQueue, list[str]]) -> None:
    vq, sent = cli_queue
    lines = [
        {"prompt": "first", "priority": 0, "tenant": "batch"},
        {"prompt": "second"},
        {"prompt": "third", "priority": 9},
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = CliRunner().invoke(cli.app, ["submit", "--file", str(jobs)])
    assert result.exit_code == 0, result.output
    assert result.stdout.split() == sent
    stored = [vq.get(job_id).request for job_id in sent]
    assert [(r.priority, r.tenant) for r in stored] == [(0, "batch"), (5, "default"), (9, "default")]


def test_file_lines_with_a_bad_priority_or_tenant_are_named_by_line(
    tmp_path: Path, cli_queue: tuple[VideoQueue, list[str]]
) -> None:
    vq, sent = cli_queue
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        '{"prompt": "fine", "priority": 7, "tenant": "acme"}\n'
        '{"prompt": "bad", "priority": "high"}\n'
        "\n"
        '{"prompt": "worse", "priority": 5.5, "tenant": "a/b"}\n'
    )
    requests, problems = cli.read_jsonl(jobs)
    assert [(n, r.priority, r.tenant) for n, r in requests] == [(1, 7, "acme")]
    assert problems == {
        "line 2: priority": f"{PRIORITY_RULE}, not 'high'",
        "line 4: priority": f"{PRIORITY_RULE}, not 5.5",
        "line 4: tenant": f"{TENANT_RULE}, not 'a/b'",
    }
    result = CliRunner().invoke(cli.app, ["submit", "--file", str(jobs)])
    assert result.exit_code == 2
    assert "invalid line 2: priority:" in result.stderr and "invalid line 4: tenant:" in result.stderr
    assert result.stderr.endswith("error: nothing was enqueued\n")
    assert sent == [] and vq.store.redis.keys("*") == []


def _submit_file(tmp_path: Path, lines: str, *options: str) -> Result:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(lines)
    return CliRunner().invoke(cli.app, ["submit", "--file", str(jobs), *options])


def test_options_beside_file_fill_in_what_each_line_leaves_out(
    tmp_path: Path, cli_queue: tuple[VideoQueue, list[str]]
) -> None:
    # Dropped, they would have bought renders of another length and size than asked for.
    vq, sent = cli_queue
    lines = '{"prompt": "plain"}\n{"prompt": "its own", "duration": 4, "tags": ["mine"], "priority": 2}\n'
    result = _submit_file(tmp_path, lines, "--duration", "8", "--resolution", "1080p", "--tag", "q4", "--priority", "9")
    assert result.exit_code == 0, result.output
    plain, own = (vq.get(job_id).request for job_id in sent)
    assert (plain.duration, plain.resolution, plain.tags, plain.priority) == (8, "1080p", ("q4",), 9)
    assert (own.duration, own.resolution, own.tags, own.priority) == (4, "1080p", ("mine",), 2)


def test_an_option_that_names_one_job_is_refused_beside_file(
    tmp_path: Path, cli_queue: tuple[VideoQueue, list[str]]
) -> None:
    vq, sent = cli_queue
    lines = '{"prompt": "one"}\n{"prompt": "two"}\n'
    result = _submit_file(tmp_path, lines, "--client-job-id", "x1")
    assert result.exit_code == 2 and "give it per line of --file" in result.stderr, result.output
    result = _submit_file(tmp_path, lines, "--duration", "99")
    assert result.exit_code == 2 and "line 1: duration" in result.stderr, result.output
    assert "read with the options --duration filling in" in result.stderr, result.output
    assert sent == [] and vq.store.redis.keys("*") == []


# ------------------------------------------------------------------------------- the worker


def test_a_job_with_priority_and_tenant_runs_to_the_end_and_its_manifest_says_so(tmp_path: Path) -> None:
    env = Env(tmp_path, make_settings())
    job_id = env.new_job()
    job = env.job(job_id)
    env.store.redis.set(
        job_key(job_id),
        job.model_copy(
            update={"request": job.request.model_copy(update={"priority": 0, "tenant": "acme"})}
        ).model_dump_json(),
    )
    env.pipeline.submit(job_id)
    env.provider.get_results.append(succeeded())
    env.pipeline.poll(job_id, 1)
    env.pipeline.store_video(job_id)
    done = env.job(job_id)
    assert done.status is JobStatus.SUCCEEDED
    assert (done.request.priority, done.request.tenant) == (0, "acme")
    manifest = json.loads((env.root / f"{job_id}.json").read_text())
    assert (manifest["job"]["request"]["priority"], manifest["job"]["request"]["tenant"]) == (0, "acme")
