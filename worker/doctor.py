"""`videoqueue doctor`: can this deployment run jobs? Each check answers ok, warn or fail
with a one-line detail, and the report ends with a verdict.

- redis: reachable, its version, and whether it keeps what it holds (AOF on, no eviction)
- broker: reachable (only when BROKER_URL names another server than REDIS_URL)
- redis access: the job store's (and a Redis broker's) Redis on a non-loopback address must
  demand a password and should be reached over TLS (worker/redis_access.py)
- storage: the backend's own probe, a small object written, read back and deleted (with the
  workers' own S3 client); on S3 the calls a store makes (a multipart upload, an abort, reads),
  a refused one named with the IAM action it needs; a store that refuses boto3's checksum
  headers names S3_CHECKSUMS
- provider <name>, one per registered adapter: the configured credentials, tried with the
  adapter's own probe (one cheap authenticated call)
- namespace: the deployment (VQ_NAMESPACE) whose keys and queues every other check looks at
- workers: which workers answer, and whether every queue has a consumer
- worker config: the workers registered in the namespace with their provider and storage
  fingerprints (worker/registry.py), and any configured otherwise than this shell
- replication: the primary and its replicas (INFO replication)
- sentinels (with REDIS_SENTINELS): each sentinel, whether it answers and where it says the
  master is (SENTINEL MASTERS), and the sentinels they know of (SENTINEL SENTINELS)

Details never carry a secret: they name hosts, not credentials, and pass through
`worker.logs.redact` all the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from videoqueue import namespace, redisconn
from videoqueue.brokertls import broker_use_ssl
from videoqueue.endpoints import Endpoint
from videoqueue.queues import consumed_queues
from videoqueue.settings import Settings
from worker import registry
from worker.logs import redact
from worker.probe import Status, safe_url
from worker.providers import provider_endpoint, provider_names
from worker.providers.registry import adapter as provider_adapter
from worker.redis_access import RedisAccess, exposure_problems, probe_access
from worker.storage import storage_endpoint

__all__ = [
    "Check",
    "DoctorReport",
    "Status",
    "check_broker",
    "check_namespace",
    "check_provider",
    "check_redis",
    "check_redis_access",
    "check_replication",
    "check_sentinels",
    "check_storage",
    "check_worker_config",
    "check_workers",
    "compare_workers",
    "run_doctor",
    "safe_url",
]

PROVIDER_PROBE_TIMEOUT_S = 10.0
REDIS_TIMEOUT_S = 3.0

_STEP_ROLES = {
    "submit": "new jobs are never submitted",
    "poll": "running jobs are never polled",
    "store": "finished videos are never stored",
    "webhooks": "webhooks and completion tasks are never delivered",
}


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

    def to_text(self) -> str:
        """One line per check, then the verdict."""
        width = max((len(c.name) for c in self.checks), default=0)
        lines = [f"{c.status.value:<4}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines) + "\n"


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
    where = _redis_where(settings)
    client = redisconn.connect_settings(settings, decode_responses=False, timeout_s=REDIS_TIMEOUT_S)
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
        options = redisconn.broker_transport_options(settings)
        with Connection(
            url, connect_timeout=3, ssl=broker_use_ssl(url) or False, transport_options=options
        ) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=1, timeout=5)
    except Exception as exc:  # noqa: BLE001 - kombu raises transport-specific errors
        return Check(name, Status.FAIL, f"cannot reach {where}: {exc}")
    return Check(name, Status.OK, f"reachable at {where}")


def _sentinel_primary(settings: Settings) -> tuple[str, int] | None:
    """The primary the sentinels name now, or None when none does (the sentinels check says why)."""
    try:
        host, port = redisconn.sentinel(settings, REDIS_TIMEOUT_S).discover_master(settings.redis_sentinel_master)  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - reported by the sentinels and redis checks
        return None
    return str(host), int(port)


def _at_address(url: str, host: str, port: int) -> str:
    """`url` (REDIS_URL: credentials, database, options) pointed at host:port instead."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{address}" if userinfo else address))


def check_redis_access(
    settings: Settings,
    probe: Callable[[str], RedisAccess] = probe_access,
    primary: Callable[[Settings], tuple[str, int] | None] = _sentinel_primary,
) -> Check:
    """Whether the job store's Redis, and the broker's when it is another Redis, is safe to
    reach where it is reached: on a non-loopback address it must demand a password (warn if
    a client without one is served) and should be TLS (warn on redis://). With
    REDIS_SENTINELS that is the primary the sentinels name (REDIS_URL's host is unused)."""
    name = "redis access"
    store_url = settings.redis_url
    if settings.redis_sentinels:
        named = primary(settings)
        if named is None:
            return Check(
                name, Status.WARN, f"no sentinel names a primary for {settings.redis_sentinel_master!r}: not checked"
            )
        store_url = _at_address(settings.redis_url, *named)
    roles = {store_url: "job store"}
    broker = settings.effective_broker_url
    if broker.startswith(("redis://", "rediss://", "unix://")) and broker != settings.redis_url:
        roles[broker] = "broker"
    problems: list[str] = []
    seen: list[str] = []
    for url, role in roles.items():
        access = probe(url)
        where = f"{role} {safe_url(url)}"
        found = exposure_problems(access)
        problems += [f"{where} {problem}" for problem in found]
        if not found:
            how = "loopback" if access.loopback else "TLS" + (", password required" if access.open is False else "")
            seen.append(f"{where}: {how}")
    if problems:
        return Check(name, Status.WARN, "; ".join(problems))
    return Check(name, Status.OK, "; ".join(seen))


# -- redis memory -------------------------------------------------------------------------------

MEMORY_WARN_FRACTION = 0.8
"""`used_memory / maxmemory` from which the doctor warns: at 1.0 every write fails."""


def memory_problems(used: int, maxmemory: int, policy: str) -> list[str]:
    """What is wrong with a Redis's memory ceiling, given its INFO memory figures (`used`
    and `maxmemory` in bytes, 0 for no ceiling; `policy` its maxmemory-policy): [] when
    nothing is."""
    problems = []
    if maxmemory == 0:
        problems.append(
            "no maxmemory: Redis grows until the host runs out of memory and the kernel kills it "
            "(set maxmemory; the compose stack: REDIS_MAXMEMORY)"
        )
    elif used >= MEMORY_WARN_FRACTION * maxmemory:
        problems.append(
            f"{used / maxmemory:.0%} of maxmemory used ({_mb(used)} of {_mb(maxmemory)}): at 100% every new job, "
            "message and status change is refused (raise maxmemory, or end or delete old jobs)"
        )
    if policy != "noeviction":
        problems.append(f"maxmemory-policy {policy} can evict job records and queued messages (use noeviction)")
    return problems


def memory_full(used: int, maxmemory: int, policy: str) -> bool:
    """Whether a Redis refuses writes now: at or over a ceiling it may not evict under."""
    return maxmemory > 0 and used >= maxmemory and policy == "noeviction"


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f} MB"


def check_redis_memory(name: str, url: str, settings: Settings | None = None) -> Check:
    """The memory ceiling of the Redis at `url` (INFO memory: no CONFIG needed): warns
    when it has none, when its policy can evict, when it is 80 % full; fails when it is
    full under noeviction (it refuses every write). With `settings`,
    `url` is the job store's and the client is the job store's (the primary the sentinels
    name, with REDIS_SENTINELS)."""
    import redis

    where = _redis_where(settings) if settings is not None and settings.redis_sentinels else safe_url(url)
    if settings is not None:
        client = redisconn.connect_settings(settings, timeout_s=REDIS_TIMEOUT_S)
    else:
        client = redisconn.connect(url, timeout_s=REDIS_TIMEOUT_S)
    try:
        info: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
    except redis.RedisError as exc:
        return Check(name, Status.FAIL, f"cannot reach {where}: {exc}")
    finally:
        client.close()
    used, maxmemory = int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))
    policy = str(info.get("maxmemory_policy", "noeviction"))
    problems = memory_problems(used, maxmemory, policy)
    if memory_full(used, maxmemory, policy):  # every submit and status change is refused now
        return Check(name, Status.FAIL, f"{where}: full: " + "; ".join(problems))
    if problems:
        return Check(name, Status.WARN, f"{where}: " + "; ".join(problems))
    return Check(name, Status.OK, f"{where}: {_mb(used)} of {_mb(maxmemory)} used ({used / maxmemory:.0%}), {policy}")


def _separate_redis_broker(settings: Settings) -> str | None:
    """BROKER_URL when it is a Redis other than REDIS_URL (its memory is checked too)."""
    url = settings.broker_url
    if url and url != settings.redis_url and url.split("://", 1)[0] in {"redis", "rediss"}:
        return url
    return None


def _redis_where(settings: Settings) -> str:
    """The job store's Redis as a reader should see it: its URL without credentials, or
    with REDIS_SENTINELS the master and the primary the sentinels name now."""
    if not settings.redis_sentinels:
        return safe_url(settings.redis_url)
    master = settings.redis_sentinel_master
    try:
        host, port = redisconn.sentinel(settings, REDIS_TIMEOUT_S).discover_master(master)  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001 - the sentinels check says why; here the client's own error follows
        return f"master {master!r} (no sentinel of {settings.redis_sentinels} names a primary)"
    return f"primary {host}:{port} of master {master!r}"


def check_replication(settings: Settings) -> Check:
    """The primary and its replicas, from the primary's INFO replication: each replica's
    address, state and lag. A warning when REDIS_SENTINELS is set and no replica is online
    (a failover would have nothing to promote) or when the server named is a replica."""
    import redis

    name = "replication"
    client = redisconn.connect_settings(settings, timeout_s=REDIS_TIMEOUT_S)
    try:
        info: dict[str, Any] = client.info("replication")  # type: ignore[assignment]
    except redis.RedisError as exc:
        return Check(name, Status.FAIL, f"cannot read INFO replication of {_redis_where(settings)}: {exc}")
    finally:
        client.close()
    if info.get("role") != "master":
        where = f"{info.get('master_host')}:{info.get('master_port')}"
        return Check(name, Status.WARN, f"the server named is a replica of {where}: writes fail there")
    replicas = [value for key, value in sorted(info.items()) if key.startswith("slave") and isinstance(value, dict)]
    shown = [f"{r.get('ip')}:{r.get('port')} {r.get('state')}, lag {r.get('lag')} s" for r in replicas]
    online = [r for r in replicas if r.get("state") == "online"]
    where = _redis_where(settings) if settings.redis_sentinels else f"primary {_redis_where(settings)}"
    head = f"{where}; " + (f"{len(replicas)} replica(s): {'; '.join(shown)}" if replicas else "no replica")
    if settings.redis_sentinels and not online:
        return Check(name, Status.WARN, f"{head}: a failover has no replica to promote")
    return Check(name, Status.OK, head)


def check_sentinels(settings: Settings) -> Check:
    """Each sentinel of REDIS_SENTINELS: does it answer, does it monitor REDIS_SENTINEL_MASTER
    (SENTINEL MASTERS), where does it say the primary is, and how many other sentinels does
    it know (SENTINEL SENTINELS). Fails when none answers or none knows the master; warns
    when some do not, or when they disagree on the primary."""
    import redis

    name = "sentinels"
    master = str(settings.redis_sentinel_master)
    options = redisconn.sentinel_kwargs(settings, REDIS_TIMEOUT_S)
    seen: list[str] = []
    problems: list[str] = []
    primaries: set[str] = set()
    for host, port in settings.sentinel_nodes():
        node = f"{host}:{port}"
        client = redis.Redis(host=host, port=port, decode_responses=True, **options)
        try:
            masters: dict[str, Any] = client.sentinel_masters()  # type: ignore[no-untyped-call]
            state = masters.get(master)
            if state is None:
                known = ", ".join(sorted(masters)) or "none"
                problems.append(f"{node} does not monitor {master!r} (it knows: {known})")
                continue
            others: list[Any] = client.sentinel_sentinels(master)  # type: ignore[no-untyped-call]
        except redis.RedisError as exc:
            problems.append(f"{node} unreachable: {exc}")
            continue
        finally:
            client.close()
        primary = f"{state.get('ip')}:{state.get('port')}"
        primaries.add(primary)
        down = " (reports it down)" if state.get("is_sdown") or state.get("is_odown") else ""
        seen.append(f"{node}: primary {primary}{down}, {len(others)} other sentinel(s), quorum {state.get('quorum')}")
    if not seen:
        return Check(name, Status.FAIL, f"no sentinel answers for master {master!r}: {'; '.join(problems)}")
    head = f"{len(seen)} of {len(settings.sentinel_nodes())} sentinel(s) know {master!r}: {'; '.join(seen)}"
    if len(primaries) > 1:
        problems.append(f"they disagree on the primary ({', '.join(sorted(primaries))}): a failover is under way?")
    if problems:
        return Check(name, Status.WARN, f"{head}; {'; '.join(problems)}")
    return Check(name, Status.OK, head)


# -- storage ------------------------------------------------------------------------------------


def check_storage(settings: Settings) -> Check:
    """The configured backend's own probe (a small object written, read back and deleted)."""
    from worker.storage import open_storage

    name = "storage"
    try:
        storage = open_storage(settings)
    except ValueError as exc:
        return Check(name, Status.FAIL, str(exc))
    probe = storage.probe()
    return Check(name, probe.status, probe.detail)


# -- providers ----------------------------------------------------------------------------------


def check_provider(provider: str, settings: Settings) -> Check:
    """The provider adapter's probe of its endpoint with the configured credentials; a
    provider without credentials is fine unless it is DEFAULT_PROVIDER."""
    name = f"provider {provider}"
    adapter = provider_adapter(provider)
    missing = adapter.missing_credentials(settings)
    if missing is not None:
        if settings.default_provider == provider:
            detail = f"{missing} not set, and {provider} is DEFAULT_PROVIDER: its jobs fail with auth"
            return Check(name, Status.WARN, detail)
        return Check(name, Status.OK, f"not configured ({missing} not set); {provider} jobs would fail with auth")
    probe = adapter.probe(settings, PROVIDER_PROBE_TIMEOUT_S)
    return Check(name, probe.status, probe.detail)


# -- workers ------------------------------------------------------------------------------------


def check_workers(settings: Settings, timeout: float = 2.0) -> Check:
    """Which workers answer a broadcast within `timeout`, and which queues they consume."""
    from celery import Celery

    name = "workers"
    app = Celery("videoqueue-doctor", broker=settings.effective_broker_url, set_as_current=False)
    app.conf.broker_connection_timeout = 3
    app.conf.broker_connection_max_retries = 1
    app.conf.broker_use_ssl = broker_use_ssl(settings.effective_broker_url) or False
    app.conf.broker_transport_options = redisconn.broker_transport_options(settings)
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
    consumers = {queue: 0 for queue in consumed_queues()}
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
        roles = dict(zip(consumed_queues(), _STEP_ROLES.values(), strict=True))
        why = "; ".join(f"no worker consumes {queue}: {roles[queue]}" for queue in idle)
        return Check(name, Status.WARN, f"{head}; {why}")
    return Check(name, Status.OK, head)


def _backlog(settings: Settings) -> str:
    """Messages waiting in each queue, when the broker is Redis (else empty)."""
    url = settings.effective_broker_url
    if url.startswith("sentinel://"):  # the job store's primary is the broker's
        client = redisconn.connect_settings(settings, decode_responses=False, timeout_s=REDIS_TIMEOUT_S)
    elif url.startswith(("redis://", "rediss://")):
        client = redisconn.connect(url, decode_responses=False, timeout_s=REDIS_TIMEOUT_S)
    else:
        return ""
    import redis

    try:
        return ", ".join(f"{queue} {client.llen(queue)}" for queue in consumed_queues())
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
    return {name: provider_endpoint(name, settings) for name in provider_names()} | {
        "storage": storage_endpoint(settings)
    }


def check_worker_config(settings: Settings) -> Check:
    """The workers registered in the namespace with their provider and storage endpoints
    (host and fingerprint), and a warning for each that differs from this shell's."""
    import redis

    client = redisconn.connect_settings(settings, timeout_s=REDIS_TIMEOUT_S)
    try:
        workers = registry.registered(client)
    except redis.RedisError as exc:
        # The redis check names the cause (a wrong password, Redis down); no crash here.
        return Check("worker config", Status.FAIL, f"cannot read the registered workers: {type(exc).__name__}: {exc}")
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
    checks += [("replication", lambda: check_replication(settings))]
    if settings.redis_sentinels:
        checks.append(("sentinels", lambda: check_sentinels(settings)))
    checks.append(("redis access", lambda: check_redis_access(settings)))
    checks.append(("redis memory", lambda: check_redis_memory("redis memory", settings.redis_url, settings)))
    broker_redis = _separate_redis_broker(settings)
    if broker_redis is not None:
        checks.append(("broker memory", lambda: check_redis_memory("broker memory", broker_redis)))
    checks += [
        ("storage", lambda: check_storage(settings)),
    ]
    checks += [(f"provider {provider}", partial(check_provider, provider, settings)) for provider in provider_names()]
    checks += [
        ("workers", lambda: check_workers(settings, inspect_timeout)),
        ("worker config", lambda: check_worker_config(settings)),
    ]
    return DoctorReport(tuple(_guarded(name, check) for name, check in checks))
