"""Reliability suite: secrets.

A mixed batch (Seedance and Veo, image inputs, one job the provider fails, one cancelled)
runs through a real worker into S3 (moto) while Flower watches. The worker has the
provider keys and the S3 secret; afterwards none of them may appear anywhere we can read:
every key and value of the Redis database (read by type, during and after the run,
including the Celery queues, the `unacked` hash and the base64 bodies of the broker
messages), every log file (workers, simulator, moto, Flower), what Flower shows (API,
pages, metrics), the job records, what the CLI prints and every object in the bucket
(videos and manifests, with their metadata).

Run: VQ_TEST_REDIS_URL=redis://127.0.0.1:6379/10 .venv/bin/pytest -q -s tests/integration/test_suite_secrets.py
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producer import JobStatus, VideoRequest
from producer.webhooks import verify
from simulator.stack import ManagedProcess, free_port, http_ok, start_worker, wait_until
from tests.integration.conftest import REDIS_URL, SIM_GOOGLE_KEY, SIM_KEY, UNACKED, S3Server, Stack
from tests.integration.helpers import redis_value, wait_status
from tests.integration.receiver import Receiver
from tests.integration.test_cli import run
from videoqueue import namespace
from videoqueue.job import QUEUE_SUBMIT
from worker.callback_url import callback_token

pytestmark = pytest.mark.integration

AWS_SECRET = "testing-secret"
# The values the worker (and Flower) get: the session simulator accepts only SIM_KEY and
# SIM_GOOGLE_KEY, so those constants are the keys, and the jobs succeeding proves they were used.
SECRETS = {
    "BYTEPLUS_API_KEY": SIM_KEY,
    "GOOGLE_API_KEY": SIM_GOOGLE_KEY,
    "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
    # Signs the webhook of one job below (its receiver on loopback, over http: allowed here).
    "WEBHOOK_SECRET": "whsec_" + base64.b64encode(b"secrets-suite-webhook-key-77e1c").decode(),
    # The workers sign each job's callback URL with it, the receiver checks with it; each
    # job's token (its HMAC) is looked for too, once the job ids are known.
    "CALLBACK_SECRET": "callback-secret-9e21d0",
}
FLOWER_USER, FLOWER_PASSWORD = "vq", "flower-pw-3c41"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


# --------------------------------------------------------------------------- the scanner


def _base64_fragments(secret: bytes) -> set[bytes]:
    """What `secret` looks like inside any base64 text, whatever its offset: for each of
    the three alignments, the characters that depend on the secret's bytes only."""
    found: set[bytes] = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + secret)
        start = -(-8 * shift // 6)  # first character made of the secret's bits only
        end = 8 * (shift + len(secret)) // 6
        inner = encoded[start:end]
        found |= {inner, inner.translate(bytes.maketrans(b"+/", b"-_"))}
    return found


def needles(secret: str) -> dict[bytes, str]:
    """Every form of `secret` we look for, with the name of the form."""
    raw = secret.encode()
    forms: dict[bytes, str] = {raw: "plain"}  # the first name of a pattern wins: plain is matched case-blind
    forms.setdefault(urllib.parse.quote(secret, safe="").encode(), "url-encoded")
    forms.setdefault(json.dumps(secret)[1:-1].encode(), "json-escaped")
    forms.setdefault(raw.hex().encode(), "hex")
    for fragment in sorted(_base64_fragments(raw)):
        forms.setdefault(fragment, "base64")
    return forms


NEEDLES = {name: needles(value) for name, value in SECRETS.items()}
_B64_TOKEN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def _decodings(blob: bytes) -> Iterable[bytes]:
    """The base64 tokens of `blob` decoded (broker message bodies, stored input images)."""
    for match in _B64_TOKEN.finditer(blob):
        token = match.group()
        padded = token + b"=" * (-len(token) % 4)
        for altchars in (b"+/", b"-_"):
            try:
                yield base64.b64decode(padded, altchars=altchars, validate=True)
            except (binascii.Error, ValueError):
                continue


@dataclass
class Scanner:
    """Looks for every secret in every blob it is given, base64 layers included, and counts
    what it read."""

    layers: int = 2  # how many base64 layers to decode and search again
    hits: list[str] = field(default_factory=list)
    bytes_by_source: Counter[str] = field(default_factory=Counter)
    items_by_source: Counter[str] = field(default_factory=Counter)
    decodings: int = 0

    def scan(self, source: str, where: str, blob: bytes | str) -> None:
        data = blob.encode("utf-8", "surrogatepass") if isinstance(blob, str) else blob
        self.bytes_by_source[source] += len(data)
        self.items_by_source[source] += 1
        self._search(f"{source}: {where}", data, self.layers)

    def _search(self, where: str, data: bytes, layers: int) -> None:
        lowered = data.lower()
        for name, forms in NEEDLES.items():
            for needle, form in forms.items():
                if needle in data or (form == "plain" and needle.lower() in lowered):
                    decoded = ", inside decoded base64" if layers < self.layers else ""
                    self.hits.append(f"{where}: {name} ({form}{decoded})")
        if layers > 0:
            for decoded_blob in _decodings(data):
                self.decodings += 1
                self._search(where, decoded_blob, layers - 1)


# --------------------------------------------------------------------------- Redis


@dataclass
class RedisScan:
    keys: set[bytes] = field(default_factory=set)
    scans: int = 0
    messages: set[str] = field(default_factory=set)  # broker message ids seen (queues and unacked)
    bodies: list[bytes] = field(default_factory=list)  # their decoded bodies (task arguments)
    unacked_seen: int = 0


def broker_message(value: bytes) -> tuple[str, bytes] | None:
    """(id, decoded body) of the kombu message in a queue item or an `unacked` entry."""
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):  # unacked: [message, exchange, key]
        data = data[0]
    if not (isinstance(data, dict) and "body" in data and isinstance(data.get("properties"), dict)):
        return None
    props = data["properties"]
    tag = str(props.get("delivery_tag") or (data.get("headers") or {}).get("id") or len(value))
    body = str(data["body"]).encode()
    if props.get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return tag, body


def _parts(value: Any) -> list[bytes]:
    """The bytes inside a value as helpers.redis_value reads it (scores and ids included
    where they are bytes; a sorted set's float scores are not)."""
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, tuple):
        return [part for item in value for part in _parts(item)]
    return []


def scan_redis(client: redis.Redis, scanner: Scanner, seen: RedisScan) -> None:
    """Every key of the test database and its whole value, read by type."""
    r: Any = client
    seen.scans += 1
    for key in r.scan_iter(match="*", count=1000):
        read = redis_value(r, key)
        if read is None:  # gone since SCAN
            continue
        kind, value = read
        seen.keys.add(key)
        where = f"{key.decode(errors='replace')} ({kind})"
        scanner.scan("redis", where, key)
        for part in _parts(value):
            scanner.scan("redis", where, part)
            message = broker_message(part)
            if message is None:
                continue
            tag, body = message
            scanner.scan("redis", f"{where}: message {tag} body", body)
            if tag not in seen.messages:
                seen.messages.add(tag)
                seen.bodies.append(body)
            seen.unacked_seen += key == UNACKED.encode()


# --------------------------------------------------------------------------- Flower


@dataclass
class Flower:
    url: str
    process: ManagedProcess

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", auth=(FLOWER_USER, FLOWER_PASSWORD), timeout=30)


def start_debug_worker(stack: Stack) -> ManagedProcess:
    """A worker on every queue logging at DEBUG, as JSON lines."""
    name = f"debug-{uuid.uuid4().hex[:6]}"
    argv = [
        str(Path(sys.executable).with_name("celery")),
        "-A",
        "worker",
        "worker",
        "--loglevel=DEBUG",
        "--concurrency=2",
        f"--hostname={name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    env = stack.env(LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    proc = ManagedProcess(name, argv, env, stack.log_dir / f"{name}.log")
    wait_until(lambda: " ready." in proc.log_text() or not proc.alive(), 60, f"worker {name}")
    if not proc.alive():
        raise RuntimeError(f"worker {name} exited:\n{proc.log_text()[-4000:]}")
    return proc


def start_flower(stack: Stack) -> Flower:
    port = free_port()
    argv = [
        str(Path(sys.executable).with_name("celery")),
        "-A",
        "worker",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
    ]
    # Flower gets the stack's whole environment, provider keys included: the worst case.
    env = stack.env(FLOWER_BASIC_AUTH=f"{FLOWER_USER}:{FLOWER_PASSWORD}")
    proc = ManagedProcess("flower", argv, env, stack.log_dir / f"flower-{uuid.uuid4().hex[:6]}.log")
    flower = Flower(f"http://127.0.0.1:{port}", proc)

    def ready() -> bool:
        if not proc.alive():
            return True
        try:
            return flower.get("/healthcheck").is_success
        except httpx.HTTPError:
            return False

    wait_until(ready, 60, "flower")
    if not proc.alive():
        raise RuntimeError(f"flower exited:\n{proc.log_text()[-4000:]}")
    return flower


def flower_pages(flower: Flower, worker_nodes: list[str]) -> dict[str, httpx.Response]:
    """Everything Flower shows about the run."""
    tasks = flower.get("/api/tasks").json()
    some_tasks = sorted(tasks)[:6]
    workers = flower.get("/api/workers?refresh=1").json()
    names = [name for name in workers if name.split("@")[0] in worker_nodes]
    assert len(names) == len(worker_nodes), (worker_nodes, list(workers))
    paths = [
        "/api/workers?refresh=1",
        "/api/tasks",
        "/api/task/types",
        "/api/queues/length",
        "/tasks",
        "/tasks/datatable?draw=1&start=0&length=1000&search%5Bvalue%5D=&order%5B0%5D%5Bcolumn%5D=0",
        "/workers",
        "/workers?json=1",
        *(f"/worker/{name}" for name in names),
        "/broker",
        "/metrics",
        *(f"/api/task/info/{task_id}" for task_id in some_tasks),
        *(f"/task/{task_id}" for task_id in some_tasks),
    ]
    pages = {path: flower.get(path) for path in paths}
    for path, response in pages.items():
        assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return pages


# --------------------------------------------------------------------------- the suite


def start_callbacks(stack: Stack, port: int) -> ManagedProcess:
    """`videoqueue callbacks` on `port`, stopped with the stack."""
    cli = str(Path(sys.executable).with_name("videoqueue"))
    argv = [cli, "callbacks", "--port", str(port), "--host", "127.0.0.1"]
    proc = ManagedProcess("callbacks", argv, stack.env(), stack.log_dir / "callbacks.log")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz") or not proc.alive(), 30, "callback receiver")
    assert proc.alive(), proc.log_text()
    stack.workers.append(proc)
    return proc


def test_secrets_suite(s3_stack: tuple[Stack, S3Server, str], tmp_path: Path) -> None:
    stack, s3, bucket = s3_stack
    stack.extra_env.update(
        {
            "BYTEPLUS_API_KEY": SECRETS["BYTEPLUS_API_KEY"],
            "GOOGLE_API_KEY": SECRETS["GOOGLE_API_KEY"],
            "AWS_SECRET_ACCESS_KEY": SECRETS["AWS_SECRET_ACCESS_KEY"],
            "WEBHOOK_SECRET": SECRETS["WEBHOOK_SECRET"],
            "WEBHOOK_ALLOW_HTTP": "true",
            "WEBHOOK_ALLOW_PRIVATE": "true",
            "COLUMNS": "2000",
        }
    )
    callbacks_port = free_port()
    stack.extra_env.update(
        {"CALLBACK_BASE_URL": f"http://127.0.0.1:{callbacks_port}", "CALLBACK_SECRET": SECRETS["CALLBACK_SECRET"]}
    )
    receiver = start_callbacks(stack, callbacks_port)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=False)
    scanner = Scanner()
    seen = RedisScan()

    flower = start_flower(stack)
    # Two workers: the default (INFO, text) takes submits; one at DEBUG with JSON lines does
    # everything, so provider polls, downloads and S3 uploads are logged at their most verbose.
    workers = [
        start_worker(f"info-{uuid.uuid4().hex[:6]}", stack.env(), stack.log_dir, concurrency=2, queues=[QUEUE_SUBMIT]),
        start_debug_worker(stack),
    ]
    stack.workers.extend(workers)
    vq = stack.queue(webhook_secret=SECRETS["WEBHOOK_SECRET"], webhook_allow_http=True, webhook_allow_private=True)
    webhooks_receiver = Receiver().start()
    image_file = tmp_path / "first.png"
    image_file.write_bytes(PNG)
    image_url = f"{stack.simulator.url}/_sim/image.png"

    jobs = vq.submit_many(
        [
            VideoRequest(prompt="secrets suite: seedance text", duration=5, webhook_url=webhooks_receiver.url),
            VideoRequest(prompt="secrets suite: seedance from a url", image_url=image_url, audio=False),
            VideoRequest(prompt="secrets suite: seedance from a file", image_file=str(image_file), tags=("secrets",)),
            VideoRequest(prompt="secrets suite: veo", provider="veo", duration=6),
            VideoRequest(
                prompt="secrets suite: veo with options",
                provider="veo",
                model="veo-3.1-generate-001",
                duration=4,
                negative_prompt="blur",
                person_generation="allow_adult",
            ),
            VideoRequest(prompt="secrets suite: unsafe [sim:fail]"),
            VideoRequest(prompt="secrets suite: held [sim:hold]"),
        ]
    )
    cli_submit = run(stack, "submit", "secrets suite: veo from the cli", "--provider", "veo", "--json")
    assert cli_submit.returncode == 0, cli_submit.stderr
    scanner.scan("cli", "submit --json", cli_submit.stdout + cli_submit.stderr)
    ids = [j.id for j in jobs] + [json.loads(cli_submit.stdout)[0]["id"]]
    held = jobs[-1]
    for job_id in ids:
        NEEDLES[f"callback token of {job_id}"] = needles(callback_token(SECRETS["CALLBACK_SECRET"], job_id))

    # Mid-flight: the held job is at the provider, polls are held in `unacked` by countdown.
    wait_status(vq, held.id, {"running"}, timeout=60)
    scan_redis(client, scanner, seen)
    vq.cancel(held.id)
    done = vq.wait(ids, timeout=180, poll_interval=0.3, on_update=lambda _: scan_redis(client, scanner, seen))
    by_prompt = {j.request.prompt: j for j in done}

    statuses = Counter(j.status for j in done)
    assert statuses == {JobStatus.SUCCEEDED: 6, JobStatus.FAILED: 1, JobStatus.CANCELLED: 1}, [
        (j.request.prompt, j.status, j.error) for j in done
    ]
    assert by_prompt["secrets suite: unsafe [sim:fail]"].status is JobStatus.FAILED
    assert by_prompt["secrets suite: held [sim:hold]"].status is JobStatus.CANCELLED
    assert {j.provider for j in done if j.status is JobStatus.SUCCEEDED} == {"byteplus", "veo"}
    # The webhook was signed with the secret (which the scans below must find nowhere).
    wait_until(lambda: len(webhooks_receiver.received) == 1, 30, "the webhook")
    webhooks_receiver.stop()
    assert verify(webhooks_receiver.received[0].headers, webhooks_receiver.received[0].body, SECRETS["WEBHOOK_SECRET"])

    # Flower: wait until it has seen every job's submit task, then read all it shows.
    def flower_saw_all() -> bool:
        text = flower.get("/api/tasks").text
        return all(job_id in text for job_id in ids)

    wait_until(flower_saw_all, 30, "flower to show every job's tasks")
    pages = flower_pages(flower, [w.name for w in workers])
    for path, response in pages.items():
        scanner.scan("flower", path, response.content)
    assert any(ids[0] in r.text for r in pages.values())

    # Job records, as the API and the CLI give them.
    for job in vq.get_many(ids):
        scanner.scan("job records", job.id, job.model_dump_json())
        scanner.scan("job records", job.id, json.dumps(job.public_dict(), default=str))
    for args in (
        ("status", *ids, "--json"),
        ("jobs", "--json", "--limit", "100"),
        ("costs", "--by", "model", "--json"),
    ):
        result = run(stack, *args)
        assert result.returncode in (0, 1), result.stderr
        scanner.scan("cli", " ".join(args[:1]), result.stdout + result.stderr)

    # S3: every object (videos, manifests) with its metadata.
    s3_client = s3.client()
    listed = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    manifests = 0
    for obj in listed:
        body = s3_client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
        head = s3_client.head_object(Bucket=bucket, Key=obj["Key"])
        scanner.scan("s3", obj["Key"], body)
        scanner.scan("s3", f"{obj['Key']} (metadata)", json.dumps(head.get("Metadata", {})))
        if obj["Key"].endswith(".json"):
            manifests += 1
            json.loads(body)
    assert manifests == 6, [o["Key"] for o in listed]

    # Stop Flower and the worker so their logs are complete, then the final Redis state and the logs.
    flower.process.stop()
    stack.stop()
    scan_redis(client, scanner, seen)
    log_lines = 0
    log_files = sorted(p for p in stack.log_dir.rglob("*") if p.is_file())
    for log_file in log_files:
        text = log_file.read_bytes()
        log_lines += text.count(b"\n")
        for number, line in enumerate(text.splitlines(), start=1):
            scanner.scan("logs", f"{log_file.name}:{number}", line)
    assert "callback: poll sent" in receiver.log_text()  # callbacks came, carrying tokens
    worker_logs = "".join(w.log_text() for w in workers)
    assert all(job_id in worker_logs for job_id in ids)  # the logs we read are the run's logs
    assert '"level": "DEBUG"' in workers[1].log_text()

    # The scan read real broker traffic: decoded message bodies carrying our job ids.
    assert sum(any(job_id.encode() in body for job_id in ids) for body in seen.bodies) >= len(ids)
    assert seen.unacked_seen > 0
    b, n = scanner.bytes_by_source, scanner.items_by_source
    print(
        f"\nsecrets: {len(SECRETS)} secrets ({', '.join(SECRETS)}), each looked for as "
        f"{'/'.join(str(len(f)) for f in NEEDLES.values())} byte patterns (plain case-blind, url, json, hex, "
        "base64 and urlsafe base64 at 3 offsets) and inside "
        f"every base64 token (2 layers, {scanner.decodings} decodings); "
        f"{len(done)} jobs ({ {s.value: c for s, c in statuses.items()} }); "
        f"Redis: {seen.scans} scans, {len(seen.keys)} distinct keys, {n['redis']} values, {b['redis']} bytes, "
        f"{len(seen.messages)} broker messages with decoded bodies ({seen.unacked_seen} sightings in unacked); "
        f"logs: {len(log_files)} files, {log_lines} lines, {b['logs']} bytes; "
        f"Flower: {len(pages)} responses, {b['flower']} bytes; "
        f"job records: {n['job records']} documents, {b['job records']} bytes; CLI output: {b['cli']} bytes; "
        f"S3: {len(listed)} objects ({manifests} manifests), {b['s3']} bytes; "
        f"{len(scanner.hits)} hits"
    )
    assert scanner.hits == [], "\n".join(scanner.hits[:50])


def test_the_scanner_finds_a_planted_key(local_stack: Stack) -> None:
    """The scanner is not blind: a key hidden the ways it could leak is found."""
    client = redis.Redis.from_url(REDIS_URL, decode_responses=False)
    r: Any = client
    body = base64.b64encode(json.dumps([["job-1"], {"api_key": SIM_KEY}, {}]).encode()).decode()
    message = json.dumps({"body": body, "properties": {"delivery_tag": "t1", "body_encoding": "base64"}})
    r.hset(UNACKED, "t1", json.dumps([json.loads(message), namespace.queue("poll"), namespace.queue("poll")]))
    r.rpush(
        namespace.queue("submit"),
        json.dumps({"body": base64.b64encode(b"x" * 7 + SIM_GOOGLE_KEY.encode()).decode(), "properties": {}}),
    )
    r.zadd("suite:z", {f"member-{AWS_SECRET.upper()}": 1})
    r.hset("suite:h", "field", json.dumps({"headers": {"secret": SECRETS["WEBHOOK_SECRET"]}}))
    r.set("suite:s", f"callback_url carried {SECRETS['CALLBACK_SECRET']} in the clear")
    scanner, seen = Scanner(), RedisScan()
    scan_redis(client, scanner, seen)
    found = {hit.split(": ")[-1].split(" ")[0] for hit in scanner.hits}
    assert found == set(SECRETS), scanner.hits
    assert seen.unacked_seen == 1 and len(seen.messages) == 2
    for name, value in SECRETS.items():  # inside base64 at any offset, without decoding
        for shift in range(3):
            text = base64.b64encode(b"\x01" * shift + value.encode() + b"tail").decode()
            for alphabet in (text, text.replace("+", "-").replace("/", "_")):
                one = Scanner(layers=0)
                one.scan("test", f"shift {shift}", f"prefix {alphabet} suffix")
                assert any(name in hit for hit in one.hits), (name, shift, alphabet)
