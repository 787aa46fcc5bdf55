"""Shared test helpers for unit tests."""

from __future__ import annotations

from typing import Any

from videoqueue.job import JobRecord, JobStatus
from videoqueue.jobstore import JobStore
from videoqueue.lifecycle import MOVES
from videoqueue.resolved import ResolvedRequest


def seedance_request(prompt: str = "a red fox in snow", **changes: Any) -> ResolvedRequest:
    """A complete stored request of a 5 s 720p 16:9 Seedance job without audio, with `changes`."""
    fields: dict[str, Any] = {
        "prompt": prompt,
        "provider": "byteplus",
        "model": "seedance-1-5-pro-251215",
        "duration": 5,
        "resolution": "720p",
        "ratio": "16:9",
        "audio": False,
        "service_tier": "default",
    }
    return ResolvedRequest(**{**fields, **changes})


def walk_to(store: JobStore, job_id: str, status: JobStatus, **changes: Any) -> JobRecord | None:
    """Move an active job to `status` the way the worker would, by the shortest chain of
    allowed moves (videoqueue.lifecycle.MOVES) through active statuses only, the last one
    setting `changes`. None (and
    nothing moved) when the job is unknown or already final, like a declined transition."""
    current = store.get(job_id)
    if current is None or current.status.is_final:
        return None
    path = _shortest_path(current.status, status)
    assert path, f"no chain of moves from {current.status} to {status}"
    moved: JobRecord | None = None
    for source, target in path:
        moved = store.transition(job_id, {source}, target, **(changes if target is status else {}))
        assert moved is not None
    return moved


def _shortest_path(source: JobStatus, target: JobStatus) -> list[tuple[JobStatus, JobStatus]]:
    paths: dict[JobStatus, list[tuple[JobStatus, JobStatus]]] = {source: []}
    frontier = [source]
    while frontier and target not in paths:
        step = []
        for status in frontier:
            if status.is_final:
                continue  # ended: the worker moves it no further
            for move in MOVES:
                if move.source is status and move.target not in paths:
                    paths[move.target] = [*paths[status], (status, move.target)]
                    step.append(move.target)
        frontier = step
    return paths.get(target, [])
