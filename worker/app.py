"""The Celery app of the worker fleet: `celery -A worker worker`."""

from __future__ import annotations

import sys
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup

from videoqueue import namespace
from videoqueue.queues import own_queues
from videoqueue.settings import InvalidSettingsError, get_settings
from worker import broker_transport

try:
    # Read before Celery reads videoqueue.celeryconfig, so that settings that cannot be used stop
    # `celery -A worker worker` with one line naming the variable, not a traceback.
    # The worker serves the deployment its settings name: its keys and queues follow.
    namespace.use(get_settings().vq_namespace)
except InvalidSettingsError as exc:
    sys.stderr.write(f"error: {exc}\n")
    raise SystemExit(2) from None

# Before any broker connection: kombu's Redis transports with the fix that keeps a worker up
# through a Redis restart (worker/broker_transport.py).
broker_transport.register()
app = Celery("videoqueue")
app.config_from_object("videoqueue.celeryconfig")
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@celeryd_after_setup.connect
def _own_queues_only(sender: str | None = None, instance: Any = None, **_: Any) -> None:
    # A worker consumes its own namespace's queues and nothing else: a foreign queue would
    # hand it another deployment's jobs, billed with this worker's keys.
    worker_app = getattr(instance, "app", None)
    if worker_app is None:
        return
    queues = worker_app.amqp.queues
    selected = sorted(queues.consume_from)
    mapped, foreign = own_queues(selected)
    if foreign:
        sys.stderr.write(
            f"error: -Q/WORKER_QUEUES names {', '.join(foreign)}, not a queue of this worker's namespace "
            f"{namespace.current()!r} (VQ_NAMESPACE); its queues are {', '.join(namespace.queues())}\n"
        )
        raise SystemExit(2)
    for name in selected:
        if name not in mapped:
            queues.deselect(name)
    for name in mapped:
        if name not in queues.consume_from:
            queues.select_add(name)
