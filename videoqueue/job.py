"""The contract between producers and workers: job statuses, error codes, task and queue
names, and the job record both sides read and write."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Annotated, Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

from videoqueue import keys, namespace, storedform
from videoqueue.resolved import ResolvedRequest


class JobStatus(StrEnum):
    """Where a job is in its lifecycle: videoqueue.lifecycle.MOVES lists every move between
    statuses and who makes it (docs/architecture.md tells the whole lifecycle)."""

    QUEUED = "queued"
    SUBMITTING = "submitting"
    RUNNING = "running"
    DOWNLOADING = "downloading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """True for statuses a job never leaves."""
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})
ACTIVE_STATUSES = frozenset(JobStatus) - FINAL_STATUSES
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})
"""Statuses `videoqueue retry` resubmits: the job ended without a video, or was stopped."""


class ErrorCode(StrEnum):
    """Our error classes; each provider's errors map onto these."""

    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    RATE_LIMITED = "rate_limited"
    UPSTREAM = "upstream"
    TIMEOUT = "timeout"
    CONTENT_FILTERED = "content_filtered"
    STORAGE = "storage"
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    SUBMIT_UNCERTAIN = "submit_uncertain"
    BUDGET_EXCEEDED = "budget_exceeded"


# Task names are the wire contract: producers send by name and never import worker code.
TASK_SUBMIT = "videoqueue.submit"
TASK_POLL = "videoqueue.poll"
TASK_STORE = "videoqueue.store"
TASK_CANCEL = "videoqueue.cancel"
TASK_ADMIT = "videoqueue.admit"
TASK_UNPARK = "videoqueue.unpark"
TASK_DELIVER = "videoqueue.deliver_webhook"
TASK_MOVIE_ADVANCE = "videoqueue.movie_advance"

# The queues of the namespace this process serves (videoqueue.namespace): read them as
# `contract.QUEUE_SUBMIT` when used, or call namespace.queue("submit").
QUEUE_SUBMIT = namespace.keep(globals(), "QUEUE_SUBMIT", lambda: namespace.queue("submit"))
QUEUE_POLL = namespace.keep(globals(), "QUEUE_POLL", lambda: namespace.queue("poll"))
QUEUE_STORE = namespace.keep(globals(), "QUEUE_STORE", lambda: namespace.queue("store"))


Usd = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
"""A dollar amount: exact in Python, a plain number in JSON."""


def utcnow() -> datetime:
    """Timezone-aware now, rounded up to the millisecond: the clock of a job's moves. Its
    times are stored in milliseconds (storedform.RECORD_VERSION): finer would cost 3 bytes
    a time in every record and tell nobody anything. Up, so that no move is dated before
    the job's creation (`created_now`, to the microsecond)."""
    now = datetime.now(UTC)
    past = now.microsecond % 1000
    return now + timedelta(microseconds=1000 - past) if past else now


def created_now() -> datetime:
    """Timezone-aware now, to the microsecond: a new job's `created_at`. It orders a
    model's waiting room (room.enqueue_score): jobs enqueued within one millisecond keep
    the order they were enqueued in."""
    return datetime.now(UTC)


class JobFailure(BaseModel):
    """Why a job ended badly (the record's `error` field): our error code plus the
    provider's own code and message. A record, not an exception: the exceptions are in
    videoqueue.errors."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode
    message: str
    provider_code: str | None = None


JobError = JobFailure
"""The name JobFailure had before 0.2 (it is no exception); kept for producers' imports."""


class JobRecord(BaseModel):
    """One job as the job store holds it. Holds no secret."""

    model_config = ConfigDict(extra="forbid")

    id: str
    status: JobStatus
    provider: str
    model: str
    request: ResolvedRequest
    provider_task_id: str | None = None
    # What the provider last said of the task, in its own words (a status call's, or
    # "queued" when a create made it, "cancelled" when a cancel call stopped it); never
    # a state of our own (a cancel request is `cancel_requested_at`).
    provider_status: str | None = None
    # The provider endpoint (plain host) and account (fingerprint, never the key:
    # videoqueue.endpoints) the job's task is created with, recorded by the submit that makes
    # it: only a worker configured the same way polls, cancels or looks the task up. None
    # before the first create attempt (and on jobs from before fingerprints: any worker).
    provider_endpoint: str | None = None
    provider_fingerprint: str | None = None
    # Set while a worker configured for another endpoint left the job's next step to one
    # that matches: what it waits for, in words for people.
    waiting_for_endpoint: str | None = None
    # Where a job waiting in its model's room stands (videoqueue.room.Standing), filled in
    # when the record is read for a producer (VideoQueue.get, list): worked out from the
    # room at that moment, never stored, since each admission moves every waiting job.
    queue_position: int | None = Field(default=None, exclude=True)
    waiting_reason: str | None = Field(default=None, exclude=True)
    estimated_start_at: datetime | None = Field(default=None, exclude=True)
    attempts: int = 0
    submit_errors: int = 0
    submit_rate_limits: int = 0
    uncertain_creates: int = 0
    cost_estimate_usd: Usd
    cost_usd: Usd | None = None
    # Estimated cost of provider tasks made for this job that it does not use and that may
    # have been billed: a create whose answer was lost and which could not be found again
    # (Vertex AI cannot list operations), or a duplicate that could not be cancelled.
    uncertain_cost_usd: Usd | None = None
    billed_units: int | None = None
    billed_unit: str = "token"
    budget_keys: list[str] = Field(default_factory=list)
    output_uri: str | None = None
    manifest_uri: str | None = None
    video_url: str | None = None
    error: JobFailure | None = None
    # When the producer asked to cancel the job (`VideoQueue.cancel`); a worker carries it
    # out. None: no cancel was asked for.
    cancel_requested_at: datetime | None = None
    poll_seq: int = 0
    poll_errors: int = 0
    store_attempts: int = 0
    store_lease_until: datetime | None = None
    store_retries: int = 0
    store_retried_at: datetime | None = None
    submit_intent_at: datetime | None = None
    next_due_at: datetime | None = None
    recoveries: int = 0
    submit_lease_until: datetime | None = None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None = None
    provider_done_at: datetime | None = None
    finished_at: datetime | None = None
    settled_at: datetime | None = None
    result_expires_at: datetime | None = None
    deadline_at: datetime
    # When a status call at or after the deadline found the provider task still active (it
    # could not be stopped, so it is followed to its end and billed) or already finished.
    past_deadline_at: datetime | None = None
    # What happened that a status alone does not say, in words for people.
    notes: list[str] = Field(default_factory=list)
    history: list[dict[str, Any]] = Field(default_factory=list)
    # `videoqueue retry`: the job this one resubmits, and the jobs that resubmitted this one.
    retry_of: str | None = None
    retried_by: list[str] = Field(default_factory=list)
    # A scene of a movie (videoqueue.movies): the movie's id and the scene's place (0 first).
    movie_id: str | None = None
    scene: int | None = None
    # With continuity, the job of the scene before: while set, the job is stored and its
    # budget reserved but its submit waits (the submit step does nothing) until the movie's
    # advance gives it the first frame and clears this.
    after_job: str | None = None
    # The provider's URL of the video's last frame (a PNG), when it gives one (ModelArk, for
    # a task created with `return_last_frame`): the next scene's first frame.
    last_frame_url: str | None = None
    # The batch the job was submitted in (videoqueue.batches), whose counts its moves keep.
    batch_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _read_earlier_versions(cls, data: Any) -> Any:
        """Records written by earlier versions read as this one's: their cancel request
        was a flag (`cancel_requested: true`), before that a `provider_status` of
        "cancel_requested". When it was asked for is unknown: the record's `updated_at`
        (no earlier than the request) stands in. The provider's own status was not kept
        beside that marker, so it reads as unknown (None)."""
        if storedform.is_compact(data):
            return _from_stored(data)
        if not isinstance(data, dict):
            return data
        marker = data.get("provider_status") == "cancel_requested"
        if "cancel_requested" not in data and not marker:
            return data
        data = dict(data)
        requested = bool(data.pop("cancel_requested", False)) or marker
        if marker:
            data["provider_status"] = None
        if requested and data.get("cancel_requested_at") is None:
            data["cancel_requested_at"] = data.get("updated_at")
        return data

    def to_store_json(self) -> str:
        """The record as the job store holds it: compact JSON (videoqueue.storedform) that
        `from_store_json`, given the job's id (the key's, left out here), reads back into a
        record equal to this one. Not for people or manifests: those get `model_dump_json` / `public_dict`."""
        data = self.model_dump(mode="json", exclude_defaults=True)  # the request's too
        request = data["request"]
        for name in ("provider", "model"):
            if request.get(name) == data[name]:
                del request[name]
        # Left out when derived (the usual case), and derived again in the namespace the
        # record is read in, which is the one whose key holds it. A record whose creation
        # time is kept as text (not UTC) keeps them, since they are worked out from it.
        if storedform.in_utc(self.created_at) and self.budget_keys == derived_budget_keys(
            self.created_at, self.request.tags
        ):
            data.pop("budget_keys", None)
        else:
            data["budget_keys"] = list(self.budget_keys)
        _imply_repeated(data)
        self._imply_v4(data)
        if data.get("manifest_uri") and self.output_uri:
            data["manifest_uri"] = storedform.relative_uri(data["manifest_uri"], self.output_uri)
        for name in _URI_FIELDS:
            if name in data:
                data[name] = storedform.split_id(data[name], self.id)
        if self.history and storedform.ms_origin(self.created_at):
            data["history"] = storedform.encode_moves(
                data["history"], self.created_at, self.status.value, self.updated_at
            )
        storedform.encode_times(data, self.__dict__, "created_at", _TIME_FIELDS, in_ms=True)
        del data["id"]  # the key's: `from_store_json` is given it
        data["request"] = storedform.rename(data["request"], storedform.REQUEST_NAMES)
        data = storedform.rename(data, storedform.RECORD_NAMES)
        return pydantic_core.to_json({"v": storedform.RECORD_VERSION, **data}).decode()

    def _imply_v4(self, data: dict[str, Any]) -> None:
        """Leave out of `data` (this record's JSON-mode dump) what version 4 implies
        (`_implied_v4`); a value unlike what its absence means is written, 0 and None too."""
        for name, implied in _implied_v4(self.provider_task_id, self.output_uri, self.history).items():
            storedform.imply(data, name, implied, getattr(self, name))

    @classmethod
    def from_store_json(cls, raw: str | bytes, job_id: str) -> JobRecord:
        """A record from what the job store holds under `keys.job_key(job_id)`: the compact
        form of `to_store_json`, which leaves the id to the key, or the JSON that versions
        before it wrote (which hold their id). Raises pydantic.ValidationError when `raw` is
        not a record."""
        data = pydantic_core.from_json(raw)
        if isinstance(data, dict) and "id" not in data:
            data["id"] = job_id
        return cls.model_validate(data)

    @property
    def cancel_requested(self) -> bool:
        """True once the producer asked to cancel the job (`cancel_requested_at`)."""
        return self.cancel_requested_at is not None

    @property
    def charged_usd(self) -> Decimal | None:
        """What the provider charged for this job: the billed cost of its task plus the
        estimate of tasks it may have been billed for but does not use; None if neither."""
        if self.cost_usd is None and self.uncertain_cost_usd is None:
            return None
        return (self.cost_usd or Decimal(0)) + (self.uncertain_cost_usd or Decimal(0))

    def store_retry_refusal(self, now: datetime) -> str | None:
        """Why `videoqueue store retry` cannot store this job again, or None if it can: it
        failed in the store step and the provider still holds its video."""
        if self.status is not JobStatus.FAILED:
            return f"it is {self.status.value}, not failed"
        if not self.history or self.history[-1].get("from") != JobStatus.DOWNLOADING:
            return "it did not fail in storage (it never had a video to store)"
        if self.result_expires_at is not None and now >= self.result_expires_at:
            return f"the provider's video expired at {self.result_expires_at.isoformat(timespec='seconds')}"
        if not self.video_url and not self.provider_task_id:
            return "the record holds no place to fetch the video from"
        return None

    def retry_refusal(self) -> str | None:
        """Why `videoqueue retry` cannot resubmit this job, or None if it can: it ended
        failed, expired or cancelled (a succeeded job has its video; an active one may
        still get it)."""
        if self.status in RETRYABLE_STATUSES:
            return None
        if self.status is JobStatus.SUCCEEDED:
            return "it succeeded (videoqueue fetch gets its video)"
        return f"it is {self.status.value}, not finished (wait for it, or cancel it first)"

    def public_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data for CLI and API users (with `cancel_requested`,
        true once a cancel was asked for)."""
        data = self.model_dump(mode="json", exclude={"submit_lease_until", "store_lease_until", "poll_seq"})
        data["cancel_requested"] = self.cancel_requested
        data["queue_position"] = self.queue_position
        data["waiting_reason"] = self.waiting_reason
        data["estimated_start_at"] = (
            None if self.estimated_start_at is None else self.estimated_start_at.isoformat().replace("+00:00", "Z")
        )
        return data


# Values a record shares with its copies: nothing changes them in place. A frozen request
# holds only tuples and frozen models.
_IMMUTABLE = (str, int, float, Decimal, datetime, Enum, ResolvedRequest, type(None))
_IMMUTABLE_TYPES = frozenset({str, int, bool, float, Decimal, datetime, JobStatus, ResolvedRequest, type(None)})


def working_copy(record: JobRecord) -> JobRecord:
    """A copy of `record` that a change may edit in place (`notes.append`, `history` as
    `_Move.of` completes it) without touching `record`: equal to it, as `model_copy(deep=True)`,
    at a fraction of the CPU (issue 18: a deep copy of a finished record took 65 us, more
    than reading it from JSON). Immutable values are shared; lists of them and of flat
    dicts of them (`history`) are copied one level down, anything else deeply."""
    copied = record.model_copy()
    values = copied.__dict__
    for name, value in values.items():
        if type(value) in _IMMUTABLE_TYPES or isinstance(value, _IMMUTABLE):
            continue
        if type(value) is list and all(isinstance(item, _IMMUTABLE) for item in value):
            values[name] = list(value)
        elif type(value) is list and all(_flat_dict(item) for item in value):
            values[name] = [dict(item) for item in value]
        else:
            values[name] = copy.deepcopy(value)
    return copied


def _flat_dict(value: object) -> bool:
    return type(value) is dict and all(isinstance(item, _IMMUTABLE) for item in value.values())


def derived_budget_keys(created_at: datetime, tags: tuple[str, ...]) -> list[str]:
    """The budget counters a job created at `created_at` with `tags` counts against: its
    day, its month, each tag (videoqueue.budget.keys_for), in the current namespace."""
    day = created_at.date().isoformat()
    counters = [keys.budget_counter_key(f"day:{day}"), keys.budget_counter_key(f"month:{day[:7]}")]
    counters.extend(keys.budget_counter_key(f"tag:{tag}") for tag in dict.fromkeys(tags))
    return counters


_TIME_FIELDS = tuple(
    name
    for name, field in JobRecord.model_fields.items()
    if not field.exclude and field.annotation in (datetime, datetime | None)
)


_LONG_RECORD_NAMES = storedform.long_names(storedform.RECORD_NAMES)
_LONG_REQUEST_NAMES = storedform.long_names(storedform.REQUEST_NAMES)


_URI_FIELDS = ("output_uri", "manifest_uri", "video_url")
"""Fields whose job id, if they hold it, is stored as the parts around it (version 3)."""


def _implied(data: Mapping[str, Any]) -> dict[str, Any]:
    """What version 3 leaves out of a record's JSON-mode dump (long names; the URIs whole),
    field -> the value its absence reads back as (see videoqueue.storedform)."""
    status, output = data.get("status"), data.get("output_uri")
    return {
        "cost_usd": data.get("cost_estimate_usd") if status == JobStatus.SUCCEEDED.value else None,
        "settled_at": data.get("finished_at"),
        "provider_status": status if status in _FINAL_VALUES else None,
        "manifest_uri": storedform.absolute_uri(".json", output) if isinstance(output, str) and "." in output else None,
    }


_FINAL_VALUES = frozenset(s.value for s in FINAL_STATUSES)


def _imply_repeated(data: dict[str, Any]) -> None:
    """Leave out of `data` (a record's JSON-mode dump) the fields version 3 implies."""
    for name, implied in _implied(data).items():
        storedform.imply(data, name, implied)


def _implied_v4(task_id: object, output_uri: object, history: object) -> dict[str, Any]:
    """What version 4 leaves out of a record, field -> the value its absence reads back as:
    `attempts` 1 when it has a provider task (a create made it), `store_attempts` 1 when
    its video is stored, and `submitted_at` the time of its first move to `running` (the
    job store records the task and that move at one time: `jobstore._Move.of`)."""
    return {
        "attempts": 1 if task_id else 0,
        "store_attempts": 1 if output_uri else 0,
        "submitted_at": _first_move_to(history, JobStatus.RUNNING.value),
    }


def _first_move_to(history: object, status: str) -> datetime | None:
    """The time of the first move of `history` (a record's, its `at` an ISO text) to
    `status`, or None."""
    for move in history if isinstance(history, list) else ():
        if isinstance(move, dict) and str(move.get("to")) == status:
            at = move.get("at")
            try:
                return datetime.fromisoformat(at) if isinstance(at, str) else None
            except ValueError:
                return None
    return None


def _from_stored(data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a record from its compact stored form (`JobRecord.to_store_json`):
    version 4, 3 (without what `_implied_v4` adds, times in microseconds), or version 2
    (without what `_implied` and `storedform.encode_moves` add either)."""
    version = data.get("v")
    in_ms = version == storedform.RECORD_VERSION
    data = storedform.rename({name: value for name, value in data.items() if name != "v"}, _LONG_RECORD_NAMES)
    if version in storedform.RECORD_VERSIONS:
        job_id = data.get("id")
        for name in _URI_FIELDS:
            if name in data and isinstance(job_id, str):
                data[name] = storedform.join_id(data[name], job_id)
        manifest = data.get("manifest_uri")
        if isinstance(manifest, str) and isinstance(data.get("output_uri"), str):
            data["manifest_uri"] = storedform.absolute_uri(manifest, data["output_uri"])
        for name, implied in _implied(data).items():
            storedform.restore(data, name, implied)
    origin = storedform.decode_times(data, "created_at", _TIME_FIELDS, in_ms=in_ms)
    request = data["request"] = storedform.rename(dict(data.get("request") or {}), _LONG_REQUEST_NAMES)
    request.setdefault("provider", data.get("provider"))
    request.setdefault("model", data.get("model"))
    if "budget_keys" not in data and isinstance(data.get("created_at"), datetime):
        data["budget_keys"] = derived_budget_keys(data["created_at"], tuple(request.get("tags") or ()))
    history = data.get("history")
    if version in storedform.RECORD_VERSIONS:
        if isinstance(history, list) and origin is not None:
            data["history"] = storedform.decode_moves(history, origin, data["status"], data["updated_at"], in_ms=in_ms)
        if in_ms:
            implied = _implied_v4(data.get("provider_task_id"), data.get("output_uri"), data.get("history"))
            for name, value in implied.items():
                data.setdefault(name, value)
        return data
    if data.get("manifest_uri") and data.get("output_uri"):
        data["manifest_uri"] = storedform.absolute_uri(data["manifest_uri"], data["output_uri"])
    if history and origin is not None:
        data["history"] = storedform.decode_history(history, origin, data["status"], data["updated_at"])
    return data
