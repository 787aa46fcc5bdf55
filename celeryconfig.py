"""Celery settings for videoqueue, read by producers and workers with `config_from_object`.

Everything here is chosen for at-least-once delivery of idempotent tasks: a message is
acknowledged only after its task has recorded its effect in the job store, so a worker
that dies mid-task leaves the message to be delivered again, and the task's
compare-and-set on the job record makes the second run harmless.
"""

from kombu import Exchange, Queue

from producer.contract import (
    QUEUE_POLL,
    QUEUE_STORE,
    QUEUE_SUBMIT,
    TASK_CANCEL,
    TASK_POLL,
    TASK_STORE,
    TASK_SUBMIT,
)
from producer.settings import get_settings

_settings = get_settings()

broker_url = _settings.effective_broker_url
broker_connection_retry_on_startup = True

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
task_queues = tuple(
    Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (QUEUE_SUBMIT, QUEUE_POLL, QUEUE_STORE)
)
task_default_queue = QUEUE_SUBMIT
task_routes = {
    TASK_SUBMIT: {"queue": QUEUE_SUBMIT},
    TASK_CANCEL: {"queue": QUEUE_SUBMIT},
    TASK_POLL: {"queue": QUEUE_POLL},
    TASK_STORE: {"queue": QUEUE_STORE},
}

# Ack after the task ran: every task is idempotent, so redelivery is safe and a crash
# loses nothing. A pool child killed mid-task (OOM, kill -9) is treated the same way.
task_acks_late = True
task_reject_on_worker_lost = True
# One message at a time per pool slot: a long store task must not sit on prefetched
# submits that another worker could run now. Countdown (ETA) messages are not limited by
# this; kombu raises the prefetch count for them.
worker_prefetch_multiplier = 1

# A countdown message is held unacknowledged by one worker until due. Redis hands it to
# another worker only after visibility_timeout, so it must exceed the longest countdown we
# schedule (RETRY_MAX_S, default 300 s) plus the longest task (a store of a large video,
# bounded by task_time_limit below); otherwise a healthy held message is redelivered and
# runs twice (harmless, but wasted). It is also the recovery time after a worker dies.
_LONGEST_COUNTDOWN_S = max(_settings.retry_max_s, _settings.poll_max_s)
task_time_limit = 1800
task_soft_time_limit = 1500
broker_transport_options = {
    "visibility_timeout": int(_LONGEST_COUNTDOWN_S + task_time_limit + 60),
}

worker_send_task_events = True
task_send_sent_event = True
worker_hijack_root_logger = False
# Our log lines carry their own format (worker/logs.py); do not re-wrap them as WARNINGs.
worker_redirect_stdouts = False
