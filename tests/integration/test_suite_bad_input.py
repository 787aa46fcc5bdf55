"""Reliability suite: bad input.

A table of distinct bad requests, each sent through the Python API (`VideoQueue.submit`,
and `submit_many` with a good request in front of it) and through the `videoqueue` CLI
(`submit --file jobs.jsonl`, and `submit PROMPT --option ...` where the request can be
written as options). Every one must be refused with an error naming its field, and the
whole Redis database (job store, ledger, counters and the Celery queues) must be exactly
as it was before the table ran.

Run: VQ_TEST_REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/pytest -q -s tests/integration/test_suite_bad_input.py
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from producer import InvalidRequestError, UnknownJobError, VideoQueue, VideoRequest
from producer.request import MAX_PROMPT_CHARS, MAX_SEED, MAX_TAGS
from simulator.stack import free_port
from tests.integration.conftest import REDIS_URL, UNACKED, Stack
from tests.integration.helpers import redis_value
from tests.integration.test_cli import run
from videoqueue import keys
from videoqueue.catalog import MAX_IMAGE_BYTES
from videoqueue.job import QUEUE_POLL, QUEUE_STORE, QUEUE_SUBMIT

pytestmark = pytest.mark.integration

QUEUES = (QUEUE_SUBMIT, QUEUE_POLL, QUEUE_STORE)
USED_CLIENT_ID = "suite-bad-input-client-1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDANCE = "seedance-1-5-pro-251215"
SEEDANCE_SILENT = "seedance-1-0-pro-250528"
SEEDANCE_FAST = "seedance-1-0-pro-fast-251015"
VEO = "veo-3.1-fast-generate-001"
UNKNOWN_JOB = "00000000-0000-4000-8000-00000000dead"


# --------------------------------------------------------------------------- Redis state


def raw_client() -> redis.Redis:
    """A client on the test database that returns bytes (nothing is decoded or lost)."""
    return redis.Redis.from_url(REDIS_URL, decode_responses=False)


def snapshot(client: redis.Redis) -> dict[bytes, tuple[str, Any, bool]]:
    """Every key of the database with its type, its whole value (helpers.redis_value: read
    by type, so two snapshots are equal exactly when the data is) and whether it expires."""
    r: Any = client
    state: dict[bytes, tuple[str, Any, bool]] = {}
    for key in sorted(r.scan_iter(match="*", count=1000)):
        read = redis_value(r, key)
        if read is not None:
            state[key] = (*read, r.pttl(key) >= 0)
    return state


def changed_keys(before: dict[bytes, Any], after: dict[bytes, Any]) -> list[bytes]:
    """Keys added, removed or with another value."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def queue_lengths(state: dict[bytes, tuple[str, Any, bool]]) -> dict[str, int]:
    """Messages waiting in each Celery queue, and held unacknowledged."""
    lengths = {q: len(state[q.encode()][1]) if q.encode() in state else 0 for q in QUEUES}
    unacked = UNACKED.encode()
    lengths["unacked"] = len(state[unacked][1]) if unacked in state else 0
    return lengths


# --------------------------------------------------------------------------- the table

Line = dict[str, Any] | str | bytes


@dataclass(frozen=True)
class Case:
    """One bad request.

    `lines` is the request as lines of a JSON-lines file: a dict is one JSON object, a str
    or bytes is written as it is (malformed lines). The API gets the same data:
    `VideoRequest.parse` of each line, then `submit` (one line) or `submit_many`.
    """

    name: str
    field: str  # the key the API's InvalidRequestError.problems must hold
    fragment: str  # part of that message
    lines: tuple[Line, ...]
    args: tuple[str, ...] = ()  # the same request as `videoqueue submit` arguments, if expressible
    cli_key: str = ""  # what `submit --file` prints after "invalid "; default "line N: <field>"
    cli_fragment: str = ""  # default: fragment
    batch_key: str = ""  # key when sent after a good request with submit_many; default "[1].<field>"
    cli_file: bool = True  # run `submit --file` (False only where a separate test covers it)

    @property
    def file_key(self) -> str:
        return self.cli_key or f"line {len(self.lines)}: {self.field}"


@dataclass(frozen=True)
class Inputs:
    """Files and URLs the cases point at."""

    sim: str
    closed_port: int
    png: Path
    text_file: Path
    big_png: Path
    empty_file: Path
    missing: Path


def make_inputs(stack: Stack, tmp_path: Path) -> Inputs:
    png = tmp_path / "first.png"
    png.write_bytes(PNG_MAGIC + bytes(range(256)) * 4)
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image\n")
    big_png = tmp_path / "big.png"
    with big_png.open("wb") as fh:
        fh.write(PNG_MAGIC)
        fh.truncate(MAX_IMAGE_BYTES + 1)  # sparse: 10 MiB + 1 byte
    empty_file = tmp_path / "empty.png"
    empty_file.write_bytes(b"")
    return Inputs(
        sim=stack.simulator.url,
        closed_port=free_port(),
        png=png,
        text_file=text_file,
        big_png=big_png,
        empty_file=empty_file,
        missing=tmp_path / "does-not-exist.png",
    )


def cases(inp: Inputs) -> list[Case]:
    image = f"{inp.sim}/_sim/image.png"
    fox = "a red fox in snow"
    not_text = "contains a control or non-text character"
    bad_url = "must be an http:// or https:// URL with a host"
    return [
        # ---- the prompt
        Case("empty prompt", "prompt", "must not be empty", ({"prompt": ""},), ("",)),
        Case("whitespace prompt", "prompt", "must not be empty", ({"prompt": " \t\n  "},), ("   ",)),
        Case(
            "prompt over 4000 chars",
            "prompt",
            f"is {MAX_PROMPT_CHARS + 1} characters; the limit is {MAX_PROMPT_CHARS}",
            ({"prompt": "x" * (MAX_PROMPT_CHARS + 1)},),
            ("x" * (MAX_PROMPT_CHARS + 1),),
        ),
        Case(
            "huge prompt (1 MB)",
            "prompt",
            "is 1000000 characters",
            ({"prompt": "y" * 1_000_000},),
        ),
        Case("prompt with NUL", "prompt", not_text, ({"prompt": "a fox\x00 in snow"},)),
        Case("prompt with control bytes", "prompt", not_text, ({"prompt": "bell\x07 and escape\x1b[31m"},)),
        Case("prompt with a lone surrogate", "prompt", not_text, ({"prompt": "broken \ud800 text"},)),
        Case("prompt not a string", "prompt", "Input should be a valid string", ({"prompt": 42},)),
        Case("prompt as a list", "prompt", "Input should be a valid string", ({"prompt": ["a", "fox"]},)),
        Case("prompt missing", "prompt", "Field required", ({"duration": 5},)),
        # ModelArk parameters written into the prompt (issue 12): refused, naming the field to use.
        Case(
            "prompt with ModelArk short parameters",
            "prompt",
            "prompt carries --dur 10: use the request field duration instead",
            ({"prompt": f"{fox} --dur 10 --rt 9:16 --rs 1080p"},),
            (f"{fox} --dur 10 --rt 9:16 --rs 1080p",),
        ),
        Case(
            "prompt with ModelArk long parameters",
            "prompt",
            "prompt carries --resolution 720p: use the request field resolution instead",
            ({"prompt": f"{fox} --duration 5 --ratio 16:9 --resolution 720p --seed 7"},),
            (f"{fox} --duration 5 --ratio 16:9 --resolution 720p --seed 7",),
        ),
        Case(
            "prompt with a watermark parameter",
            "prompt",
            "prompt carries --wm true: videoqueue has no request field for the watermark",
            ({"prompt": f"{fox} --wm true"},),
            (f"{fox} --wm true",),
        ),
        Case(
            "prompt with camerafixed and fps parameters",
            "prompt",
            "prompt carries --camerafixed false: videoqueue has no request field for the fixed camera",
            ({"prompt": f"{fox} --camerafixed false --fps 24"},),
            (f"{fox} --camerafixed false --fps 24",),
        ),
        # ---- shape of the other fields
        Case(
            "unknown field (typo)",
            "durration",
            "unknown field (check the spelling)",
            ({"prompt": fox, "durration": 5},),
        ),
        Case("duration as string", "duration", "Input should be a valid integer", ({"prompt": fox, "duration": "5"},)),
        Case("duration float", "duration", "Input should be a valid integer", ({"prompt": fox, "duration": 5.5},)),
        Case("duration boolean", "duration", "Input should be a valid integer", ({"prompt": fox, "duration": True},)),
        Case("audio as string", "audio", "Input should be a valid boolean", ({"prompt": fox, "audio": "yes"},)),
        Case(
            "negative seed",
            "seed",
            "greater than or equal to 0",
            ({"prompt": fox, "seed": -1},),
            (fox, "--seed", "-1"),
        ),
        Case(
            "seed over 2^32-1",
            "seed",
            f"less than or equal to {MAX_SEED}",
            ({"prompt": fox, "seed": MAX_SEED + 1},),
            (fox, "--seed", str(MAX_SEED + 1)),
        ),
        Case(
            "service_tier neither default nor flex",
            "service_tier",
            "Input should be 'default' or 'flex'",
            ({"prompt": fox, "service_tier": "turbo"},),
            (fox, "--service-tier", "turbo"),
        ),
        Case(
            "client_job_id with spaces",
            "client_job_id",
            "String should match pattern",
            ({"prompt": fox, "client_job_id": "my job 1"},),
            (fox, "--client-job-id", "my job 1"),
        ),
        # ---- provider and model
        Case(
            "unknown provider",
            "provider",
            "unknown provider 'sora'; known: byteplus, veo",
            ({"prompt": fox, "provider": "sora"},),
            (fox, "--provider", "sora"),
        ),
        Case(
            "unknown model",
            "model",
            "unknown model 'seedance-9-ultra'",
            ({"prompt": fox, "model": "seedance-9-ultra"},),
            (fox, "--model", "seedance-9-ultra"),
        ),
        Case(
            "model/provider mismatch",
            "model",
            f"{SEEDANCE} is a byteplus model, not veo",
            ({"prompt": fox, "provider": "veo", "model": SEEDANCE},),
            (fox, "--provider", "veo", "--model", SEEDANCE),
        ),
        # ---- what the model supports
        Case(
            "duration 3 s on Seedance 1.5 Pro",
            "duration",
            f"3 s is not supported by {SEEDANCE}",
            ({"prompt": fox, "duration": 3},),
            (fox, "--duration", "3"),
        ),
        Case(
            "duration 5 s on Veo",
            "duration",
            f"5 s is not supported by {VEO}",
            ({"prompt": fox, "provider": "veo", "duration": 5},),
            (fox, "--provider", "veo", "--duration", "5"),
        ),
        Case(
            "ratio 1:1 on Veo",
            "ratio",
            f"'1:1' is not supported by {VEO}",
            ({"prompt": fox, "provider": "veo", "ratio": "1:1"},),
            (fox, "--provider", "veo", "--ratio", "1:1"),
        ),
        Case(
            "resolution 4k on Seedance",
            "resolution",
            f"'4k' is not supported by {SEEDANCE}",
            ({"prompt": fox, "resolution": "4k"},),
            (fox, "--resolution", "4k"),
        ),
        Case(
            "audio on a model without audio",
            "audio",
            f"{SEEDANCE_SILENT} does not generate audio",
            ({"prompt": fox, "model": SEEDANCE_SILENT, "audio": True},),
            (fox, "--model", SEEDANCE_SILENT, "--audio"),
        ),
        Case(
            "flex tier on Veo",
            "service_tier",
            f"'flex' is not offered for {VEO}",
            ({"prompt": fox, "provider": "veo", "service_tier": "flex"},),
            (fox, "--provider", "veo", "--service-tier", "flex"),
        ),
        Case(
            "negative_prompt on Seedance",
            "negative_prompt",
            f"{SEEDANCE} does not take a negative prompt",
            ({"prompt": fox, "negative_prompt": "blur"},),
            (fox, "--negative-prompt", "blur"),
        ),
        Case(
            "person_generation not allowed",
            "person_generation",
            f"'allow_all' is not allowed for {VEO}; allowed: allow_adult, dont_allow",
            ({"prompt": fox, "provider": "veo", "person_generation": "allow_all"},),
            (fox, "--provider", "veo", "--person-generation", "allow_all"),
        ),
        # ---- images
        Case(
            "image_url with ftp scheme",
            "image_url",
            bad_url,
            ({"prompt": fox, "image_url": "ftp://example.com/first.png"},),
            (fox, "--image-url", "ftp://example.com/first.png"),
        ),
        Case(
            "image_url not a URL",
            "image_url",
            bad_url,
            ({"prompt": fox, "image_url": "first frame please"},),
            (fox, "--image-url", "first frame please"),
        ),
        Case(
            "image_url unreachable (closed port)",
            "image_url",
            "is unreachable",
            ({"prompt": fox, "image_url": f"http://127.0.0.1:{inp.closed_port}/first.png"},),
            (fox, "--image-url", f"http://127.0.0.1:{inp.closed_port}/first.png"),
        ),
        Case(
            "image_url at the cloud metadata address",
            "image_url",
            "leads to 169.254.169.254, a cloud metadata address",
            ({"prompt": fox, "image_url": "http://169.254.169.254/latest/meta-data/first.png"},),
            (fox, "--image-url", "http://169.254.169.254/latest/meta-data/first.png"),
        ),
        Case(
            "image_url on a private network",
            "image_url",
            "leads to 10.0.0.5, a private address",
            ({"prompt": fox, "provider": "veo", "image_url": "http://10.0.0.5:9000/first.png"},),
            (fox, "--provider", "veo", "--image-url", "http://10.0.0.5:9000/first.png"),
        ),
        Case(
            "image_url as IPv4-mapped IPv6 loopback",
            "image_url",
            "a loopback address in IPv6 form (127.0.0.1)",
            ({"prompt": fox, "image_url": "http://[::ffff:127.0.0.1]/first.png"},),
            (fox, "--image-url", "http://[::ffff:127.0.0.1]/first.png"),
        ),
        Case(
            "image_url answering 404",
            "image_url",
            "answers HTTP 404",
            ({"prompt": fox, "image_url": f"{inp.sim}/_sim/nope.png"},),
            (fox, "--image-url", f"{inp.sim}/_sim/nope.png"),
        ),
        Case(
            "image_url answering JSON, not an image",
            "image_url",
            "answers application/json, not an image",
            ({"prompt": fox, "image_url": f"{inp.sim}/_sim/health"},),
        ),
        Case(
            "image_file missing",
            "image_file",
            "is not a readable file",
            ({"prompt": fox, "image_file": str(inp.missing)},),
            (fox, "--image-file", str(inp.missing)),
        ),
        Case(
            "image_file not an image",
            "image_file",
            "is not a PNG, JPEG or WebP image",
            ({"prompt": fox, "image_file": str(inp.text_file)},),
            (fox, "--image-file", str(inp.text_file)),
        ),
        Case(
            "image_file over 10 MiB",
            "image_file",
            f"is {MAX_IMAGE_BYTES + 1} bytes; the limit is {MAX_IMAGE_BYTES}",
            ({"prompt": fox, "image_file": str(inp.big_png)},),
            (fox, "--image-file", str(inp.big_png)),
        ),
        Case(
            "image_file empty",
            "image_file",
            "is empty",
            ({"prompt": fox, "image_file": str(inp.empty_file)},),
        ),
        Case(
            "image_file is a directory",
            "image_file",
            "is not a readable file",
            ({"prompt": fox, "image_file": str(inp.png.parent)},),
        ),
        Case(
            "image_url and image_file both given",
            "image_file",
            "give image_url or image_file, not both",
            ({"prompt": fox, "image_url": image, "image_file": str(inp.png)},),
            (fox, "--image-url", image, "--image-file", str(inp.png)),
        ),
        Case(
            "last frame without first frame",
            "last_frame_url",
            "a last frame needs a first frame",
            ({"prompt": fox, "last_frame_url": image},),
            (fox, "--last-frame-url", image),
        ),
        Case(
            "last frame on a model without last frame",
            "last_frame_url",
            f"{SEEDANCE_FAST} does not take a last frame image",
            ({"prompt": fox, "model": SEEDANCE_FAST, "image_url": image, "last_frame_url": image},),
            (fox, "--model", SEEDANCE_FAST, "--image-url", image, "--last-frame-url", image),
        ),
        # ---- tags
        Case(
            "tag with spaces",
            "tags",
            "tag 'campaign a' must be 1-64 printable characters without spaces",
            ({"prompt": fox, "tags": ["campaign a"]},),
            (fox, "--tag", "campaign a"),
        ),
        Case(
            "too many tags",
            "tags",
            f"at most {MAX_TAGS} tags",
            ({"prompt": fox, "tags": [f"t{i}" for i in range(MAX_TAGS + 1)]},),
            (fox, *[a for i in range(MAX_TAGS + 1) for a in ("--tag", f"t{i}")]),
        ),
        Case("tags as a string", "tags", "Input should be a valid tuple", ({"prompt": fox, "tags": "campaign-a"},)),
        # ---- client job ids
        Case(
            "client_job_id already used",
            "client_job_id",
            f"client job id {USED_CLIENT_ID!r} was already used by job",
            ({"prompt": fox, "client_job_id": USED_CLIENT_ID},),
            (fox, "--client-job-id", USED_CLIENT_ID),
            cli_key="client_job_id",
            batch_key="client_job_id",
        ),
        Case(
            "client_job_id repeated inside one batch",
            "[1].client_job_id",
            "'suite-batch-dup' repeats item [0]",
            (
                {"prompt": "first of two", "client_job_id": "suite-batch-dup"},
                {"prompt": "second of two", "client_job_id": "suite-batch-dup"},
            ),
            cli_file=False,  # the CLI enqueues both: see test_cli_refuses_a_client_job_id_repeated_in_one_file
        ),
        # ---- JSON-lines files
        Case(
            "JSONL line not JSON",
            "request",
            "Invalid JSON",
            ("this is not json",),
            cli_key="line 1",
            cli_fragment="not valid JSON",
        ),
        Case(
            "JSONL line a JSON array",
            "request",
            "Input should be an object",
            ('["a red fox", 5]',),
            cli_key="line 1",
            cli_fragment="must be a JSON object",
        ),
        Case(
            "JSONL line a JSON number",
            "request",
            "Input should be an object",
            ("42",),
            cli_key="line 1",
            cli_fragment="must be a JSON object",
        ),
        Case(
            "JSONL line with a raw NUL byte",
            "request",
            "Invalid JSON",
            (b'{"prompt": "a fox\x00"}',),
            cli_key="line 1",
            cli_fragment="not valid JSON",
        ),
        Case(
            "JSONL file not UTF-8",
            "request",
            "Invalid JSON",
            (b'{"prompt": "caf\xe9 \xff\xfe"}',),
            cli_key="file",
            cli_fragment="cannot read",
        ),
        Case(
            "JSONL file empty",
            "request",
            "Invalid JSON",
            ("",),
            cli_key="file",
            cli_fragment="holds no requests",
        ),
        Case(
            "JSONL bad field on line 3 after 2 good lines",
            "[2].duration",
            f"99 s is not supported by {SEEDANCE}",
            ({"prompt": "line one"}, {"prompt": "line two", "duration": 8}, {"prompt": "line three", "duration": 99}),
            cli_key="line 3: duration",
        ),
    ]


# --------------------------------------------------------------------------- checks


def _named(problems: dict[str, str], key: str, fragment: str) -> str | None:
    """None if `problems` names `key` with a message holding `fragment`; else what is wrong."""
    if key not in problems:
        return f"{key!r} not named; problems: {problems}"
    if fragment not in problems[key]:
        return f"{key!r}: {problems[key]!r} lacks {fragment!r}"
    return None


def check_api(vq: VideoQueue, case: Case) -> tuple[list[str], bool]:
    """Send the case through the API: the failures found (none: refused as expected), and
    whether it was also sent behind a good request with submit_many."""
    failures: list[str] = []
    try:
        requests = [VideoRequest.parse(line) for line in case.lines]
    except InvalidRequestError as exc:  # refused while parsing: the shape is wrong
        why = _named(exc.problems, case.field, case.fragment)
        return ([f"API parse: {why}"] if why else []), False

    try:
        if len(requests) == 1:
            vq.submit(requests[0])
        else:
            vq.submit_many(requests)
    except InvalidRequestError as exc:
        why = _named(exc.problems, case.field, case.fragment)
        if why:
            failures.append(f"API submit: {why}")
    else:
        failures.append("API submit: ACCEPTED")

    if len(requests) == 1:  # the same request behind a good one in a batch: nothing of the batch goes
        good = VideoRequest(prompt="a good request in front of a bad one")
        try:
            vq.submit_many([good, requests[0]])
        except InvalidRequestError as exc:
            why = _named(exc.problems, case.batch_key or f"[1].{case.field}", case.fragment)
            if why:
                failures.append(f"API submit_many: {why}")
        else:
            failures.append("API submit_many: ACCEPTED")
    return failures, len(requests) == 1


def _flat(text: str) -> str:
    return " ".join(text.split())


def check_cli(result: subprocess.CompletedProcess[str], key: str, fragment: str) -> str | None:
    """None if the CLI refused naming `key` with `fragment`; else what is wrong."""
    stderr = _flat(result.stderr)
    if result.returncode != 2:
        return f"exit {result.returncode}, stdout {result.stdout[:200]!r}, stderr {stderr[-400:]!r}"
    if f"invalid {key}: " not in stderr:
        return f"{key!r} not named: {stderr[:400]!r}"
    if _flat(fragment) not in stderr:
        return f"{fragment!r} not in {stderr[:400]!r}"
    if "nothing was enqueued" not in stderr:
        return f"no 'nothing was enqueued': {stderr[:400]!r}"
    return None


def cli_refuses(stack: Stack, args: tuple[str, ...], key: str, fragment: str) -> str | None:
    return check_cli(run(stack, *args), key, fragment)


def write_jsonl(path: Path, lines: Iterable[Line]) -> Path:
    parts = [
        json.dumps(line).encode() if isinstance(line, dict) else line.encode() if isinstance(line, str) else line
        for line in lines
    ]
    path.write_bytes(b"\n".join(parts) + (b"\n" if parts != [b""] else b""))
    return path


def _parallel(jobs: list[Callable[[], str | None]]) -> list[str | None]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda job: job(), jobs))


# --------------------------------------------------------------------------- the suite


def test_bad_input_suite(local_stack: Stack, tmp_path: Path) -> None:
    stack = local_stack
    stack.extra_env["COLUMNS"] = "20000"  # rich wraps stderr at 80 columns when it is not a terminal
    vq = stack.queue()
    client = raw_client()

    # The one good job of the suite: it takes the client job id the duplicates will reuse.
    empty = snapshot(client)
    good = vq.submit(VideoRequest(prompt="the one good job of the bad-input suite", client_job_id=USED_CLIENT_ID))
    before = snapshot(client)
    assert queue_lengths(before)[QUEUE_SUBMIT] == queue_lengths(empty)[QUEUE_SUBMIT] + 1
    assert keys.job_key(good.id).encode() in before

    inp = make_inputs(stack, tmp_path)
    table = cases(inp)
    assert len({c.name for c in table}) == len(table) >= 30

    # Python API, one case after another.
    failures: dict[str, list[str]] = {}
    batch_runs = 0
    for case in table:
        failures[case.name], in_batch = check_api(vq, case)
        batch_runs += in_batch
    api_refused = sum(not f for f in failures.values())

    # The CLI: every case as a --file, and as options where it can be written so.
    cli_jobs: list[tuple[str, str, Callable[[], str | None]]] = []
    for index, case in enumerate(table):
        fragment = case.cli_fragment or case.fragment
        if case.cli_file:
            path = write_jsonl(tmp_path / f"case-{index:02d}.jsonl", case.lines)
            file_args = ("submit", "--file", str(path))
            cli_jobs.append((case.name, "--file", partial(cli_refuses, stack, file_args, case.file_key, fragment)))
        if case.args:
            key = case.cli_key or case.field
            cli_jobs.append((case.name, "options", partial(cli_refuses, stack, ("submit", *case.args), key, fragment)))

    # Unknown job ids: status, wait and cancel name the id, in the API and the CLI.
    for name, api_call, command in unknown_id_cases(vq, good.id):
        why = check_unknown_api(api_call)
        failures[name] = [f"API: {why}"] if why else []
        cli_jobs.append((name, command[0], partial(check_unknown_cli, stack, command)))

    cli_results = _parallel([job for _, _, job in cli_jobs])
    for (name, how, _), why in zip(cli_jobs, cli_results, strict=True):
        if why:
            failures[name].append(f"CLI {how}: {why}")

    after = snapshot(client)
    changed = changed_keys(before, after)
    enqueued = sum(queue_lengths(after).values()) - sum(queue_lengths(before).values())
    cli_refused = sum(why is None for why in cli_results)
    bad = {name: f for name, f in failures.items() if f}
    unknown_cases = len(failures) - len(table)

    print(
        f"\nbad input: {len(failures)} cases, {len(failures) - len(bad)} refused with the field named, "
        f"{enqueued} messages enqueued, {len(changed)} keys changed\n"
        f"  {len(table)} bad requests + {unknown_cases} unknown job ids (status, status of known+unknown, wait, "
        f"cancel); API: {api_refused}/{len(table)} requests refused with InvalidRequestError naming the field "
        f"(+{batch_runs} also behind a good request in submit_many), unknown ids raise UnknownJobError naming "
        f"the id; CLI: {cli_refused}/{len(cli_results)} runs (--file and options) exit 2 naming the field "
        f"and 'nothing was enqueued'; Redis compared key by key: {len(after)} keys, queues {queue_lengths(after)}"
    )
    assert not bad, "\n".join(f"{name}: {'; '.join(f)}" for name, f in bad.items())
    assert changed == [], changed
    assert enqueued == 0
    assert before == after


def unknown_id_cases(vq: VideoQueue, known: str) -> list[tuple[str, Callable[[], object], tuple[str, ...]]]:
    """(name, API call, CLI command) for each way of asking about a job that does not exist."""
    return [
        ("unknown job id: status", lambda: vq.get(UNKNOWN_JOB), ("status", UNKNOWN_JOB)),
        (
            "unknown job id among known ones: status",
            lambda: vq.get_many([known, UNKNOWN_JOB]),
            ("status", known, UNKNOWN_JOB),
        ),
        (
            "unknown job id: wait",
            lambda: vq.wait([UNKNOWN_JOB], timeout=1),
            ("wait", "--timeout", "1", UNKNOWN_JOB),
        ),
        ("unknown job id: cancel", lambda: vq.cancel(UNKNOWN_JOB), ("cancel", UNKNOWN_JOB)),
    ]


def check_unknown_api(call: Callable[[], object]) -> str | None:
    try:
        call()
    except UnknownJobError as exc:
        if exc.job_ids != [UNKNOWN_JOB] or UNKNOWN_JOB not in str(exc):
            return f"names {exc.job_ids} / {exc}"
        return None
    return "ACCEPTED"


def check_unknown_cli(stack: Stack, command: tuple[str, ...]) -> str | None:
    result = run(stack, *command)
    stderr = _flat(result.stderr)
    if result.returncode != 2:
        return f"{command}: exit {result.returncode}: {stderr[-300:]!r}"
    if f"unknown job id(s): {UNKNOWN_JOB}" not in stderr:
        return f"{command}: id not named: {stderr[:300]!r}"
    return None


# --------------------------------------------------------------------------- findings
# Bad input this suite found the product accepting, or refusing badly; fixed since, kept
# as regressions.


def test_cli_refuses_a_client_job_id_repeated_in_one_file(local_stack: Stack, tmp_path: Path) -> None:
    client = raw_client()
    before = snapshot(client)
    path = write_jsonl(
        tmp_path / "dup.jsonl",
        [
            {"prompt": "first of two", "client_job_id": "dup-in-file"},
            {"prompt": "second", "client_job_id": "dup-in-file"},
        ],
    )
    result = run(local_stack, "submit", "--file", str(path))
    after = snapshot(client)
    assert check_cli(result, "line 2: client_job_id", "repeats") is None, queue_lengths(after)
    assert changed_keys(before, after) == []


@pytest.mark.parametrize(
    ("command", "named"),
    [
        (["submit", "a fox", "--model", "[/x]"], "invalid model: unknown model '[/x]'"),
        (["submit", "a fox", "--provider", "[/x]"], "invalid provider: unknown provider '[/x]'"),
        (["status", "[/x]"], "unknown job id(s): [/x]"),
    ],
)
def test_cli_names_a_refused_value_that_looks_like_markup(local_stack: Stack, command: list[str], named: str) -> None:
    local_stack.extra_env["COLUMNS"] = "20000"
    client = raw_client()
    before = snapshot(client)
    result = run(local_stack, *command)
    assert changed_keys(before, snapshot(client)) == []
    assert result.returncode == 2, _flat(result.stderr)[-300:]
    assert named in _flat(result.stderr)


FORMERLY_ACCEPTED = [
    pytest.param(
        {"prompt": "a fox", "provider": "veo", "negative_prompt": "blur\x00\x07"},
        "negative_prompt",
        id="negative_prompt-with-control-bytes",
    ),
    pytest.param(
        {"prompt": "a fox", "provider": "veo", "negative_prompt": "   "},
        "negative_prompt",
        id="negative_prompt-whitespace-only",
    ),
    pytest.param(
        {"prompt": "a fox", "tags": ["campaign\x00a"]},
        "tags",
        id="tag-with-control-bytes",
    ),
    pytest.param(
        {"prompt": "\u200b\u200b\u2060"},
        "prompt",
        id="prompt-of-invisible-characters-only",
    ),
]


@pytest.mark.parametrize(("data", "field"), FORMERLY_ACCEPTED)
def test_bad_input_found_by_this_suite_is_refused(local_stack: Stack, data: dict[str, Any], field: str) -> None:
    client = raw_client()
    before = snapshot(client)
    vq = local_stack.queue()
    with pytest.raises(InvalidRequestError) as info:
        vq.submit(VideoRequest.parse(data))
    assert field in info.value.problems
    assert changed_keys(before, snapshot(client)) == []


def test_snapshot_sees_every_kind_of_change(local_stack: Stack) -> None:
    """The snapshot helper itself: any write of any type shows up."""
    client = raw_client()
    r: Any = client
    base = snapshot(client)
    writes: list[Callable[[], object]] = [
        lambda: r.set("suite:s", b"\x00\xff"),
        lambda: r.hset("suite:h", "f", "v"),
        lambda: r.rpush("suite:l", "m"),
        lambda: r.sadd("suite:set", "m"),
        lambda: r.zadd("suite:z", {"m": 1.5}),
        lambda: r.xadd("suite:x", {"f": "v"}),
        lambda: r.expire("suite:s", 100),
        lambda: r.zadd("suite:z", {"m": 2.5}),
        lambda: r.rpush("suite:l", "m"),
    ]
    previous = base
    for write in writes:
        write()
        now = snapshot(client)
        assert now != previous
        previous = now
