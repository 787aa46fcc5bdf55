"""Every Redis key videoqueue uses, in one module (as arq's `constants.py`).

All keys start with the namespace's prefix (`namespace.key_prefix`: `vq:` in `default`,
`vq@N:` in namespace N), so deployments sharing a Redis never see each other's keys. The
constants below are module attributes kept current by `namespace.keep`: read them as
`keys.NAME` when used, never `from videoqueue.keys import NAME` (that copy would keep the
namespace of import time). The functions read the current namespace when called, so they
may be imported by name.

Each key says what it holds (Redis type) and for how long (TTL; none: kept for ever).
On a Redis broker Celery's queues are lists too, named by `namespace.queue()` (`vq.submit`,
`vq@N.poll`...); kombu's keys of unacknowledged messages are named below.
"""

from __future__ import annotations

from videoqueue import namespace


def _key(suffix: str) -> str:
    return namespace.key_prefix() + suffix


PREFIX = namespace.keep(globals(), "PREFIX", namespace.key_prefix)
"""What every key of the current namespace starts with (`vq:` or `vq@N:`)."""


# --- Job store (videoqueue.jobstore) --------------------------------------------------


def job_key(job_id: str) -> str:
    """String: one job's JobRecord as compact JSON (`JobRecord.to_store_json`,
    videoqueue.storedform; the full JSON of earlier versions still reads). TTL: none while
    active; JOB_RETENTION_S after a final move (videoqueue.retention), renewed by a second
    end; none when that is 0."""
    return f"{PREFIX}job:{job_id}"


def input_key(job_id: str, role: str) -> str:
    """String: JSON {name, mime_type, data (base64)} of an input image a producer uploaded
    (role `first_frame` or `last_frame`), as producers before object-storage inputs wrote
    it; now only read, for such jobs (videoqueue.inputs). TTL: the time to the job's
    deadline plus jobstore.INPUT_GRACE_S (1 day), at most JOB_RETENTION_S after the final move."""
    return f"{PREFIX}input:{job_id}:{role}"


INPUTS_RELEASE_INDEX = namespace.keep(globals(), "INPUTS_RELEASE_INDEX", lambda: _key("inputs:release"))
"""Sorted set: the ids of final jobs whose input images in object storage are to be
deleted, scored by when (epoch s; videoqueue.inputs). Written by the final move, emptied
as the objects are deleted. No TTL."""


def client_key(client_job_id: str) -> str:
    """String: the job id a producer's own client job id names (the newest attempt of a
    retried job). TTL: jobstore.CLIENT_ID_TTL_S (90 days)."""
    return f"{PREFIX}client:{client_job_id}"


def task_claim_key(provider: str, task_id: str) -> str:
    """String: the one job id a provider's task belongs to. TTL: jobstore.TASK_CLAIM_TTL_S
    (7 days), shortened at the job's final move to `retention.claim_after_end_s` (about
    50 h at the defaults)."""
    return f"{PREFIX}task:{provider}:{task_id}"


LEGACY_ALL_INDEX = namespace.keep(globals(), "LEGACY_ALL_INDEX", lambda: _key("jobs:all"))
"""Sorted set, no longer written nor read: every job id by creation time, as versions before
issue 18 kept it (the union of the status indexes, same scores: about 170 B per job). All
jobs are read from the status indexes now (`JobStore.list`, `ids_starting_with`); the
recovery sweep UNLINKs a stale one each tick (`retention.drop_legacy_all_index`)."""


def status_index(status: str) -> str:
    """Sorted set: the ids of the jobs in `status` (a JobStatus value), scored by creation
    time (epoch s); together they hold every stored job once (a move takes it from one to
    the other in one transaction), so "all jobs" is read from them; the sweep trims the ids
    of expired records from the final ones (videoqueue.retention). No TTL."""
    return f"{PREFIX}jobs:status:{status}"


DUE_INDEX = namespace.keep(globals(), "DUE_INDEX", lambda: _key("jobs:due"))
"""Sorted set: active job ids scored by when their next step is due (epoch s); what the
recovery sweep reads. A job leaves it when it ends. No TTL."""

PARKED_INDEX = namespace.keep(globals(), "PARKED_INDEX", lambda: _key("jobs:parked"))
"""Sorted set: job ids whose next step was not sent as a countdown message (its wait is
beyond COUNTDOWN_HORIZON_S, or HELD_MESSAGES_MAX were held), scored like DUE_INDEX; the
park timer (PARK_TIMER) sends each step when due, the sweep too as a safety net. No TTL."""

PARK_TIMER = namespace.keep(globals(), "PARK_TIMER", lambda: _key("jobs:parked:timer"))
"""String: when (epoch s) the one unpark message (`videoqueue.unpark`) sent for the parked
steps is due (videoqueue.parking); a step parked for earlier re-arms it. TTL: until then,
plus 5 s, so a lost message leaves no timer and the sweep arms a new one."""


EVENTS_STREAM = namespace.keep(globals(), "EVENTS_STREAM", lambda: _key("events"))
"""Stream: one entry per status change of any job, appended by the change's own write
(videoqueue.events: fields `j` job id, `f` old status, absent for a created job, `s` new
status, `t` epoch s; a final one adds `c` cost USD, `o` output URI, `ec`/`em` error code
and message). Capped at about EVENTS_MAXLEN entries (XADD MAXLEN ~). No TTL."""


# --- Budgets (videoqueue.budget) -------------------------------------------------------

BUDGET_PREFIX = namespace.keep(globals(), "BUDGET_PREFIX", lambda: _key("budget:"))
"""Prefix of the budget counters (budget_counter_key): every key under it is one, so
metrics and the budget rebuild scan it."""


def budget_counter_key(budget: str) -> str:
    """Hash {reserved, spent} in micro-dollars of one budget: `day:YYYY-MM-DD`,
    `month:YYYY-MM` or `tag:NAME`. TTL: budget.DAY_TTL_S (40 days) and budget.MONTH_TTL_S
    (400 days) after the last reservation; tag counters none."""
    return f"{BUDGET_PREFIX}{budget}"


BUDGET_CAPS = namespace.keep(globals(), "BUDGET_CAPS", lambda: _key("budget-caps"))
"""Hash: cap name (`day`, `month`, `tag:NAME`) to a USD amount or `none`, set by `videoqueue
budget set`. Outside BUDGET_PREFIX, which holds counters only. No TTL."""


# --- Cost ledger (videoqueue.ledger) ---------------------------------------------------

LEDGER_PREFIX = namespace.keep(globals(), "LEDGER_PREFIX", lambda: _key("ledger:"))
"""Prefix of LEDGER_INDEX and of every ledger_entry_key."""

LEDGER_INDEX = namespace.keep(globals(), "LEDGER_INDEX", lambda: _key("ledger:index"))
"""Sorted set: the job ids with a ledger entry, scored by settlement time (epoch s); the
sweep trims the ids of expired rows (videoqueue.retention). No TTL."""


def ledger_entry_key(job_id: str) -> str:
    """String: a job's LedgerEntry as compact JSON (`LedgerEntry.to_store_json`; the full
    JSON of earlier versions still reads), what it cost, settled. TTL: JOB_RETENTION_S after
    the job's final move, as its record (videoqueue.retention); none when that is 0."""
    return f"{LEDGER_PREFIX}entry:{job_id}"


LEDGER_DAYS = namespace.keep(globals(), "LEDGER_DAYS", lambda: _key("ledger:days"))
"""Sorted set: the UTC days (`YYYY-MM-DD`) that have a ledger_day_key, scored by the day's
start (epoch s). No TTL."""


def ledger_day_key(day: str) -> str:
    """Hash: the cost aggregates of one UTC day of settlement (videoqueue.ledger_days): field
    `PART PROVIDER MODEL STATUS TAG METRIC` (space-separated; tags hold no spaces), PART `t`
    (every job once, TAG `*`), `g` (a job under each of its tags) or `u` (untagged jobs, TAG
    `*`); METRIC `jobs`, `est`, `act`, `unc` (integer micro-dollars). No TTL: what `videoqueue
    costs` reads, so totals survive the per-job rows."""
    return f"{LEDGER_PREFIX}day:{day}"


LEDGER_DAYS_VERSION = namespace.keep(globals(), "LEDGER_DAYS_VERSION", lambda: _key("ledger:days-version"))
"""String: the version of the day aggregates (`1`), set in the transaction that backfilled
them from the per-job rows of a deployment that had none (videoqueue.ledger_days). No TTL."""


# --- Provider limits (videoqueue.limits) -----------------------------------------------

LIMITS_PREFIX = namespace.keep(globals(), "LIMITS_PREFIX", lambda: _key("limits:"))
"""Prefix of the per-model limit keys below."""


def slot_key(provider: str, model: str) -> str:
    """Sorted set: the job ids holding an in-flight slot of a model, scored by lease
    expiry (epoch s); expired members are dropped on the next acquire. No TTL."""
    return f"{LIMITS_PREFIX}slots:{provider}:{model}"


def creates_key(provider: str, model: str) -> str:
    """Sorted set: one token per create request of a model, scored by when it was sent
    (epoch s): the one-minute sliding window of the create rate. TTL 120 s, renewed by
    each create."""
    return f"{LIMITS_PREFIX}creates:{provider}:{model}"


def backoff_key(provider: str, model: str) -> str:
    """String: until when (epoch s) every worker waits before creating on a model again
    after a 429. TTL: until then, plus 1 s."""
    return f"{LIMITS_PREFIX}backoff:{provider}:{model}"


LIMITS_CONFIG = namespace.keep(globals(), "LIMITS_CONFIG", lambda: _key("limits:config"))
"""Hash: model to the JSON {"max_in_flight": N, "creates_per_minute": M} set by `videoqueue
limits set`; it overrides the settings' limits of that model for the whole fleet at once.
No TTL."""


LIMITS_APPLIED = namespace.keep(globals(), "LIMITS_APPLIED", lambda: _key("limits:applied"))
"""Hash: model to the JSON {"max_in_flight": N, "creates_per_minute": M, "at": epoch s}
of the limits the last admission of that model applied (a worker's settings, or
LIMITS_CONFIG): what a shell shows when it has other settings than the workers. No TTL."""


WEIGHTS_APPLIED = namespace.keep(globals(), "WEIGHTS_APPLIED", lambda: _key("tenant-weights:applied"))
"""String: the JSON tenant -> weight (TENANT_WEIGHTS) the last admission applied: what
positions are worked out with in a shell whose settings differ from the workers'. No TTL."""


# --- Waiting room (videoqueue.room) ----------------------------------------------------

ROOMS = namespace.keep(globals(), "ROOMS", lambda: _key("rooms"))
"""Set: `provider|model` of every waiting room that may hold jobs (the sweep and
`videoqueue queue` read it; a room found empty leaves it). No TTL."""


def room_prefix(provider: str, model: str) -> str:
    """What the keys of one model's waiting room start with. Under it: `:q:P:TENANT`, a
    sorted set of the waiting job ids of priority P and that tenant, scored by enqueue time
    (epoch microseconds); `:t:P`, a sorted set of the tenants with jobs waiting at priority
    P, scored by their virtual start time (weighted fair queuing); `:vt`, a hash of each
    priority's virtual clock (`P`) and each tenant's virtual finish (`P:TENANT`); `:timer`,
    a string, when (epoch s) the one admit message sent for a time-bound opening is due
    (TTL until then). No TTL but the timer's."""
    return f"{PREFIX}room:{provider}:{model}"


def room_queue_key(provider: str, model: str, priority: int, tenant: str) -> str:
    """Sorted set: the ids of the jobs of one priority and tenant waiting for `model`,
    scored by enqueue time (epoch microseconds): first in, first out. No TTL."""
    return f"{room_prefix(provider, model)}:q:{priority}:{tenant}"


# --- Counters for metrics (videoqueue.stats) -------------------------------------------

STATS_JOBS = namespace.keep(globals(), "STATS_JOBS", lambda: _key("stats:jobs"))
"""Hash: `status|provider|model` to the number of jobs in that status. No TTL."""

STATS_COST = namespace.keep(globals(), "STATS_COST", lambda: _key("stats:cost"))
"""Hash: `actual|provider|model` and `estimate|provider|model` in micro-dollars, and
`jobs|provider|model`, of settled jobs. No TTL."""

STATS_RENDER_SECONDS = namespace.keep(globals(), "STATS_RENDER_SECONDS", lambda: _key("stats:render_seconds"))
"""Hash: histogram of render times: `bucket=BOUND|provider|model` counts the renders of that
bucket alone (the first bound not exceeded, or +Inf), `sum|provider|model` their seconds;
`le=BOUND|provider|model` are cumulative counts written by earlier versions, which the
exporter adds in (videoqueue.metrics). No TTL."""

STATS_STORE_SECONDS = namespace.keep(globals(), "STATS_STORE_SECONDS", lambda: _key("stats:store_seconds"))
"""Hash: histogram of store (download and upload) times, fields as STATS_RENDER_SECONDS.
No TTL."""


# --- Worker side (worker.render_history, worker.registry, worker.sweep) ---------------


def render_history_key(provider: str, model: str, resolution: object, duration: object, service_tier: object) -> str:
    """List: the last POLL_HISTORY_SIZE render times (seconds, `~` marks an approximate
    one) of one kind of job, newest first (LPUSH + LTRIM). No TTL."""
    kind = (provider, model, resolution, duration, service_tier)
    return f"{PREFIX}render:" + ":".join(str(part) for part in kind)


WORKERS_PREFIX = namespace.keep(globals(), "WORKERS_PREFIX", lambda: _key("workers:"))
"""Prefix of the worker registry (worker_key): `videoqueue doctor` scans it."""


def worker_key(node: str) -> str:
    """String: a worker's WorkerEntry as JSON (queues, endpoint fingerprints). TTL:
    registry.TTL_S (60 s), refreshed by the worker's heartbeat."""
    return f"{WORKERS_PREFIX}{node}"


RETENTION_CURSOR = namespace.keep(globals(), "RETENTION_CURSOR", lambda: _key("retention:cursor"))
"""Hash: index key to where the sweep's retention walk of that index stopped: `score skip member`
(the last member looked at, its score in epoch s, and how many members of that score up to it
are still in the index; videoqueue.retention._Cursor); a walk that reaches the cut-off
starts again from the oldest. No TTL."""


SWEEP_LOCK = namespace.keep(globals(), "SWEEP_LOCK", lambda: _key("sweep:lock"))
"""String: the random token of the worker running the recovery sweep. TTL: the sweep
interval (at least 10 s); deleted by its holder when the sweep ends."""


def open_uploads_key(uri: str) -> str:
    """Set: the UploadIds of the S3 multipart uploads to `uri` (`s3://bucket/key`) a store
    attempt opened and has not seen completed or aborted, so a later attempt, on any host,
    aborts what a killed one left (worker.open_uploads). TTL: open_uploads.TTL_S (7 days),
    renewed at each upload opened."""
    return f"{PREFIX}s3-open-uploads:{uri}"


def callback_poll_key(job_id: str, seq: int) -> str:
    """String: set when a provider callback sent the poll of a job with this poll_seq, so
    that a duplicate of the callback sends none (worker.callbacks). TTL:
    callbacks.SENT_MARK_TTL_S (1 h)."""
    return f"{PREFIX}callback-poll:{job_id}:{seq}"


REPLICA_WAIT_MARK = namespace.keep(globals(), "REPLICA_WAIT_MARK", lambda: _key("replica-wait"))
"""String: written just before each WAIT for a replica (videoqueue.replicawait), so that
the WAIT's own connection has a write that follows the one to make durable. TTL: 60 s."""


# --- Notifications: webhooks and completion tasks (videoqueue.webhooks) ----------------


def deliveries_key(job_id: str) -> str:
    """Hash: one job's deliveries (its webhooks and its completion task), each delivery id
    (`<job id>:<event>`, the `webhook-id`) to its Delivery as JSON (state, attempts, last
    status code, last error, delivered_at) and `<id>:body` to the body it sends. Written by
    the move that owes it; TTL: JOB_RETENTION_S from the job's final move, like its record."""
    return f"{PREFIX}deliveries:{job_id}"


DELIVERIES_DUE = namespace.keep(globals(), "DELIVERIES_DUE", lambda: _key("deliveries:due"))
"""Sorted set: the ids of deliveries not yet done, scored by when (epoch s) the sweep sends
them (again): a little after the move for one just owed (the worker sends it at once), the
end of an attempt's lease, or a retry's time beyond COUNTDOWN_HORIZON_S. No TTL: a delivery
leaves it when delivered or given up."""


# --- Movies (videoqueue.movies) ----------------------------------------------------------


def movie_key(movie_id: str) -> str:
    """String: one movie's record as JSON (videoqueue.movies.MovieRecord: its scenes' job
    ids, state, output, total cost). TTL: JOB_RETENTION_S from the movie's end."""
    return f"{PREFIX}movie:{movie_id}"


MOVIES_DUE = namespace.keep(globals(), "MOVIES_DUE", lambda: _key("movies:due"))
"""Sorted set: the ids of movies whose advance (`videoqueue.movie_advance`) is owed, scored
by when (epoch s) the sweep sends it (again): written by a scene's final move, a little
after it (the worker sends the task at once); the advance takes it out when done."""

# --- Batches (videoqueue.batches) ---------------------------------------------------------


def batch_key(batch_id: str) -> str:
    """Hash: one batch: `meta` (its name, tags, job ids, estimate, created_at as JSON), `n:<status>`
    how many of its jobs are in each status, `open` how many are not final, `actual` the
    micro-dollars charged for its ended jobs, `finished_at` (epoch s) once the last ended.
    Counts and money move in each job's move script. TTL: JOB_RETENTION_S from its end."""
    return f"{PREFIX}batch:{batch_id}"


BATCH_INDEX = namespace.keep(globals(), "BATCH_INDEX", lambda: _key("batches"))
"""Sorted set: batch ids scored by creation time (epoch s), for `batch list`; an id whose
record expired is dropped when read."""

# --- Celery's broker (kombu's Redis transport) -----------------------------------------


def broker_transport_options(name: str | None = None) -> dict[str, str]:
    """kombu Redis transport options naming its keys of unacknowledged messages (a hash, a
    sorted set and a lock) in namespace `name` (default: the current one); empty for
    `default`, which keeps kombu's own `unacked`, `unacked_index` and `unacked_mutex`."""
    name = namespace.current() if name is None else namespace.validate(name)
    if name == namespace.DEFAULT:
        return {}
    prefix = namespace.key_prefix(name)
    return {
        "unacked_key": f"{prefix}unacked",
        "unacked_index_key": f"{prefix}unacked_index",
        "unacked_mutex_key": f"{prefix}unacked_mutex",
    }


def namespace_of(key: str) -> str | None:
    """The namespace whose prefix `key` carries (`vq:...` is `default`, `vq@N:...` is N),
    or None for a key of no namespace."""
    head, sep, _ = key.partition(":")
    name = namespace.DEFAULT if head == "vq" else head.removeprefix("vq@")
    if sep and namespace.is_valid(name) and key.startswith(namespace.key_prefix(name)):
        return name
    return None
