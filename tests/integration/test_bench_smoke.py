"""The benchmark entry point runs end to end (small sizes) and writes its results.

Nothing here times anything: the numbers of a quick run mean nothing. It checks that the
harness starts and stops its own Redis servers, simulator and real celery workers, that
every job of the run succeeded and that the JSON document holds the measurements."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_quick_overhead_run_writes_its_measurements(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.process_iter()}
    result = subprocess.run(
        [sys.executable, "-m", "bench", "overhead", "--quick", "--results", str(tmp_path)],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((tmp_path / "overhead.json").read_text())
    assert document["scenario"] == "overhead"
    assert document["machine"]["cpus"] >= 1
    jobs = document["jobs"]
    assert jobs["succeeded"] == jobs["jobs"] == 100
    # submit, poll (the provider finished at once), store: three task messages per job
    assert jobs["tasks_per_job"] == pytest.approx(3.0, abs=0.2)
    assert jobs["worker_cpu_ms_per_job"] > 0
    assert jobs["store_cmds_per_job"] > 0 and jobs["broker_cmds_per_job"] > 0
    assert document["noop"]["tasks"] == int(100 * jobs["tasks_per_job"])
    assert document["ratio_to_engine_limit"] > 0
    # The harness leaves no redis-server, simulator or worker behind.
    words = ("redis-server", "-m simulator", "celery")
    leftovers = [line for pid, line in _command_lines() if pid not in before and any(w in line for w in words)]
    assert leftovers == []


def _command_lines() -> list[tuple[int, str]]:
    lines = []
    for proc in psutil.process_iter():
        try:
            lines.append((proc.pid, " ".join(proc.cmdline())))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return lines
