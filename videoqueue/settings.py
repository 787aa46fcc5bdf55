"""One settings object for producers and workers, read from the environment and `.env`.

Secrets are `SecretStr`: they print as `**********` and must be unwrapped on purpose
with `.get_secret_value()` at the single place that hands them to an SDK.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from videoqueue import namespace
from videoqueue.budget import AMOUNT_RULE, BudgetPolicy, parse_usd
from videoqueue.catalog import load_catalog
from videoqueue.errors import InvalidSettingsError as InvalidSettingsError  # noqa: PLC0414 - re-export
from videoqueue.events import DEFAULT_MAXLEN as DEFAULT_EVENTS_MAXLEN
from videoqueue.limits import LIMIT_NAMES, MAX_LIMIT, ModelLimits, limit_problem
from videoqueue.replicawait import DEFAULT_TIMEOUT_MS as DEFAULT_REPLICA_WAIT_MS
from videoqueue.resolved import TENANT_RULE, is_tenant_name
from videoqueue.urlguard import AllowList, AllowListError
from videoqueue.webhooks import secrets_of

BYTEPLUS_DEFAULT_BASE_URL = "https://ark.ap-southeast.bytepluses.com/api/v3"

MIN_CALLBACK_SECRET_CHARS = 16
"""The shortest CALLBACK_SECRET taken: the key of every callback URL's token."""


class Settings(BaseSettings):
    """Every knob of videoqueue. Field names map to upper-case environment variables."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # An empty value means unset, for every setting: `S3_ENDPOINT_URL=` in .env or
        # `${S3_ENDPOINT_URL:-}` in compose. This covers the environment and .env, before
        # JSON settings (MODEL_LIMITS, BUDGET_TAGS_USD) are parsed; `_empty_is_unset` below
        # applies the same rule to values passed in code.
        env_ignore_empty=True,
    )

    vq_namespace: str = Field(
        default=namespace.DEFAULT,
        description="Deployment name, the prefix of every Redis key and Celery queue; deployments never mix.",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Job store, and the Celery broker unless BROKER_URL is set.",
    )
    broker_url: str | None = Field(default=None, description="Celery broker; defaults to REDIS_URL.")
    storage_url: str = Field(
        default="file://./videos",
        description="Where videos go: file://PATH or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, moto).")
    s3_checksums: Literal["when_required", "when_supported"] | None = Field(
        default=None,
        description=(
            "When boto3 adds CRC checksum headers to uploads (x-amz-checksum-*, "
            "x-amz-sdk-checksum-algorithm) and validates them on downloads: when_supported (boto3's "
            "default since 1.36) or when_required. Default: when_required with S3_ENDPOINT_URL (many "
            "S3-compatible stores refuse those headers with 400 InvalidArgument), when_supported for AWS."
        ),
    )
    aws_access_key_id: SecretStr | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_region: str = "us-east-1"

    byteplus_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("BYTEPLUS_API_KEY", "ARK_API_KEY")
    )
    byteplus_base_url: str = BYTEPLUS_DEFAULT_BASE_URL

    google_api_key: SecretStr | None = Field(
        default=None, description="Vertex AI express mode key; else project + location + ADC."
    )
    google_cloud_project: str | None = None
    google_cloud_location: str = "us-central1"
    veo_base_url: str | None = Field(default=None, description="Override of the Vertex AI endpoint.")
    veo_output_gcs_uri: str | None = Field(
        default=None, description="gs://bucket/prefix for Veo to write into (needs Google credentials)."
    )

    # Before DEFAULT_PROVIDER: fields are validated in this order, and that one is checked
    # against the catalog this file amends.
    pricing_file: str | None = Field(
        default=None, description="TOML file overriding prices (and capabilities) of models.toml."
    )
    default_provider: str = Field(
        default="byteplus",
        description="Provider for requests that name none, one with models in the catalog.",
    )
    job_deadline_s: float = Field(
        default=7200.0,
        gt=0,
        description=(
            "At this long after enqueue a job is stopped: one last status call, then it ends the way "
            "the provider says; a task still queued is cancelled and the job ends `expired`; one "
            "already rendering (no longer cancellable) is followed to its end and billed."
        ),
    )

    poll_initial_s: float | None = Field(
        default=None,
        gt=0,
        description="First poll delay on the cold schedule; default: POLL_MIN_S.",
    )
    poll_min_s: float = Field(
        default=2.0, gt=0, description="Cold schedule: the first poll, and the least interval between polls."
    )
    poll_max_s: float = Field(default=60.0, gt=0, description="The longest interval between two polls.")
    poll_backoff: float = Field(
        default=1.2,
        ge=1.0,
        description=(
            "Cold schedule: each interval is POLL_MIN_S plus (POLL_BACKOFF - 1) of the time already "
            "waited, so a job is seen at most POLL_MIN_S + 20% of its render time after it ends; past "
            "the learned window, the time overdue grows by this factor per poll."
        ),
    )
    poll_jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    poll_schedule: Literal["learned", "backoff"] = Field(
        default="learned",
        description=(
            "learned: poll densely inside the window where past jobs of the same kind finished "
            "(the cold schedule until POLL_HISTORY_MIN of them are known); backoff: always the cold "
            "schedule (first poll after POLL_MIN_S, intervals growing with the time waited)."
        ),
    )
    poll_interval_s: float = Field(
        default=3.0,
        gt=0,
        description=(
            "Poll interval inside the learned window. 3 s sees a job about 1.5 s after it finishes "
            "(p95 about 3 s) for about 3.5 polls per job, and still under 6 polls if render times "
            "spread twice as wide as we assume; 2 s costs a poll more per job for 0.5 s, 5 s puts the "
            "p95 near 5 s (bench/detection.py, docs/benchmarks.md)."
        ),
    )
    poll_interval_backlog_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Poll interval inside the learned window while jobs wait for the model's quota (its "
            "waiting room is not empty): a finish seen sooner is a slot refilled sooner. 1 s leaves "
            "a finished task's slot idle about 0.5 s instead of 1.5 s (a 30 s render: 0.98 of the "
            "slot used instead of 0.95), for about two status calls more per job, only then."
        ),
    )
    poll_window_low_q: float = Field(
        default=0.10,
        ge=0.0,
        lt=1.0,
        description=(
            "The first poll comes at this quantile of past render times. 0.10 rather than lower: the "
            "few jobs done before it are seen a little late, and every other job saves polls."
        ),
    )
    poll_window_high_q: float = Field(
        default=0.97,
        gt=0.0,
        le=1.0,
        description="Dense polling lasts until this quantile of past render times, then backs off.",
    )
    poll_history_size: int = Field(
        default=200, ge=1, description="Render times kept per provider, model, resolution, duration and tier."
    )
    poll_history_min: int = Field(
        default=10, ge=2, description="Render times needed before the learned window replaces the backoff schedule."
    )
    poll_history_cache_s: float = Field(
        default=30.0, ge=0, description="How long a worker process reuses the render times it read from Redis."
    )
    callback_base_url: str | None = Field(
        default=None,
        description=(
            "Where ModelArk calls back when a task's status changes: creates carry "
            "callback_url=<this>/callbacks/byteplus/<job id>/<token>, served by `videoqueue callbacks`. "
            "Unset: no callbacks, polls only."
        ),
    )
    callback_secret: SecretStr | None = Field(
        default=None,
        validate_default=True,  # required with CALLBACK_BASE_URL
        description="The HMAC-SHA256 key of the callback URLs' tokens; required with CALLBACK_BASE_URL.",
    )
    callback_safety_poll_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "With callbacks on, the interval of the regular polls of ModelArk jobs: a safety net for "
            "a callback that never comes (still bounded by the job's deadline)."
        ),
    )

    uncertain_creates_max: int = Field(
        default=2,
        ge=1,
        description=(
            "Creates whose answers were lost and that the provider cannot show again (Vertex AI "
            "lists no operations) a job may pay for before it fails `submit_uncertain` instead of "
            "creating yet another paid task."
        ),
    )
    submit_max_attempts: int = Field(
        default=6, ge=1, description="Provider create attempts for upstream/timeout errors."
    )
    poll_max_errors: int = Field(default=30, ge=1, description="Consecutive failed status calls before a job fails.")
    store_max_attempts: int = Field(default=8, ge=1)
    retry_base_s: float = Field(default=2.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    submit_lease_s: float = Field(
        default=180.0,
        gt=0,
        description="How long a submit attempt may hold a job before another may take over.",
    )

    max_in_flight_per_model: int = Field(
        default=100, ge=1, le=MAX_LIMIT, description="Provider tasks in flight per model, across the fleet."
    )
    creates_per_minute_per_model: int = Field(
        default=120, ge=1, le=MAX_LIMIT, description="Create requests per minute per model, across the fleet."
    )
    model_limits: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description='Per-model overrides, JSON: {"<model>": {"max_in_flight": 20, "creates_per_minute": 50}}.',
    )
    # Not named tenant_weights: that is the method giving the mapping.
    tenant_weight_map: dict[str, float] = Field(
        default_factory=dict,
        validation_alias=AliasChoices("TENANT_WEIGHTS", "tenant_weight_map"),
        description=(
            "Weight of each tenant's share of a model's quota, a number > 0; a tenant not listed weighs 1. "
            'JSON: {"acme": 2, "batch": 0.5}.'
        ),
    )
    slot_lease_s: float = Field(
        default=900.0, gt=0, description="An in-flight slot not renewed by a poll for this long is freed."
    )
    recover_after_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "The floor of the stalled rule: a job overdue by more than max(3 x its expected interval, this) "
            "is shown stalled and put back on its way by the sweep (docs/reliability.md)."
        ),
    )
    store_busy_s: float = Field(
        default=1500.0, gt=0, description="How long one store attempt may take before the sweep retries it."
    )
    store_deadline_s: float = Field(
        default=21600.0,
        gt=0,
        description=(
            "A job not stored this long after the provider finished it ends `failed` (storage), "
            "whatever attempts are left; `videoqueue store retry` can store it again while the "
            "provider still holds the video (ModelArk: 24 h)."
        ),
    )
    store_media_check: bool = Field(
        default=True,
        description=(
            "The store step reads each stored video with PyAV (container, streams, first frame; "
            "S3: by ranged GETs) and fails the attempt if it does not decode or its duration is "
            "off (worker/media.py)."
        ),
    )
    store_duration_tolerance_s: float = Field(
        default=1.0,
        ge=0,
        description=(
            "How far a stored video's duration may be from the one requested, in seconds, "
            "before the store check refuses it (providers round: Seedance's 5 s is 121 frames)."
        ),
    )
    sweep_interval_s: float = Field(
        default=60.0, ge=0, description="How often a worker looks for stranded jobs (0: never)."
    )
    job_retention_s: int = Field(
        default=2592000,
        description=(
            "How long a final job record (with its ledger row and legacy input keys) is kept "
            "after its final move, in seconds: 30 days; 0 keeps records for ever "
            "(videoqueue/retention.py). Cost totals are kept per day whatever this is."
        ),
    )
    retention_sweep_batch: int = Field(
        default=5000,
        gt=0,
        description="Index entries of expired records each recovery sweep looks at, at most (bounded work per tick).",
    )
    countdown_horizon_s: float = Field(
        default=60.0,
        ge=0,
        description=(
            "The near future: a step due within this many seconds is sent as a countdown message "
            "(held by a worker until due); a longer wait is parked in the job store and the park "
            "timer sends it when due (docs/architecture.md, Parked steps). Never above the "
            "broker's own bound (max_countdown_s of the visibility timeout)."
        ),
    )
    held_messages_max: int = Field(
        default=2000,
        ge=1,
        description=(
            "The most countdown messages the fleet holds at once (each about 9 KB of a worker's "
            "memory); a step sent when that many are held is parked instead. Celery's "
            "worker_eta_task_limit is set above it (celeryconfig.py), so no worker ever reaches "
            "Celery's cap and stops taking new work."
        ),
    )

    worker_max_memory_per_child: int = Field(
        default=524288,
        ge=0,
        description=(
            "Celery's worker_max_memory_per_child, in KiB: a prefork pool child whose resident "
            "memory reached it is replaced by a fresh one after the task it runs (which finishes "
            "first). A child starts at about 130 MiB and the heap of a busy store child keeps "
            "growing by about 1 KB a job from fragmentation (docs/benchmarks.md section 9); the "
            "default, 512 MiB, replaces it every few hundred thousand jobs. 0: never. The "
            "threads pool has no children and does not grow so."
        ),
    )

    follow_past_deadline_s: float = Field(
        default=172800.0,
        gt=0,
        description=(
            "A provider task still rendering at the job's deadline that cannot be cancelled is "
            "followed to its end (it is billed), for at most this long after the deadline: 48 h, "
            "ModelArk's default task expiry."
        ),
    )

    provider_timeout_s: float = Field(default=30.0, gt=0)
    download_timeout_s: float = Field(default=60.0, gt=0)

    budget_daily_usd: Decimal | None = Field(
        default=None,
        description="Default cap on spend per UTC day in USD; a cap set with `videoqueue budget set` wins.",
    )
    budget_monthly_usd: Decimal | None = Field(
        default=None,
        description="Default cap on spend per UTC month in USD; a cap set with `videoqueue budget set` wins.",
    )
    budget_tags_usd: dict[str, Decimal] = Field(
        default_factory=dict,
        description=(
            'Default caps per tag (all time) in USD, as JSON {"campaign-a": 50}; caps set with '
            "`videoqueue budget set` win."
        ),
    )
    check_image_urls: bool = Field(default=True, description="Check at submit that image URLs answer like images.")
    fetch_allow_hosts: str = Field(
        default="",
        description=(
            "Trusted internal hosts the URL guard lets image URLs reach, comma separated: names, "
            "name:port, IPs, CIDRs (10.0.0.0/8, [fd00::1]:9000). Empty: only public addresses."
        ),
    )
    fetch_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="Deadline in seconds for one fetch of a user's image URL by a worker, redirects included.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description=(
            "The Standard Webhooks secret(s) deliveries are signed with, `whsec_` + base64, comma "
            "separated to rotate (each signs; receivers accept any of theirs). Required to submit a "
            "job with a webhook_url."
        ),
    )
    webhook_allow_http: bool = Field(default=False, description="Accept http:// webhook URLs (default: https only).")
    webhook_allow_private: bool = Field(
        default=False,
        description="Let webhooks reach loopback, private and link-local addresses (tests, one host); never metadata.",
    )
    webhook_timeout_s: float = Field(
        default=15.0, gt=0, description="Deadline in seconds of one webhook POST (a timeout is retried)."
    )
    webhook_retry_schedule_s: list[float] = Field(
        default=[0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
        description=(
            "Seconds before each webhook attempt, after the previous one failed on a timeout, a "
            "connection error, a 429 or a 5xx (Svix's: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, "
            "10 h); as JSON. Waits beyond COUNTDOWN_HORIZON_S wait in the delivery index for the sweep."
        ),
    )

    redis_sentinels: str | None = Field(
        default=None,
        description=(
            "Redis Sentinel nodes, host:port,host:port,...: the job store and the Celery broker both "
            "connect to the primary the sentinels name (REDIS_SENTINEL_MASTER); REDIS_URL then gives only "
            "the database number and the Redis password."
        ),
    )
    redis_sentinel_master: str | None = Field(
        default=None,
        validate_default=True,  # required with REDIS_SENTINELS
        description="The service name the sentinels monitor (sentinel.conf's `monitor <name>`).",
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, description="The sentinels' own password (their requirepass), when they ask for one."
    )
    redis_replica_wait_ms: int = Field(
        default=DEFAULT_REPLICA_WAIT_MS,
        ge=0,
        description=(
            "After a write that must survive a failover (a job created, a create's intent, a provider task id "
            "recorded, a final move), wait this long for one replica to confirm it (WAIT), when the primary "
            "has replicas; 0: never wait."
        ),
    )
    events_maxlen: int = Field(
        default=DEFAULT_EVENTS_MAXLEN,
        ge=1000,
        description=(
            "About how many status changes the event stream keeps (XADD MAXLEN ~, ~100 B each): what "
            "`videoqueue watch --since` and `VideoQueue.events` can still read back."
        ),
    )

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text", description="Worker log lines: text (key=value) or json (one object per line)."
    )

    @model_validator(mode="before")
    @classmethod
    def _empty_is_unset(cls, data: Any) -> Any:
        # The same rule as env_ignore_empty, for every field given in code (Settings(x="")).
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value != ""}
        return data

    @field_validator("job_retention_s")
    @classmethod
    def _retention_not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"JOB_RETENTION_S must be 0 (keep final job records for ever) or seconds > 0, not {value}")
        return value

    @field_validator("log_format", "s3_checksums", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("budget_daily_usd", "budget_monthly_usd", mode="before")
    @classmethod
    def _budget_amount(cls, value: object) -> object:
        return None if value is None else parse_usd(value)

    @field_validator("budget_tags_usd", mode="before")
    @classmethod
    def _budget_tags(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError('must be a JSON object of tag to USD, such as {"campaign-a": 50}') from None
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object of tag to USD, such as {"campaign-a": 50}')
        caps: dict[str, Decimal] = {}
        for tag, amount in value.items():
            if not isinstance(tag, str) or not tag.strip():
                raise ValueError("a tag name is empty")
            if isinstance(amount, bool):
                raise ValueError(f"tag {tag!r}: {AMOUNT_RULE}")
            try:
                caps[tag] = parse_usd(amount)
            except ValueError as exc:
                raise ValueError(f"tag {tag!r}: {exc}") from None
        return caps

    @field_validator("tenant_weight_map", mode="before")
    @classmethod
    def _tenant_weights(cls, value: object) -> object:
        shape = 'must be a JSON object of tenant to weight, such as {"acme": 2, "batch": 0.5}'
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(shape) from None
        if not isinstance(value, dict):
            raise ValueError(shape)
        weights: dict[str, float] = {}
        for tenant, weight in value.items():
            if not is_tenant_name(tenant):
                shown = tenant if len(tenant) <= 40 else tenant[:37] + "..."
                raise ValueError(f"tenant {shown!r}: a tenant name {TENANT_RULE}")
            number = _weight(weight)
            if number is None:
                raise ValueError(f"tenant {tenant!r}: the weight must be a finite number greater than 0")
            weights[tenant] = number
        return weights

    @field_validator("default_provider")
    @classmethod
    def _known_provider(cls, value: str, info: ValidationInfo) -> str:
        try:
            known = load_catalog(info.data.get("pricing_file")).providers()
        except ValueError:
            return value  # an unreadable PRICING_FILE is reported where the catalog is loaded
        if value not in known:
            raise ValueError(f"unknown provider {value!r}; known: {', '.join(known)}")
        return value

    @field_validator("model_limits")
    @classmethod
    def _model_limits(cls, value: dict[str, dict[str, int]], info: ValidationInfo) -> dict[str, dict[str, int]]:
        try:
            known = load_catalog(info.data.get("pricing_file")).models
        except ValueError:
            known = None  # an unreadable PRICING_FILE is reported where the catalog is loaded
        for model, limits in value.items():
            if known is not None and model not in known:
                raise ValueError(f"unknown model {model!r}; known: {', '.join(known)}")
            for name, limit in limits.items():
                if name not in LIMIT_NAMES:
                    raise ValueError(f"{model}: unknown limit {name!r}; known: {', '.join(LIMIT_NAMES)}")
                problem = limit_problem(name, limit)
                if problem is not None:
                    raise ValueError(f"{model}: {problem}")
        return value

    @field_validator("fetch_allow_hosts")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        try:
            AllowList.parse(value)
        except AllowListError as exc:
            # The settings error names the variable already.
            raise ValueError(str(exc).removeprefix("FETCH_ALLOW_HOSTS: ")) from exc
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secrets_of(value)  # ValueError naming which one (never its value)
        return value

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _webhook_schedule(cls, value: list[float]) -> list[float]:
        if any(not math.isfinite(wait) or wait < 0 for wait in value):
            raise ValueError("each wait must be a finite number of seconds, 0 or more")
        return value

    @field_validator("vq_namespace")
    @classmethod
    def _namespace_name(cls, value: str) -> str:
        if not namespace.is_valid(value):
            raise ValueError(namespace.RULE)
        return value

    @field_validator("storage_url")
    @classmethod
    def _storage_scheme(cls, value: str) -> str:
        if not value.startswith(("file://", "s3://")):
            raise ValueError("STORAGE_URL must start with file:// or s3://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        _check_url_parts("REDIS_URL", value)
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_scheme(cls, value: str | None) -> str | None:
        schemes = ("redis://", "rediss://", "unix://", "amqp://", "amqps://", "pyamqp://")
        if value is not None and not value.startswith(schemes):
            raise ValueError("BROKER_URL must start with redis://, rediss://, unix://, amqp:// or amqps://")
        if value is not None:
            _check_url_parts("BROKER_URL", value)
        return value

    # Fields are validated in order: REDIS_URL before REDIS_SENTINELS before its master.
    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_nodes(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        parse_sentinels(value)
        if not str(info.data.get("redis_url", "redis://")).startswith("redis://"):
            raise ValueError(
                "with REDIS_SENTINELS, REDIS_URL must be a redis:// URL (it gives the database and the password; "
                "TLS and unix sockets are not supported with Sentinel)"
            )
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("redis_sentinels") and not value:
            raise ValueError("REDIS_SENTINELS is set: name the master the sentinels monitor")
        if value and "redis_sentinels" in info.data and not info.data["redis_sentinels"]:
            # Ignored, it would let an operator believe the fleet follows a failover.
            raise ValueError("set without REDIS_SENTINELS: give the sentinels too, or unset it")
        return value

    @field_validator("callback_base_url")
    @classmethod
    def _callback_base(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value.startswith(("http://", "https://")):
            raise ValueError("CALLBACK_BASE_URL must start with https:// (or http://)")
        _check_url_parts("CALLBACK_BASE_URL", value)
        return value.rstrip("/")

    @field_validator("callback_secret")
    @classmethod
    def _callback_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("callback_base_url") and (value is None or not value.get_secret_value()):
            raise ValueError("CALLBACK_BASE_URL is set: give the key its tokens are signed with")
        if value is not None and 0 < len(value.get_secret_value()) < MIN_CALLBACK_SECRET_CHARS:
            raise ValueError(
                f"too short: at least {MIN_CALLBACK_SECRET_CHARS} characters (e.g. `openssl rand -hex 32`), "
                "or a callback URL's token could be guessed"
            )
        return value

    def budget_policy(self) -> BudgetPolicy:
        """The default caps these settings give: each applies where Redis holds no cap for
        its budget (see videoqueue.budget)."""
        return BudgetPolicy(self.budget_daily_usd, self.budget_monthly_usd, dict(self.budget_tags_usd))

    def provider_limits(self) -> tuple[ModelLimits, dict[str, ModelLimits]]:
        """Default per-model limits and the per-model overrides."""
        default = ModelLimits(self.max_in_flight_per_model, self.creates_per_minute_per_model)
        overrides = {
            model: ModelLimits(
                values.get("max_in_flight", default.max_in_flight),
                values.get("creates_per_minute", default.creates_per_minute),
            )
            for model, values in self.model_limits.items()
        }
        return default, overrides

    def tenant_weights(self) -> dict[str, float]:
        """TENANT_WEIGHTS: tenant name -> weight (a finite number > 0), the tenants listed
        only; empty when the setting is unset. A new dict each call."""
        return dict(self.tenant_weight_map)

    def weight_of(self, tenant: str) -> float:
        """The weight of `tenant`'s share of the quota: its TENANT_WEIGHTS entry, else 1.0."""
        return self.tenant_weight_map.get(tenant, 1.0)

    @property
    def effective_s3_checksums(self) -> Literal["when_required", "when_supported"]:
        """S3_CHECKSUMS, or its default: when_required for an S3-compatible endpoint."""
        if self.s3_checksums is not None:
            return self.s3_checksums
        return "when_required" if self.s3_endpoint_url else "when_supported"

    @property
    def fetch_allow_list(self) -> AllowList:
        """FETCH_ALLOW_HOSTS, parsed: the hosts the URL guard trusts."""
        return AllowList.parse(self.fetch_allow_hosts)

    @property
    def effective_broker_url(self) -> str:
        """The broker Celery connects to: BROKER_URL; else with REDIS_SENTINELS kombu's
        `sentinel://` URL of every sentinel (with REDIS_URL's password and database, see
        `sentinel_broker_url`); else REDIS_URL."""
        if self.broker_url:
            return self.broker_url
        if self.redis_sentinels:
            return sentinel_broker_url(self.redis_url, parse_sentinels(self.redis_sentinels))
        return self.redis_url

    def sentinel_nodes(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty when unset."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels else []


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info is not None else None
    if isinstance(alias, AliasChoices) and isinstance(alias.choices[0], str):
        return alias.choices[0].upper()
    return field.upper()


def _expects(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is None or not info.description:
        return ""
    return f" ({info.description.rstrip('.')})"


def describe_invalid(exc: ValidationError | SettingsError) -> str:
    """One line naming each setting at fault and what it expects."""
    if isinstance(exc, SettingsError):
        match = re.search(r'field "(\w+)"', str(exc))
        field = match.group(1) if match else ""
        name = env_name(field) if field else "a setting"
        return f"invalid setting {name}: not valid JSON{_expects(field)}"
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        field = next((f for f in Settings.model_fields if env_name(f).lower() == field.lower()), field)
        message = error["msg"].removeprefix("Value error, ")
        # No value is shown: URLs carry passwords, keys are secrets.
        problems.append(f"{env_name(field) if field else 'settings'}: {message}{_expects(field)}")
    return "invalid setting " + "; ".join(problems)


def load_settings() -> Settings:
    """Settings from the environment and .env; InvalidSettingsError (one line) if unusable."""
    try:
        return Settings()
    except (ValidationError, SettingsError) as exc:
        raise InvalidSettingsError(describe_invalid(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once; InvalidSettingsError if they are unusable. The
    process serves their VQ_NAMESPACE unless it chose one already (videoqueue.namespace)."""
    settings = load_settings()
    namespace.adopt(settings.vq_namespace)
    return settings


def _weight(value: object) -> float | None:
    """`value` as a tenant weight, or None when it is none: not a JSON number (a bool is an
    int to Python), or not finite and greater than 0 (json.loads reads NaN and Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        weight = float(value)
    except OverflowError:  # an int past float's range
        return None
    return weight if math.isfinite(weight) and weight > 0 else None


def _check_url_parts(name: str, url: str) -> None:
    """ValueError (one line) for a URL whose port is not a port or, for Redis, whose
    database is not a number: caught here rather than as a client's own error later."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - urllib checks the range when the port is read
    except ValueError:
        raise ValueError(f"{name} names a port that is not a number from 1 to 65535") from None
    database = parts.path.lstrip("/")
    if parts.scheme in ("redis", "rediss") and database and not database.isdigit():
        raise ValueError(f"{name} names database {database!r}: a Redis database is a number (0-15 by default)")


SENTINEL_RULE = "a comma-separated list of host:port, such as sentinel-1:26379,sentinel-2:26379"


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """`host:port,host:port,...` as (host, port) pairs, in order; ValueError (one line,
    naming no value) for an empty list, an entry without a host or a port out of range."""
    nodes: list[tuple[str, int]] = []
    for entry in value.split(","):
        host, _, port = entry.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"REDIS_SENTINELS must be {SENTINEL_RULE}")
        nodes.append((host, int(port)))
    return nodes


def sentinel_broker_url(redis_url: str, nodes: list[tuple[str, int]]) -> str:
    """kombu's Sentinel broker URL: `sentinel://[[user]:password@]host:port/db` for each of
    `nodes`, joined by `;`, the credentials and database taken from `redis_url`. kombu
    reads them from the first and asks each sentinel in turn for the primary."""
    parts = urlsplit(redis_url)
    auth = parts.netloc.rpartition("@")[0]
    auth = f"{auth}@" if auth else ""
    database = parts.path.lstrip("/") or "0"
    return ";".join(f"sentinel://{auth}{_host(host)}:{port}/{database}" for host, port in nodes)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
