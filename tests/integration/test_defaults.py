"""End to end on defaults: one job per provider through a worker whose every setting is the
default a user gets (poll schedule, retries, deadline, limits, leases), on a cold fleet (no
render history). Only where Redis, the simulator and the folder are is set. The rest of the
suite shortens the poll settings (conftest.SUITE_TUNING), which once hid a job on the cold
schedule being cut at its deadline; here nothing is shortened on our side. The render time
is the simulator's (the provider's side): 12 s, long enough for several cold polls."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from producer import JobStatus, VideoRequest
from tests.integration.conftest import Stack, setting_variables
from tests.integration.helpers import assert_mp4, local_path, read_manifest
from videoqueue.ledger import Ledger
from videoqueue.settings import Settings

pytestmark = pytest.mark.integration

RENDER_S = 12.0


def default(setting: str) -> Any:
    """A setting's default, as the code declares it (not as this shell may set it)."""
    return Settings.model_fields[setting].default


@pytest.mark.parametrize("provider", ["byteplus", "veo"])
def test_a_job_on_default_settings_renders_is_stored_and_billed_once(default_stack: Stack, provider: str) -> None:
    env = default_stack.env()
    where = set(default_stack.connection_env())
    assert sorted((setting_variables() & {k.upper() for k in env}) - where) == []  # nothing tuned
    default_stack.start_worker()
    vq = default_stack.queue()
    job = vq.submit(VideoRequest(prompt=f"a heron at dawn [sim:latency={RENDER_S:g}]", provider=provider))

    done = vq.wait([job.id], timeout=120)[0]

    assert done.status is JobStatus.SUCCEEDED, (done.error, done.notes)
    assert done.past_deadline_at is None and done.deadline_at is not None
    assert (done.deadline_at - done.created_at).total_seconds() == default("job_deadline_s")
    # Seen done on the cold schedule: at most POLL_MIN_S plus 20% of the render after the
    # provider finished, plus the jitter of that interval and a second of message latency.
    finished: dict[str, Any] = httpx.get(f"{default_stack.simulator.url}/_sim/finished", timeout=5).json()
    assert done.provider_task_id is not None and done.provider_done_at is not None
    late_s = done.provider_done_at.timestamp() - finished[done.provider_task_id]
    poll_bound = (default("poll_min_s") + (default("poll_backoff") - 1) * RENDER_S) * (1 + default("poll_jitter"))
    assert 0 <= late_s <= poll_bound + 1.0, late_s
    polls: dict[str, int] = httpx.get(f"{default_stack.simulator.url}/_sim/polls", timeout=5).json()
    assert 2 <= polls[done.provider_task_id] <= 8, polls  # several cold polls, not a busy loop

    video = local_path(done.output_uri or "")
    assert_mp4(video.read_bytes())
    manifest = read_manifest(local_path(done.manifest_uri or ""))
    assert manifest["job_id"] == done.id
    assert done.cost_usd is not None and done.cost_usd == done.cost_estimate_usd > 0
    entries = Ledger(default_stack.redis).entries()
    assert [(e.job_id, e.actual_usd) for e in entries] == [(done.id, done.cost_usd)]
    assert default_stack.simulator.stats()["creates_total"] == 1
