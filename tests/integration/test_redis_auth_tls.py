"""Redis with a password (requirepass, or an ACL user), and over TLS with a private CA, end
to end: real redis-server processes started here (`--requirepass`; `--tls-port` with a CA
and a server certificate made in tmp_path), the simulator, a real `celery worker` and Flower
as compose starts it, jobs submitted through the CLI and VideoQueue. The password must show
in no log line, no job record or queued message, no command line, no Flower page and no CLI
or doctor output; a wrong one must be one clear line, not a hang. And `videoqueue
doctor`'s `redis access` check against servers on this machine's non-loopback address."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from producer import JobStatus, Settings, VideoQueue, VideoRequest
from producer.celery_client import producer_app
from simulator.stack import ManagedProcess, free_port, wait_until
from tests.integration.conftest import Simulator, Stack
from tests.integration.helpers import redis_value, wait_for, wait_status
from tests.integration.test_flower import Flower, flower, on_port
from tests.unit.test_deploy_files import COMPOSE, as_argv, load
from worker.doctor import Status, check_redis_access
from worker.redis_access import without_credentials

pytestmark = pytest.mark.integration

PASSWORD = "vq-redis-pw-6c0f93d1"
ADMIN_PASSWORD = "vq-admin-pw-0b5d28aa"
# The ACL user docs/production.md gives videoqueue: every key and channel, every command but
# the administrative and dangerous ones, plus what `videoqueue doctor` reads (INFO, CONFIG GET).
ACL_USER = "videoqueue"
ACL_RULES = ["on", f">{PASSWORD}", "~*", "&*", "+@all", "-@admin", "-@dangerous", "+info", "+config|get"]
WRONG_PASSWORD = "not-the-pw-41b7e2"
CLI = "videoqueue"


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class TlsFiles:
    """A private CA and a server certificate it signed (for `hosts`), as PEM files."""

    ca: Path
    cert: Path
    key: Path


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than the loopback (`hostname -I`), or None."""
    try:
        listed = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False).stdout
    except OSError:
        return None
    for word in listed.split():
        try:
            address = ipaddress.ip_address(word)
        except ValueError:
            continue
        if address.version == 4 and not address.is_loopback:
            return word
    return None


def make_tls_files(directory: Path, hosts: list[str]) -> TlsFiles:
    """A CA and a server certificate for `hosts` (IP addresses) in `directory`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "videoqueue test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(host)) for host in hosts]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


def redis_server_binary() -> str:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    return server


@contextmanager
def redis_server(
    directory: Path,
    *,
    host: str = "127.0.0.1",
    password: str | None = None,
    tls: TlsFiles | None = None,
    acl_user: bool = False,
) -> Iterator[str]:
    """A redis-server of its own on `host` (a free port), with `--requirepass` when
    `password` is given and TLS only (`--port 0 --tls-port`) when `tls` is; with `acl_user`
    the default user gets another password and `password` belongs to the ACL user
    videoqueue (ACL_RULES). Yields the URL videoqueue is given (its user and password in it;
    for TLS, rediss:// with the CA in ssl_ca_certs)."""
    port = free_port()
    argv = [redis_server_binary(), "--bind", host, "--save", "", "--appendonly", "no", "--dir", str(directory)]
    # As the official redis image runs: without a password, protected mode would refuse every
    # client but the loopback's, and the image turns it off.
    argv += ["--protected-mode", "no"]
    if tls is None:
        argv += ["--port", str(port)]
    else:
        argv += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tls.cert)]
        argv += ["--tls-key-file", str(tls.key), "--tls-ca-cert-file", str(tls.ca), "--tls-auth-clients", "no"]
    if acl_user:
        argv += ["--requirepass", ADMIN_PASSWORD, "--user", ACL_USER, *ACL_RULES]
    elif password is not None:
        # On the command line here, in a test: the compose file hands it over on stdin instead.
        argv += ["--requirepass", password]
    proc = ManagedProcess(f"redis-{port}", argv, {}, directory / f"redis-{port}.log")
    auth = f"{ACL_USER if acl_user else ''}:{quote(password, safe='')}@" if password else ""
    if tls is None:
        url = f"redis://{auth}{host}:{port}/0"
    else:
        url = f"rediss://{auth}{host}:{port}/0?ssl_ca_certs={quote(str(tls.ca))}"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    try:
        wait_until(lambda: answers() or not proc.alive(), 20, f"redis-server on {host}:{port}")
        assert proc.alive(), proc.log_text()[-2000:]
        yield url
    finally:
        proc.stop()


# --------------------------------------------------------------------------- helpers


def stack_on(simulator: Simulator, url: str, log_dir: Path, tmp_path: Path) -> Stack:
    """A stack whose every process (workers, CLI) uses the Redis at `url`."""
    simulator.reset()
    client = redis.Redis.from_url(url)
    return Stack(simulator, client, log_dir, storage_url=f"file://{tmp_path / 'videos'}", extra_env={"REDIS_URL": url})


def cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The timeout only keeps a hang from stopping the suite; the point is that it is not reached.
    return subprocess.run([CLI, *args], env=stack.env(**env), capture_output=True, text=True, timeout=120, check=False)


def every_value(client: redis.Redis) -> str:
    """Every key and value of the database, read by type, as one text."""
    parts = []
    for key in client.scan_iter(count=500):
        parts.append(repr(key))
        parts.append(repr(redis_value(client, key)))
    return "\n".join(parts)


def command_lines(stack: Stack) -> list[str]:
    """The command lines (/proc/PID/cmdline) of the stack's workers and their pool children."""
    lines = []
    for worker in stack.workers:
        pids = [worker.proc.pid]
        children = Path(f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children")
        if children.exists():
            pids += [int(pid) for pid in children.read_text().split()]
        for pid in pids:
            cmdline = Path(f"/proc/{pid}/cmdline")
            if cmdline.exists():
                lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def run_jobs_end_to_end(stack: Stack, url: str, tmp_path: Path) -> None:
    """A worker and Flower (compose's command) on `url`; one job through the CLI and two
    through VideoQueue, all succeeded and seen by Flower, and the password nowhere it must
    not be."""
    stack.start_worker()
    port = free_port()
    flower_argv = on_port(as_argv(load(COMPOSE)["services"]["flower"]["command"]), port, tmp_path / "flower.db")
    login = ("ops", "flower-pw-a81c")
    flower_env = stack.env(FLOWER_BASIC_AUTH=":".join(login))
    with flower(flower_argv, flower_env, stack.log_dir / f"flower-{port}.log", login, port) as api:
        flower_seen = run_jobs_and_look(stack, url, api)
        flower_log = (stack.log_dir / f"flower-{port}.log").read_text()
    flower_seen["Flower's log"] = flower_log
    flower_seen["Flower's command line"] = " ".join(flower_argv)
    for where, text in flower_seen.items():
        assert PASSWORD not in text and quote(PASSWORD, safe="") not in text, f"the Redis password is in {where}"


def run_jobs_and_look(stack: Stack, url: str, api: Flower) -> dict[str, str]:
    """Run the jobs; return what Flower shows of them (its API and pages, by name)."""
    submitted = cli(stack, "submit", "a fox on a password-protected redis", "--duration", "5", "--json")
    assert submitted.returncode == 0, submitted.stderr
    [record] = json.loads(submitted.stdout)
    vq = VideoQueue(Settings(redis_url=url, _env_file=None))
    ids = [record["id"], *(vq.submit(VideoRequest(prompt=f"clip {i}", duration=5)).id for i in range(2))]
    for job_id in ids:
        assert wait_status(vq, job_id, {"succeeded", "failed", "expired"}, timeout=90).status is JobStatus.SUCCEEDED
    waited = cli(stack, "wait", *ids, "--timeout", "60", "--json")
    assert waited.returncode == 0, waited.stderr
    listed = cli(stack, "jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {job["id"] for job in json.loads(listed.stdout)} >= set(ids)

    seen = {
        "worker logs": "\n".join(worker.log_text() for worker in stack.workers),
        "CLI output": submitted.stdout + submitted.stderr + waited.stdout + waited.stderr + listed.stdout,
        "job records and queues (every key of the database)": every_value(stack.redis),
        "worker command lines": "\n".join(command_lines(stack)),
    }
    assert seen["worker logs"] and seen["job records and queues (every key of the database)"]
    for where, text in seen.items():
        assert PASSWORD not in text and quote(PASSWORD, safe="") not in text, f"the Redis password is in the {where}"
    wait_for(lambda: all(api.of_job(job_id) for job_id in ids), 30, "the jobs' tasks in Flower")
    pages = {f"Flower's {path}": api.get(path).text for path in ("/api/tasks", "/api/workers", "/broker", "/workers")}
    assert all(api.get(path).status_code == 200 for path in ("/api/tasks", "/broker")), "Flower reached the broker"
    return pages


# --------------------------------------------------------------------------- password


@pytest.mark.parametrize("acl_user", [False, True], ids=["requirepass", "acl-user"])
def test_a_password_protected_redis_end_to_end(
    simulator: Simulator, log_dir: Path, tmp_path: Path, acl_user: bool
) -> None:
    with redis_server(tmp_path, password=PASSWORD, acl_user=acl_user) as url:
        # The server does demand the password: without it, nothing is served.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(without_credentials(url)).ping()
        if acl_user:
            client = redis.Redis.from_url(url)
            assert client.acl_whoami() in {"videoqueue", b"videoqueue"}
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.flushall()
        stack = stack_on(simulator, url, log_dir, tmp_path)
        try:
            run_jobs_end_to_end(stack, url, tmp_path)
        finally:
            stack.stop()


def test_a_wrong_password_is_one_clear_line_from_the_cli_and_doctor(
    simulator: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    with redis_server(tmp_path, password=PASSWORD) as url:
        wrong = url.replace(PASSWORD, WRONG_PASSWORD)
        stack = stack_on(simulator, url, log_dir, tmp_path)
        jobs = cli(stack, "jobs", REDIS_URL=wrong)
        lines = [line for line in jobs.stderr.splitlines() if line.strip()]
        assert jobs.returncode == 2 and len(lines) == 1, jobs.stderr
        assert lines[0].startswith("error: ") and "refused our credentials" in lines[0] and "REDIS_URL" in lines[0]
        submitted = cli(stack, "submit", "never enqueued", "--duration", "5", REDIS_URL=wrong)
        assert submitted.returncode == 2 and "refused our credentials" in submitted.stderr, submitted.stderr
        doctor = cli(stack, "doctor", "--json", REDIS_URL=wrong)
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        checks = {check["name"]: check for check in json.loads(doctor.stdout)["checks"]}
        assert checks["redis"]["status"] == "fail"
        assert "invalid username-password pair" in checks["redis"]["detail"], checks["redis"]
        assert not any("check crashed" in check["detail"] for check in checks.values()), checks
        for text in (jobs.stdout + jobs.stderr, submitted.stdout + submitted.stderr, doctor.stdout + doctor.stderr):
            assert WRONG_PASSWORD not in text and PASSWORD not in text
        # Nothing was enqueued with the wrong password, nor anything written.
        assert stack.redis.dbsize() == 0
        # A worker with the wrong password says so, and keeps retrying (it never gives up
        # on its broker), with the URL masked.
        celery = str(Path(sys.executable).with_name("celery"))
        argv = [celery, "-A", "worker", "worker", "--loglevel=INFO", "--concurrency=1", "--hostname=wrong@%h"]
        worker = ManagedProcess("wrong-password", argv, stack.env(REDIS_URL=wrong), tmp_path / "wrong-worker.log")
        try:
            wait_until(
                lambda: "invalid username-password pair" in worker.log_text() or not worker.alive(), 60, "the error"
            )
            log = worker.log_text()
            assert re.search(r"Cannot connect to redis://:(\*\*|\[REDACTED\])@127\.0\.0\.1", log), log[-2000:]
            assert WRONG_PASSWORD not in log and PASSWORD not in log
        finally:
            worker.stop()


# --------------------------------------------------------------------------- TLS


def test_a_tls_redis_with_a_private_ca_end_to_end(simulator: Simulator, log_dir: Path, tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path, ["127.0.0.1"])
    with redis_server(tmp_path, password=PASSWORD, tls=tls) as url:
        # Both clients verify the certificate: without the private CA, neither connects.
        without_ca = url.split("?")[0]
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            redis.Redis.from_url(without_ca, socket_connect_timeout=3).ping()
        with (
            producer_app(without_ca).connection_for_write() as connection,
            pytest.raises(Exception, match="certificate verify failed"),
        ):
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=5)
        stack = stack_on(simulator, url, log_dir, tmp_path)
        try:
            run_jobs_end_to_end(stack, url, tmp_path)
            banner = stack.workers[0].log_text()
            assert "rediss://" in banner, "the worker's broker is the TLS Redis"
        finally:
            stack.stop()


# --------------------------------------------------------------------------- doctor


@pytest.fixture(scope="module")
def network_address() -> str:
    address = non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address (tests/unit/test_redis_access.py decides)")
    return address


def access_of(url: str) -> tuple[Status, str]:
    check = check_redis_access(Settings(redis_url=url, _env_file=None))
    assert PASSWORD not in check.detail
    return check.status, check.detail


def test_doctor_warns_about_a_redis_on_the_network_without_auth_or_tls(network_address: str, tmp_path: Path) -> None:
    with redis_server(tmp_path, host=network_address) as url:
        status, detail = access_of(url)
        assert status is Status.WARN
        assert "answers without a password on a non-loopback address" in detail and "plain text" in detail
    with redis_server(tmp_path, host=network_address, password=PASSWORD) as url:
        status, detail = access_of(url)
        assert status is Status.WARN and "plain text" in detail
        assert "answers without a password" not in detail
    tls = make_tls_files(tmp_path, [network_address])
    with redis_server(tmp_path, host=network_address, password=PASSWORD, tls=tls) as url:
        assert access_of(url) == (
            Status.OK,
            f"job store rediss://{network_address}:{url.split(':')[-1].split('/')[0]}/0 (with credentials): "
            "TLS, password required",
        )
    with redis_server(tmp_path, host="127.0.0.1") as url:
        assert access_of(url)[0] is Status.OK, "the loopback is this host's own"


def test_the_doctor_command_shows_the_warning_without_the_password(
    network_address: str, simulator: Simulator, log_dir: Path, tmp_path: Path
) -> None:
    with redis_server(tmp_path, host=network_address, password=PASSWORD) as url:
        stack = stack_on(simulator, url, log_dir, tmp_path)
        doctor = cli(stack, "doctor")
        line = next(line for line in doctor.stdout.splitlines() if "redis access" in line)
        assert line.startswith("warn") and "plain text (redis://)" in line, doctor.stdout
        assert PASSWORD not in doctor.stdout + doctor.stderr
