"""The job lifecycle as data: every status move a job may make, who makes it and when.

`MOVES` is the whole table. A job enters at `ENTRY` (the producer's enqueue, submit and
retry store it so, `JobStore.create_many`) and leaves a status only by a move listed here;
`JobStore.transition` and `JobStore.update` refuse any other with IllegalTransitionError.
The statuses a move may start from (`sources`) are read from the table, never written out
again: a step names a narrower set only when it means a compare-and-set on its own state
(the poll step moves only `running` jobs).

    queued ⇄ submitting ──▶ running ──▶ downloading ──▶ succeeded
                                            ▲
                                 failed ────┘  (videoqueue store retry)

and each active status to some of failed, cancelled and expired, as `MOVES` lists.

The final statuses (`videoqueue.job.FINAL_STATUSES`) are never left, except `failed` ->
`downloading` when `videoqueue store retry` stores again a video the store step gave up on.
The side effects of reaching a final status are `videoqueue.final_hooks`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from videoqueue.errors import IllegalTransitionError
from videoqueue.job import JobStatus


@dataclass(frozen=True)
class Move:
    """One allowed status move: from `source` to `target`, made by `by` (the producer, a
    worker step; "any step" for a failure every step may hit) when `when` holds."""

    source: JobStatus
    target: JobStatus
    by: str
    when: str


ENTRY = JobStatus.QUEUED
"""The status every job is stored in (by the producer: enqueue, submit, retry)."""

MOVES: tuple[Move, ...] = (
    # The create, exactly once (worker/steps/submit.py).
    Move(
        JobStatus.QUEUED,
        JobStatus.SUBMITTING,
        "submit step",
        "it takes the job for one create attempt (the submit lease)",
    ),
    Move(
        JobStatus.SUBMITTING,
        JobStatus.QUEUED,
        "submit step",
        "a create failed before reaching the provider; it is tried again later",
    ),
    Move(
        JobStatus.SUBMITTING,
        JobStatus.RUNNING,
        "submit step",
        "the create (or a lookup after a lost answer) gave the job its provider task",
    ),
    # Following the task (worker/steps/poll.py; the cancel step and the submit step run one check too).
    Move(
        JobStatus.RUNNING,
        JobStatus.DOWNLOADING,
        "poll step",
        "the provider finished the task: its video is to be stored",
    ),
    # Storing the video (worker/steps/store.py).
    Move(JobStatus.DOWNLOADING, JobStatus.SUCCEEDED, "store step", "the video and its manifest are stored"),
    Move(
        JobStatus.DOWNLOADING,
        JobStatus.CANCELLED,
        "store step",
        "the video of a job cancelled meanwhile is stored: it was paid for",
    ),
    Move(
        JobStatus.FAILED,
        JobStatus.DOWNLOADING,
        "producer (videoqueue store retry)",
        "the store step gave up and the provider still holds the video",
    ),
    # Cancelled.
    Move(
        JobStatus.QUEUED,
        JobStatus.CANCELLED,
        "producer (cancel), submit or cancel step",
        "a cancel came before the job reached the provider",
    ),
    Move(
        JobStatus.RUNNING,
        JobStatus.CANCELLED,
        "poll step",
        "the provider says the task was cancelled, or a cancel stopped it before it started",
    ),
    # Failed (`ErrorCode` says why).
    Move(JobStatus.QUEUED, JobStatus.FAILED, "submit step", "a budget cap lowered since enqueue leaves no room for it"),
    Move(
        JobStatus.SUBMITTING,
        JobStatus.FAILED,
        "submit step, any step",
        "the create cannot succeed, or no worker takes its endpoint",
    ),
    Move(
        JobStatus.RUNNING,
        JobStatus.FAILED,
        "poll step, any step",
        "the provider failed the task, or status calls keep failing",
    ),
    Move(
        JobStatus.DOWNLOADING,
        JobStatus.FAILED,
        "store step, any step",
        "the video could not be stored within its attempts or deadline",
    ),
    # Expired: the deadline came.
    Move(JobStatus.QUEUED, JobStatus.EXPIRED, "submit step", "the deadline came before the job reached the provider"),
    Move(
        JobStatus.SUBMITTING,
        JobStatus.EXPIRED,
        "submit step",
        "the deadline came and no create reached the provider (or a last lookup found none)",
    ),
    Move(
        JobStatus.RUNNING,
        JobStatus.EXPIRED,
        "poll step",
        "the provider expired the task, or it was cancelled there unstarted at the deadline",
    ),
)

_ALLOWED = frozenset((m.source, m.target) for m in MOVES)

SUBMIT_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.SUBMITTING})
"""The statuses of a job with no provider task recorded: the submit step's to move on."""


def allowed(source: JobStatus, target: JobStatus) -> bool:
    """True if the table lets a job move from `source` to `target`."""
    return (source, target) in _ALLOWED


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """Every status a job may move to `target` from."""
    return frozenset(m.source for m in MOVES if m.target is target)


def check(source: JobStatus, target: JobStatus) -> None:
    """Raise IllegalTransitionError unless the table lets a job move from `source` to
    `target` (a job keeping its status makes no move and passes)."""
    if source is not target and not allowed(source, target):
        raise IllegalTransitionError(source.value, target.value)


def check_sources(allowed_from: Iterable[JobStatus], target: JobStatus) -> frozenset[JobStatus]:
    """`allowed_from` as a set, after checking that the table allows a move to `target`
    from each of them: raises IllegalTransitionError for the first that it does not."""
    chosen = frozenset(allowed_from)
    for source in sorted(chosen):
        if not allowed(source, target):
            raise IllegalTransitionError(source.value, target.value)
    return chosen
