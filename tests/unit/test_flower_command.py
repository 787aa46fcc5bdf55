"""`make flower`, the README's Flower command and the compose service agree: a login from
FLOWER_BASIC_AUTH, and the columns that show each task's job id, result and error."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

from tests.unit.test_deploy_files import COMPOSE, ROOT, as_argv, load

# Never (re)build the virtualenv from a test: its stamp counts as up to date.
MAKE = ["make", "-s", "-o", ".venv/.installed-stamp"]
COLUMNS = "--tasks_columns=name,uuid,state,args,result,exception,received,runtime,worker"


def readme_command() -> list[str]:
    lines = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("celery -A worker flower")
    ]
    assert len(lines) == 1
    return shlex.split(lines[0], comments=True)


def test_readme_and_compose_start_flower_with_the_job_columns() -> None:
    assert COLUMNS in readme_command()
    assert COLUMNS in as_argv(load(COMPOSE)["services"]["flower"]["command"])
    readme = (ROOT / "README.md").read_text()
    assert "export FLOWER_BASIC_AUTH=" in readme


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_flower_runs_the_readme_command_and_refuses_without_a_login() -> None:
    env = {name: value for name, value in os.environ.items() if name != "FLOWER_BASIC_AUTH"}
    dry = subprocess.run(
        [*MAKE, "-n", "flower"],
        cwd=ROOT,
        env={**env, "FLOWER_BASIC_AUTH": "ops:pw"},
        capture_output=True,
        text=True,
        check=True,
    )
    recipe = dry.stdout.strip().splitlines()[-1]
    assert recipe.endswith(" ".join(readme_command()[3:]).replace("--port=5555", "--port=${FLOWER_PORT:-5555}"))
    refused = subprocess.run([*MAKE, "flower"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert refused.returncode != 0 and "set FLOWER_BASIC_AUTH=user:password" in refused.stderr
