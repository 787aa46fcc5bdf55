"""Celery settings for videoqueue, read by producers and workers with
`config_from_object("videoqueue.celeryconfig")`.

Everything here is chosen for at-least-once delivery of idempotent tasks: a message is
acknowledged only after its task has recorded its effect in the job store, so a worker
that dies mid-task leaves the message to be delivered again, and the task's
compare-and-set on the job record makes the second run harmless. The broker alone does
not guarantee progress (a countdown message held by a killed worker can vanish for the
visibility timeout, or for good if a crash falls between two steps); the job store's
recovery sweep (videoqueue/recovery.py) does.
"""

from typing import Any

from videoqueue import keys as _keys
from videoqueue import redisconn as _redisconn
from videoqueue.brokertls import broker_use_ssl as _broker_use_ssl
from videoqueue.parking import eta_task_limit as _eta_task_limit
from videoqueue.queues import AMQP_SETTINGS, broker_timing, celery_conf, is_amqp, route_task
from videoqueue.settings import get_settings

_settings = get_settings()
# The worker app (worker/app.py) has made the settings' VQ_NAMESPACE current before this
# module is read; a producer's app takes its namespace's names in producer_app().
_namespaced = celery_conf(_settings.effective_broker_url)
_timing = broker_timing(_settings)

broker_url = _settings.effective_broker_url
_AMQP = is_amqp(broker_url)
# rediss://: kombu verifies the server's certificate as redis-py does (videoqueue.brokertls).
if (_broker_tls := _broker_use_ssl(broker_url)) is not None:
    broker_use_ssl = _broker_tls

# Keep trying to reach the broker, at start-up and after losing it, for as long as it
# takes: a worker that gives up is a worker somebody has to restart by hand.
broker_connection_retry_on_startup = True
broker_connection_max_retries = None

# No result backend: the job store is the one place results and statuses live.
task_ignore_result = True
result_backend = None

# Only job ids travel; JSON keeps messages readable in Flower and free of pickles.
task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True

# Separate queues so a slow download never delays a poll, and a burst of submits never
# starves either. A worker started without -Q consumes all three.
task_queues = _namespaced["task_queues"]
if _AMQP:
    # RabbitMQ: quorum queues with Celery's native delayed delivery, so a countdown message
    # waits in the broker, not in a worker's memory (videoqueue.queues.AMQP_SETTINGS, which
    # the producer's app takes too).
    globals().update(AMQP_SETTINGS)

task_default_queue = _namespaced["task_default_queue"]
# Each task to its step's queue in the namespace current when it is sent.
task_routes = (route_task,)
# Outside the `default` namespace, broadcasts (inspect, shutdown) and events (Flower) stay
# inside the namespace too.
control_exchange = _namespaced["control_exchange"]
event_exchange = _namespaced["event_exchange"]

# Ack after the task ran: every task is idempotent, so redelivery is safe and a crash
# loses nothing. A pool child killed mid-task (OOM, kill -9) is treated the same way:
# its message goes back to the queue instead of being acknowledged as failed.
task_acks_late = True
task_reject_on_worker_lost = True
# A task that raised is acknowledged, never redelivered: the tasks retry Redis errors
# themselves (autoretry), and JobFailed (worker/outcome.py) is raised only after the job
# store recorded the job's end, so a second delivery would have nothing to do. (Celery's
# default, set here because the Failed count in Flower depends on it.)
task_acks_on_failure = True
# One message at a time per pool slot: a long store task must not sit on prefetched
# submits that another worker could run now. Countdown (ETA) messages are not limited by
# this (Celery raises the prefetch count for them)...
worker_prefetch_multiplier = 1
# ...so this bounds them instead: at it, a worker stops taking messages altogether, due
# work included (measured: a fresh job stayed queued with every thread idle). A held
# message costs about 9 KB of the worker's memory (measured, issue 18), not one. The
# pipeline keeps the fleet's held countdown messages under HELD_MESSAGES_MAX (longer or
# further waits are parked in the job store, videoqueue.parking), and this limit is set
# above that bound with a margin, so no worker ever reaches it.
worker_eta_task_limit = _eta_task_limit(_settings.held_messages_max)

# A prefork child's heap keeps growing with fragmentation (worker/malloc.py): replaced by a
# fresh child after the task that took it past the bound (KiB; None: never).
worker_max_memory_per_child = _settings.worker_max_memory_per_child or None

# The longest a task may run: a store of a large video. The soft limit raises inside the
# task (the store step counts a failed attempt); the hard one kills the pool child (the
# attempt was counted when it started). Both from videoqueue.queues.broker_timing, which
# also bounds every countdown the pipeline schedules.
task_soft_time_limit = _timing.soft_time_limit_s
task_time_limit = _timing.time_limit_s

if not _AMQP:
    # Redis keeps a delivered, unacknowledged message in its `unacked` hash and hands it to
    # another worker only after `visibility_timeout`. A countdown message is delivered at
    # once and held, unacknowledged, until due; if the timeout were shorter than the
    # longest countdown plus the longest task, healthy held messages would be delivered a
    # second time. So: longest countdown (RETRY_MAX_S, POLL_MAX_S, a submit lease) plus
    # the hard time limit, plus a minute (videoqueue.queues.broker_timing); the pipeline
    # never sends a longer countdown (longer waits are parked in the job store). It is
    # also how long the broker itself takes to notice a dead worker; the job-store sweep
    # (RECOVER_AFTER_S) usually acts first.
    broker_transport_options: dict[str, Any] = {
        "visibility_timeout": _timing.visibility_timeout_s,
        # Look for messages to restore every minute (6 x 10 s), not every 100 s.
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 6,
        **_keys.broker_transport_options(),
        # With REDIS_SENTINELS (and no BROKER_URL) the broker is `sentinel://...`: kombu asks
        # the sentinels for the primary of this master, again after a failover.
        **_redisconn.broker_transport_options(_settings),
    }

# A rolling restart (SIGTERM) first lets running tasks finish for a few seconds, then
# hands every message the worker holds, countdown messages included, back to the queue at
# once, instead of leaving them to the visibility timeout. Idle workers do the same.
worker_soft_shutdown_timeout = 15.0
worker_enable_soft_shutdown_on_idle = True

# Task events for Flower: each task's arguments (a job id), its result (where the job
# stands: worker/outcome.py) and, for the step that ended a job failed or expired, FAILURE
# with the job's error. No result backend is needed for any of it.
worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
# Our log lines carry their own format (worker/logs.py); do not re-wrap them as WARNINGs.
worker_redirect_stdouts = False
