"""`videoqueue doctor`: can this deployment run jobs? Each check answers ok, warn or fail
with a one-line detail, and the report ends with a verdict.

- redis: reachable, its version, and whether it keeps what it holds (AOF on, no eviction)
- broker: reachable (only when BROKER_URL names another server than REDIS_URL)
- storage: a probe object written, read back and deleted through the configured backend (with
  the workers' own S3 client); a store that refuses boto3's checksum headers names S3_CHECKSUMS
- provider byteplus / veo: the configured credentials, tried with one cheap authenticated call
- namespace: the deployment (VQ_NAMESPACE) whose keys and queues every other check looks at
- workers: which workers answer, and whether every queue has a consumer
- worker config: the workers registered in the namespace with their provider and storage
  fingerprints (worker/registry.py), and any configured otherwise than this shell

Details never carry a secret: they name hosts, not credentials, and pass through
`worker.logs.redact` all the same.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from videoqueue import namespace
from videoqueue.endpoints import Endpoint, provider_endpoint, storage_endpoint
from videoqueue.job import ErrorCode
from videoqueue.settings import Settings
from worker import registry
from worker.logs import redact

# A well-formed operation id that no operation has: NOT_FOUND proves the key was accepted.
PROBE_OPERATION_ID = "00000000-0000-4000-8000-000000000000"
PROVIDER_PROBE_TIMEOUT_S = 10.0
_STEP_ROLES = {
    "submit": "new jobs are never submitted",
    "poll": "running jobs are never polled",
    "store": "finished videos are never stored",
}


class Status(StrEnum):
    """The outcome of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One check's outcome and a one-line explanation."""

    name: str
    status: Status
    detail: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"name": self.name, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class DoctorReport:
    """Every check's outcome, and the verdict."""

    checks: tuple[Check, ...]

    def named(self, name: str) -> Check:
        """The check called `name`."""
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return not any(c.status is Status.FAIL for c in self.checks)

    @property
    def verdict(self) -> str:
        """One line: ready, ready with warnings, or not ready and why."""
        failed = [c.name for c in self.checks if c.status is Status.FAIL]
        warned = [c.name for c in self.checks if c.status is Status.WARN]
        if failed:
            return f"NOT READY: {len(failed)} check(s) failed ({', '.join(failed)})"
        if warned:
            return f"ready, with {len(warned)} warning(s) ({', '.join(warned)})"
        return f"ready: all {len(self.checks)} checks ok"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ok, verdict and the checks."""
        return {"ok": self.ok, "verdict": self.verdict, "checks": [c.to_dict() for c in self.checks]}

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        """One line per check, then the verdict."""
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [f"{c.status.value:<4}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines) + "\n"


def safe_url(url: str) -> str:
    """`url` without its user and password (and a note that it had one)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return redact(url)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    note = " (with credentials)" if parts.username or parts.password else ""
    return f"{parts.scheme}://{netloc}{parts.path}{note}"


def _guarded(name: str, check: Callable[[], Check]) -> Check:
    try:
        result = check()
    except Exception as exc:  # noqa: BLE001 - a check that breaks is a failed check, not a crash
        return Check(name, Status.FAIL, redact(f"check crashed: {type(exc).__name__}: {exc}"))
    return Check(result.name, result.status, redact(result.detail))


# -- redis and broker ---------------------------------------------------------------------------


def check_redis(settings: Settings) -> Check:
    """Ping, version, persistence (AOF) and eviction policy of the job store's Redis."""
    import redis

    name = "redis"
    where = safe_url(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        version = info.get("redis_version", "?")
        head = f"redis {version} at {where}"
        try:
            config: dict[str, str] = client.config_get("appendonly")  # type: ignore[assignment]
            config.update(client.config_get("maxmemory*"))  # type: ignore[arg-type]
        except redis.ResponseError:
            return Check(name, Status.WARN, f"{head}; CONFIG is disabled, so AOF and eviction cannot be checked")
    except redis.RedisError as exc:
        return Check(name, Status.FAIL, f"cannot reach {where}: {exc}")
    finally:
        client.close()
    problems = []
    if config.get("appendonly") != "yes":
        problems.append(
            "AOF off: a Redis restart loses the jobs and messages written since the last snapshot "
            "(run redis-server --appendonly yes)"
        )
    policy = config.get("maxmemory-policy", "noeviction")
    if config.get("maxmemory", "0") != "0" and policy != "noeviction":
        problems.append(f"maxmemory-policy {policy} may evict job records and queued messages (use noeviction)")
    if problems:
        return Check(name, Status.WARN, f"{head}; " + "; ".join(problems))
    return Check(name, Status.OK, f"{head}, AOF on")


def check_broker(settings: Settings) -> Check:
    """A connection to BROKER_URL, when it is not REDIS_URL."""
    from kombu import Connection

    name = "broker"
    url = settings.effective_broker_url
    where = safe_url(url)
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=1, timeout=5)
    except Exception as exc:  # noqa: BLE001 - kombu raises transport-specific errors
        return Check(name, Status.FAIL, f"cannot reach {where}: {exc}")
    return Check(name, Status.OK, f"reachable at {where}")


# -- storage ------------------------------------------------------------------------------------


def check_storage(settings: Settings) -> Check:
    """Write, read back and delete a small probe object through the configured backend."""
    from worker.storage import StorageError, open_storage

    name = "storage"
    try:
        storage = open_storage(settings)
    except ValueError as exc:
        return Check(name, Status.FAIL, str(exc))
    key = f"_doctor/probe-{uuid.uuid4().hex}.json"
    probe = {"videoqueue_doctor": uuid.uuid4().hex, "written_at": time.time()}
    where = storage.uri(key)
    try:
        stored = storage.put_json(key, probe)
        size = storage.size(key)
    except StorageError as exc:
        return Check(name, Status.FAIL, f"cannot write to {settings.storage_url}: {exc}")
    if size != stored.size:
        return Check(name, Status.FAIL, f"wrote {stored.size} bytes to {where} but found {size}")
    try:
        body = _read_back(storage, key)
    except Exception as exc:  # noqa: BLE001 - local I/O or S3 errors alike
        return Check(name, Status.FAIL, f"wrote {where} but cannot read it back: {exc}{_checksum_hint(exc, settings)}")
    if body is not None and json.loads(body) != probe:
        return Check(name, Status.FAIL, f"read back something else than was written to {where}")
    try:
        deleted = _delete(storage, key)
    except Exception as exc:  # noqa: BLE001
        hint = _checksum_hint(exc, settings)
        return Check(name, Status.WARN, f"wrote and read back {where}, but cannot delete it: {exc}{hint}")
    if not deleted:
        return Check(name, Status.WARN, f"wrote {where}; this backend offers no read-back or delete, remove it by hand")
    return Check(name, Status.OK, f"wrote, read back and deleted a probe under {settings.storage_url}")


def _checksum_hint(exc: BaseException, settings: Settings) -> str:
    """The setting to change when S3 refused boto3's checksum headers (else empty)."""
    from worker.storage.s3 import checksum_hint

    return checksum_hint(exc, settings.effective_s3_checksums)


def _local_path(uri: str) -> Path:
    return Path(url2pathname(urlsplit(uri).path))


def _s3_location(storage: Any, key: str) -> tuple[str, str]:
    bucket: str = storage.bucket
    return bucket, storage.uri(key).removeprefix(f"s3://{bucket}/")


def _read_back(storage: Any, key: str) -> bytes | None:
    from worker.storage.local import LocalStorage

    if isinstance(storage, LocalStorage):
        return _local_path(storage.uri(key)).read_bytes()
    from worker.storage.s3 import S3Storage

    if isinstance(storage, S3Storage):
        bucket, s3_key = _s3_location(storage, key)
        return storage.client.get_object(Bucket=bucket, Key=s3_key)["Body"].read()
    return None


def _delete(storage: Any, key: str) -> bool:
    from worker.storage.local import LocalStorage

    if isinstance(storage, LocalStorage):
        path = _local_path(storage.uri(key))
        path.unlink()
        with contextlib.suppress(OSError):  # not empty: another doctor's probe, or someone's file
            path.parent.rmdir()
        return True
    from worker.storage.s3 import S3Storage

    if isinstance(storage, S3Storage):
        bucket, s3_key = _s3_location(storage, key)
        storage.client.delete_object(Bucket=bucket, Key=s3_key)
        return True
    return False


# -- providers ----------------------------------------------------------------------------------


def _unconfigured(name: str, provider: str, settings: Settings, what: str) -> Check:
    if settings.default_provider == provider:
        return Check(name, Status.WARN, f"{what} not set, and {provider} is DEFAULT_PROVIDER: its jobs fail with auth")
    return Check(name, Status.OK, f"not configured ({what} not set); {provider} jobs would fail with auth")


def check_byteplus(settings: Settings) -> Check:
    """One `tasks.list(page_size=1)` with the configured ModelArk key (SDK retries off)."""
    name = "provider byteplus"
    if settings.byteplus_api_key is None:
        return _unconfigured(name, "byteplus", settings, "BYTEPLUS_API_KEY")
    import httpx
    from byteplussdkarkruntime import Ark
    from byteplussdkarkruntime._exceptions import ArkAPIError, ArkAPIStatusError

    from worker.providers.byteplus import map_ark_error

    where = safe_url(settings.byteplus_base_url)
    client = Ark(
        base_url=settings.byteplus_base_url,
        api_key=settings.byteplus_api_key.get_secret_value(),
        max_retries=0,
        timeout=httpx.Timeout(PROVIDER_PROBE_TIMEOUT_S, connect=5.0),
    )
    try:
        client.content_generation.tasks.list(page_size=1)
    except ArkAPIError as exc:
        error = map_ark_error(exc)
        status = f"HTTP {exc.status_code} " if isinstance(exc, ArkAPIStatusError) else ""
        said = f"{status}{error.provider_code or ''}: {error.message}".strip(": ")
        if error.code is ErrorCode.AUTH:
            return Check(name, Status.FAIL, f"BYTEPLUS_API_KEY rejected by {where} ({said})")
        if error.code is ErrorCode.RATE_LIMITED:
            return Check(name, Status.WARN, f"key accepted by {where}, but it is rate limiting ({said})")
        if error.code is ErrorCode.TIMEOUT:
            return Check(name, Status.FAIL, f"cannot reach {where}: {error.message}")
        if error.code is ErrorCode.NOT_FOUND:
            return Check(name, Status.FAIL, f"no ModelArk task API at {where} (check BYTEPLUS_BASE_URL): {said}")
        return Check(name, Status.WARN, f"{where} answered an error, the key could not be confirmed ({said})")
    finally:
        client.close()
    return Check(name, Status.OK, f"key accepted by {where} (tasks.list answered)")


def check_veo(settings: Settings) -> Check:
    """fetchPredictOperation of a made-up operation: NOT_FOUND means the credentials passed,
    401/403 (or Google's API_KEY_INVALID) that they did not."""
    name = "provider veo"
    if settings.google_api_key is None and not settings.google_cloud_project:
        return _unconfigured(name, "veo", settings, "GOOGLE_API_KEY or GOOGLE_CLOUD_PROJECT")
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types

    from videoqueue.catalog import load_catalog
    from worker.providers.veo import map_genai_error

    model = load_catalog().default_model("veo") or "veo-3.1-fast-generate-001"
    resource = f"publishers/google/models/{model}"
    options = types.HttpOptions(
        base_url=settings.veo_base_url, timeout=int(PROVIDER_PROBE_TIMEOUT_S * 1000), retry_options=None
    )
    key = settings.google_api_key
    project, location = settings.google_cloud_project, settings.google_cloud_location
    if key is not None:
        mode, what = "express mode", "GOOGLE_API_KEY"
    else:
        mode, what = f"project {project} in {location}", "the application default credentials"
        resource = f"projects/{project}/locations/{location}/{resource}"
    where = safe_url(settings.veo_base_url) if settings.veo_base_url else "Vertex AI"
    # As the Veo adapter rebuilds an operation from its name between polls.
    operation = types.GenerateVideosOperation.model_validate({"name": f"{resource}/operations/{PROBE_OPERATION_ID}"})
    try:
        if key is not None:
            client = genai.Client(vertexai=True, api_key=key.get_secret_value(), http_options=options)
        else:
            client = genai.Client(vertexai=True, project=project, location=location, http_options=options)
        with client:
            client.operations.get(operation)
    except genai_errors.APIError as exc:
        said = f"{exc.code} {exc.status or ''}: {exc.message or ''}".strip()
        code = map_genai_error(exc).code
        if code is ErrorCode.NOT_FOUND:
            return Check(name, Status.OK, f"{what} accepted by {where}, {mode} (made-up operation: {exc.code})")
        rejected_key = exc.code == 400 and "api key" in (exc.message or "").lower()
        if code is ErrorCode.AUTH or rejected_key:
            return Check(name, Status.FAIL, f"{what} rejected by {where}, {mode} ({said})")
        if code is ErrorCode.RATE_LIMITED:
            return Check(name, Status.WARN, f"{where} is rate limiting, {mode} ({said})")
        return Check(name, Status.WARN, f"{where} answered an error, credentials not confirmed, {mode} ({said})")
    except Exception as exc:  # noqa: BLE001 - transport errors, missing default credentials
        error = map_genai_error(exc)
        if error.code is ErrorCode.TIMEOUT:
            return Check(name, Status.FAIL, f"cannot reach {where}: {error.message}")
        return Check(name, Status.FAIL, f"cannot call {where}, {mode}: {type(exc).__name__}: {exc}")
    return Check(name, Status.OK, f"{what} accepted by {where}, {mode}")


# -- workers ------------------------------------------------------------------------------------


def check_workers(settings: Settings, timeout: float = 2.0) -> Check:
    """Which workers answer a broadcast within `timeout`, and which queues they consume."""
    from celery import Celery

    name = "workers"
    app = Celery("videoqueue-doctor", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.broker_connection_timeout = 3
    app.conf.broker_connection_max_retries = 1
    # Only this namespace's workers listen on its control exchange.
    app.conf.update(**namespace.celery_names())
    try:
        replies: dict[str, Any] = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception as exc:  # noqa: BLE001 - kombu/redis raise transport-specific errors
        where = safe_url(settings.effective_broker_url)
        return Check(name, Status.FAIL, f"cannot ask the workers through {where}: {exc}")
    finally:
        app.close()
    if not replies:
        return Check(
            name,
            Status.FAIL,
            f"no worker answered within {timeout:g} s: queued jobs wait until one starts",
        )
    consumers = {queue: 0 for queue in namespace.queues()}
    for queues in replies.values():
        for queue in queues or []:
            queue_name = queue.get("name") if isinstance(queue, dict) else None
            if queue_name in consumers:
                consumers[queue_name] += 1
    nodes = sorted(replies)
    shown = ", ".join(nodes[:3]) + (f" +{len(nodes) - 3} more" if len(nodes) > 3 else "")
    counts = ", ".join(f"{queue} {count}" for queue, count in consumers.items())
    head = f"{len(nodes)} worker(s) answered ({shown}); consumers per queue: {counts}"
    backlog = _backlog(settings)
    if backlog:
        head += f"; waiting: {backlog}"
    idle = [queue for queue, count in consumers.items() if count == 0]
    if idle:
        roles = dict(zip(namespace.queues(), _STEP_ROLES.values(), strict=True))
        why = "; ".join(f"no worker consumes {queue}: {roles[queue]}" for queue in idle)
        return Check(name, Status.WARN, f"{head}; {why}")
    return Check(name, Status.OK, head)


def _backlog(settings: Settings) -> str:
    """Messages waiting in each queue, when the broker is Redis (else empty)."""
    url = settings.effective_broker_url
    if not url.startswith(("redis://", "rediss://")):
        return ""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        return ", ".join(f"{queue} {client.llen(queue)}" for queue in namespace.queues())
    except redis.RedisError:
        return ""
    finally:
        client.close()


def check_namespace(settings: Settings) -> Check:
    """The deployment this report is about: its key prefix and queues."""
    name = settings.vq_namespace
    detail = f"{name!r}: keys {namespace.key_prefix(name)}*, queues {', '.join(namespace.queues(name))}"
    if name == namespace.DEFAULT:
        detail += " (VQ_NAMESPACE unset or default)"
    return Check("namespace", Status.OK, detail)


def _shell_endpoints(settings: Settings) -> dict[str, Endpoint]:
    return {name: provider_endpoint(name, settings) for name in registry.PROVIDERS} | {
        "storage": storage_endpoint(settings)
    }


def check_worker_config(settings: Settings) -> Check:
    """The workers registered in the namespace with their provider and storage endpoints
    (host and fingerprint), and a warning for each that differs from this shell's."""
    import redis

    client = redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_connect_timeout=3, socket_timeout=3)
    try:
        workers = registry.registered(client)
    finally:
        client.close()
    return compare_workers(workers, settings)


def compare_workers(workers: list[registry.WorkerEntry], settings: Settings) -> Check:
    """The `worker config` check for these registered workers against `settings`."""
    name = "worker config"
    where = f"namespace {settings.vq_namespace!r}"
    if not workers:
        return Check(
            name,
            Status.WARN,
            f"no worker registered in {where} (a worker registers when it starts, {registry.TTL_S} s TTL)",
        )
    mine = _shell_endpoints(settings)
    listed: list[str] = []
    differ: list[str] = []
    for worker in workers:
        shown: list[str] = []
        for kind, shell in mine.items():
            theirs = worker.endpoint(kind)
            if theirs is None:
                continue
            shown.append(f"{kind} {theirs.host} {theirs.fingerprint}")
            if theirs.fingerprint != shell.fingerprint:
                differ.append(f"{worker.node} {kind} {theirs.describe()}, this shell {shell.describe()}")
        listed.append(f"{worker.node} [{', '.join(shown)}]")
    head = f"{len(workers)} worker(s) registered in {where}: {'; '.join(listed)}"
    if differ:
        return Check(name, Status.WARN, f"{head}; configured otherwise than this shell: {'; '.join(differ)}")
    return Check(name, Status.OK, f"{head}; all configured as this shell")


# -- all together -------------------------------------------------------------------------------


def run_doctor(settings: Settings, *, inspect_timeout: float = 2.0) -> DoctorReport:
    """Run every check against `settings`, in their namespace, and return the report
    (nothing is printed)."""
    with namespace.using(settings.vq_namespace):
        return _run_checks(settings, inspect_timeout)


def _run_checks(settings: Settings, inspect_timeout: float) -> DoctorReport:
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("namespace", lambda: check_namespace(settings)),
        ("redis", lambda: check_redis(settings)),
    ]
    if settings.broker_url and settings.broker_url != settings.redis_url:
        checks.append(("broker", lambda: check_broker(settings)))
    checks += [
        ("storage", lambda: check_storage(settings)),
        ("provider byteplus", lambda: check_byteplus(settings)),
        ("provider veo", lambda: check_veo(settings)),
        ("workers", lambda: check_workers(settings, inspect_timeout)),
        ("worker config", lambda: check_worker_config(settings)),
    ]
    return DoctorReport(tuple(_guarded(name, check) for name, check in checks))
