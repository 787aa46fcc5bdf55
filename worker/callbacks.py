"""The receiver of provider callbacks: `videoqueue callbacks --port N`.

ModelArk POSTs a task (the body of a status call) to the `callback_url` its create carried
(worker.callback_url) when the task's status changes. A callback is only a hint: the
receiver checks the URL's token and the body, and for a job that is `running` whose task
the body says ended, sends the job's poll at once with its current `poll_seq`. The poll
makes the status call and the move; the receiver never changes a job, so a forged,
replayed or lying callback costs at most one status call and cannot end a job.

One poll chain: the callback's poll and the pending regular one carry the same `poll_seq`;
whichever runs first and finds the task still running sends poll seq+1 and advances
`poll_seq`, and the other, then behind, is dropped (worker/steps/poll.py). A duplicate
callback sends nothing: the first to send the poll of a (job, seq) takes a Redis key
(keys.callback_poll_key) that the others find taken.

Answers: 200 poll sent; 202 nothing to do (a status that is not final, a task id that is
not the job's, a job not running, a poll already sent); 400 a body that is not a task;
403 a token that is not the job's; 404 an unknown job; 413 a body over 64 KiB; 503 the
job store or the broker unreachable (nothing sent: the provider may call again). The path carries the token: it is
never logged (no access log; worker.logs redacts it wherever it appears).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import uvicorn
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from videoqueue import keys
from videoqueue.job import TASK_POLL, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.settings import Settings
from worker import logs
from worker.callback_url import PATH_PREFIX, token_matches

log = logging.getLogger("videoqueue.callbacks")

# ModelArk's final task statuses: only these say a running job has something to learn.
FINAL_TASK_STATUSES = frozenset({"succeeded", "failed", "cancelled", "expired"})
# How long the mark of a poll sent for a (job, poll_seq) is kept: past it a duplicate of
# that callback could send the poll again, which poll_seq still makes harmless.
SENT_MARK_TTL_S = 3600
# A task object is small (ModelArk's is under 2 KB); anything far larger is not one.
MAX_BODY_BYTES = 64 * 1024

SendPoll = Callable[[str, int], None]
"""Sends the poll task of a job (its id, the poll_seq) at once."""


def create_app(settings: Settings, store: JobStore, send_poll: SendPoll) -> Starlette:
    """The receiver's app: POST PATH_PREFIX/{job_id}/{token} and GET /healthz."""
    assert settings.callback_secret is not None, "CALLBACK_SECRET is required"
    secret = settings.callback_secret.get_secret_value()

    def act(job_id: str, task: dict[str, Any]) -> Response:
        """What a callback with a good token and a task body calls for (blocking: the job
        store's client)."""
        job = store.get(job_id)
        if job is None:
            # Its token is good: a job of another namespace (VQ_NAMESPACE), or expired.
            log.info("callback for an unknown job", extra={"job_id": job_id})
            return JSONResponse({"error": "unknown job"}, status_code=404)
        status = task["status"]
        if task["id"] != job.provider_task_id:
            # Also the usual race of a fast render: its callback before the task id is stored.
            log.info("callback ignored: not the job's task", extra={"job_id": job_id})
            return _ignored("not the job's task")
        if status not in FINAL_TASK_STATUSES:
            return _ignored(f"task {status}: nothing to learn")
        if job.status is not JobStatus.RUNNING:
            return _ignored(f"job {job.status.value}")
        seq = job.poll_seq
        mark = keys.callback_poll_key(job_id, seq)
        if not store.redis.set(mark, "1", nx=True, ex=SENT_MARK_TTL_S):
            return _ignored("poll already sent")
        try:
            send_poll(job_id, seq)
        except Exception:
            # Not sent: the provider's retry (or the safety net) must still be able to.
            store.redis.delete(mark)
            raise
        log.info("callback: poll sent", extra={"job_id": job_id, "provider_status": status, "seq": seq})
        return JSONResponse({"poll": "sent"})

    async def receive(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        # The token first: nothing else of a forged request is read.
        if not token_matches(secret, job_id, request.path_params["token"]):
            log.warning("callback refused: bad token", extra={"job_id": job_id})
            return JSONResponse({"error": "forbidden"}, status_code=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return JSONResponse({"error": "body too large"}, status_code=413)
        task = _task(body)
        if task is None:
            return JSONResponse({"error": "the body is not a ModelArk task object"}, status_code=400)
        try:
            return await run_in_threadpool(act, job_id, task)
        except (RedisError, OSError, KombuError):
            log.exception("callback not acted on: job store or broker unreachable", extra={"job_id": job_id})
            return JSONResponse({"error": "try again"}, status_code=503)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    return Starlette(
        routes=[
            Route(PATH_PREFIX + "/{job_id}/{token}", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


def _task(body: bytes) -> dict[str, Any] | None:
    """The task object of a callback body: a JSON object with a string `id` and `status`;
    None for anything else."""
    try:
        task = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(task, dict):
        return None
    if not isinstance(task.get("id"), str) or not isinstance(task.get("status"), str):
        return None
    return task


def _ignored(reason: str) -> Response:
    return JSONResponse({"poll": "not sent", "reason": reason}, status_code=202)


def serve(port: int, host: str, settings: Settings) -> None:
    """Serve the receiver on `host`:`port` until interrupted, for the deployment
    `settings` name (its job store and broker)."""
    from worker.app import app as celery_app  # reads the settings and joins their namespace

    logs.configure(settings.log_level)
    # uvicorn's own lines (start, errors with their tracebacks) in our format, redacted.
    server_log = logging.getLogger("uvicorn")
    server_log.handlers[:] = [logs.make_handler(logs.log_format())]
    server_log.setLevel(logging.INFO)
    server_log.propagate = False
    store = JobStore.from_settings(settings)

    def send_poll(job_id: str, seq: int) -> None:
        celery_app.send_task(TASK_POLL, args=[job_id, seq])

    app = create_app(settings, store, send_poll)
    # No access log: each request's path carries a token.
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=None)
