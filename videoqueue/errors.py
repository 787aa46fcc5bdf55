"""The error tree of videoqueue: every exception the package raises on purpose derives from
`VideoqueueError`, with one branch per part (request, budget, job store, provider, storage).
"""

from __future__ import annotations


class VideoqueueError(Exception):
    """Root of every error videoqueue raises on purpose; catch it to catch them all."""


class InvalidRequestError(VideoqueueError, ValueError):
    """A request that cannot be enqueued. `problems` maps each field to what is wrong."""

    def __init__(self, problems: dict[str, str]) -> None:
        self.problems = problems
        detail = "; ".join(f"{field}: {msg}" for field, msg in problems.items())
        super().__init__(f"invalid video request: {detail}")


class IllegalTransitionError(VideoqueueError, RuntimeError):
    """A status move the lifecycle table (videoqueue.lifecycle.MOVES) does not allow: a
    bug in the code that asked for it, never a state of the job. `source` and `target`
    are the status values."""

    def __init__(self, source: str, target: str) -> None:
        self.source, self.target = source, target
        super().__init__(f"a job cannot move from {source} to {target} (videoqueue.lifecycle.MOVES)")
