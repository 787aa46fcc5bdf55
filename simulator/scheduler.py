"""The job scheduler every emulated provider shares: lifecycle, per-model concurrency,
injected faults and counters.

The lifecycle is evaluated lazily: every request first replays, in time order, all
start/finish/expire events due up to "now". Transitions therefore happen at their exact
times (a queued job starts the instant a slot frees) without a background ticker, and
the single asyncio thread never sees a half-updated state.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from simulator.config import SimConfig
from simulator.latency import draw_render_s
from simulator.markers import Markers

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "expired")
ACTIVE = ("queued", "running")
# Provider counters reported at /_sim/stats next to the create counters.
REPORTED_COUNTERS = (
    "gets_total",
    "lists_total",
    "deletes_total",
    "video_downloads_total",
    "vertex_fetches_total",
    "callbacks_sent_total",
    "callbacks_lost_total",
    "callbacks_failed_total",
)

# Heap event kinds; at equal times a finish wins over an expiry.
_FINISH, _EXPIRE = 0, 1


class JobSpec(Protocol):
    """What the scheduler needs from a provider's validated create request."""

    @property
    def model(self) -> str:
        """The model, whose concurrency limit the job counts against."""

    @property
    def prompt(self) -> str:
        """The prompt, the key of the per-prompt counters."""

    @property
    def markers(self) -> Markers:
        """The fault-injection markers found in the prompt."""

    @property
    def duration(self) -> int:
        """Seconds of video asked for (the realistic latency profile scales with it)."""

    @property
    def resolution(self) -> str:
        """The resolution asked for, e.g. "720p"."""


SpecT = TypeVar("SpecT", bound=JobSpec)


def received_images(spec: object) -> dict[str, str]:
    """The input images a create sent, by role, as `/_sim/tasks` shows them: an inline one
    (a data: URI) as `sha256:<hex>` of its bytes, a linked one as its URL. Seedance's
    requests carry (role, URL) pairs; Veo's carry what they show already (`received`)."""
    received = getattr(spec, "received", None)
    if received is not None:
        return dict(received)
    found: dict[str, str] = {}
    for item in getattr(spec, "images", ()):
        if not (isinstance(item, tuple) and len(item) == 2):
            continue
        role, url = item
        if url.startswith("data:") and "," in url:
            data = base64.b64decode(url.split(",", 1)[1])
            found[role] = f"sha256:{hashlib.sha256(data).hexdigest()}"
        else:
            found[role] = url
    return found


@dataclass(kw_only=True)
class Job(Generic[SpecT]):
    """One generation job and its simulated fate; providers subclass it with their fields.

    ``outcome`` is the status the job will finish with, drawn when it starts running.
    """

    id: str
    spec: SpecT
    created: float
    updated: float
    status: str = "queued"
    run_end: float | None = None
    outcome: str = "succeeded"
    gets: int = 0

    @property
    def public_id(self) -> str:
        """The id clients know the job by (a Veo operation's full name)."""
        return self.id


class Scheduler:
    """Job store, scheduler, fault injection and counters of the emulated services."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Forget every job and counter; reseed the random source."""
        self.rng = random.Random(self.config.seed)
        self.tasks: dict[str, Job[Any]] = {}
        self._events: list[tuple[float, int, int, str]] = []
        self._fifo: defaultdict[str, deque[str]] = defaultdict(deque)
        self._running: Counter[str] = Counter()
        self._seq = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.counters: Counter[str] = Counter()
        self.creates_by_prompt: Counter[str] = Counter()
        self.attempts_by_prompt: Counter[str] = Counter()
        # When each job left the active statuses, by public id; kept after a DELETE.
        self.finished_at: dict[str, float] = {}
        # Per job, by public id and in creation order, kept after a DELETE: its prompt and
        # model, when it was created, started running and ended, and how it ended.
        self.timeline: dict[str, dict[str, Any]] = {}

    def update_config(self, changes: dict[str, Any]) -> SimConfig:
        """Apply config changes (raises pydantic.ValidationError) and reschedule."""
        self.advance()
        self.config = self.config.updated(changes)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)
        now = self._clock()
        for model in list(self._fifo):
            self._fill(model, now)
        return self.config

    # -- lifecycle -------------------------------------------------------------------------

    def advance(self) -> float:
        """Apply every transition due up to now; return now."""
        now = self._clock()
        while self._events and self._events[0][0] <= now:
            at, kind, _, job_id = heapq.heappop(self._events)
            job = self.tasks.get(job_id)
            if job is None:
                continue
            if kind == _FINISH and job.status == "running" and job.run_end == at:
                self._settle(job, at, job.outcome)
            elif kind == _EXPIRE and job.status in ACTIVE:
                self._settle(job, at, "expired")
        return now

    def admit(self, job: Job[Any], expires_after: float | None) -> None:
        """Register a new queued job, created at ``job.created`` (the time of the last
        ``advance``), and start it at once if its model has a free slot.

        ``expires_after`` seconds after creation an unfinished job expires; None never.
        """
        self.tasks[job.id] = job
        self.counters["creates_total"] += 1
        self.creates_by_prompt[job.spec.prompt] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.timeline[job.public_id] = {
            "prompt": job.spec.prompt,
            "model": job.spec.model,
            "created": job.created,
            "started": None,
            "finished": None,
            "status": job.status,
            "images": received_images(job.spec),
        }
        if expires_after is not None:
            self._push(job.created + expires_after, _EXPIRE, job.id)
        if not job.spec.markers.hold:
            self._fifo[job.spec.model].append(job.id)
            self._fill(job.spec.model, job.created)

    def cancel(self, job: Job[Any]) -> None:
        """Cancel a queued job (it keeps its place in the store)."""
        job.status, job.updated = "cancelled", self._clock()
        self.in_flight -= 1
        self.finished_at[job.public_id] = job.updated
        self.timeline[job.public_id].update(finished=job.updated, status=job.status)
        self.status_changed(job)

    def forget(self, job_id: str) -> None:
        """Drop a finished job from the store."""
        del self.tasks[job_id]

    def _push(self, at: float, kind: int, job_id: str) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, kind, self._seq, job_id))

    def _fill(self, model: str, now: float) -> None:
        queue = self._fifo[model]
        while queue and self._running[model] < self.config.concurrency_per_model:
            job = self.tasks.get(queue.popleft())
            if job is not None and job.status == "queued":
                self._start(job, now)

    def _start(self, job: Job[Any], now: float) -> None:
        cfg, markers = self.config, job.spec.markers
        if markers.latency is not None:
            latency = markers.latency
        else:
            spec = job.spec
            latency = draw_render_s(cfg, spec.model, spec.duration, spec.resolution, self.rng)
        if markers.fail:
            job.outcome = "failed"
        elif markers.expire:
            job.outcome = "expired"
        elif cfg.fail_rate and self.rng.random() < cfg.fail_rate:
            job.outcome = "failed"
        elif cfg.expire_rate and self.rng.random() < cfg.expire_rate:
            job.outcome = "expired"
        job.status, job.updated, job.run_end = "running", now, now + latency
        self.timeline[job.public_id].update(started=now, status=job.status)
        self._running[job.spec.model] += 1
        self._push(job.run_end, _FINISH, job.id)
        self.status_changed(job)

    def _settle(self, job: Job[Any], at: float, status: str) -> None:
        was_running = job.status == "running"
        job.status, job.updated = status, at
        self.in_flight -= 1
        self.finished_at[job.public_id] = at
        self.timeline[job.public_id].update(finished=at, status=status)
        self.status_changed(job)
        if was_running:
            self._running[job.spec.model] -= 1
            self._fill(job.spec.model, at)

    def status_changed(self, job: Job[Any]) -> None:
        """Called after each status change of a job (a provider's callbacks hook in here)."""

    def next_event_at(self) -> float | None:
        """Unix time of the next start/finish/expiry due, None when none is."""
        return self._events[0][0] if self._events else None

    # -- injected request faults -----------------------------------------------------------

    def create_fault(self, prompt: str, markers: Markers) -> int | None:
        """Count a create attempt; return 429 or 500 if it is to be refused, else None."""
        self.attempts_by_prompt[prompt] += 1
        attempt = self.attempts_by_prompt[prompt]
        cfg = self.config
        if attempt <= markers.create429 or (cfg.create_429_rate and self.rng.random() < cfg.create_429_rate):
            return 429
        if attempt <= markers.create429 + markers.create500 or (
            cfg.create_5xx_rate and self.rng.random() < cfg.create_5xx_rate
        ):
            return 500
        return None

    def poll_fault(self, job: Job[Any]) -> bool:
        """Count a status poll of ``job``; return True if it is to be answered with a 5xx."""
        job.gets += 1
        rate = self.config.get_5xx_rate
        return job.gets <= job.spec.markers.get500 or bool(rate and self.rng.random() < rate)

    def finished(self) -> dict[str, float]:
        """Unix time at which each finished job finished, by the id its client knows."""
        self.advance()
        return dict(self.finished_at)

    def tasks_timeline(self) -> dict[str, dict[str, Any]]:
        """Every job ever created (since the last reset), by the id its client knows, in
        creation order: prompt, model, unix times created / started / finished (None until
        then), its status and the images it was sent (`received_images`)."""
        self.advance()
        return {public_id: dict(times) for public_id, times in self.timeline.items()}

    def status_calls(self) -> dict[str, int]:
        """Status calls (answered or faulted) each stored job received, by public id."""
        return {job.public_id: job.gets for job in self.tasks.values()}

    def stats(self) -> dict[str, Any]:
        """Return the counters exposed at /_sim/stats."""
        self.advance()
        by_status = dict.fromkeys(STATUSES, 0)
        for job in self.tasks.values():
            by_status[job.status] += 1
        return {
            "creates_total": self.counters["creates_total"],
            "create_attempts_total": self.counters["create_attempts_total"],
            "creates_by_prompt": dict(self.creates_by_prompt),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "by_status": by_status,
            **{name: self.counters[name] for name in REPORTED_COUNTERS},
        }
