"""Job ids as people type them: a whole id or a unique prefix (as `jobs` and the demo show
8 characters), resolved against the job store of the current namespace. The producer API
(`VideoQueue.resolve_id`) and every CLI command that takes a job id, on either side, use it."""

from __future__ import annotations

from collections.abc import Sequence

from videoqueue import namespace
from videoqueue.errors import JobStoreError
from videoqueue.job import JobRecord
from videoqueue.jobstore import JobStore


class UnknownJobError(JobStoreError, KeyError):
    """No job has this id in this deployment: the message names the namespace looked in
    (`namespace.current()`, a job of another deployment is not found)."""

    def __init__(self, job_ids: Sequence[str]) -> None:
        self.job_ids = list(job_ids)
        self.namespace = namespace.current()
        super().__init__(
            f"unknown job id(s): {', '.join(job_ids)} "
            f"(in namespace {self.namespace!r}; VQ_NAMESPACE picks the deployment)"
        )

    def __str__(self) -> str:
        return str(self.args[0])


MIN_PREFIX_CHARS = 4
"""The shortest id prefix `resolve_ids` takes, as git's short hashes."""

AMBIGUOUS_SHOWN = 5
"""How many of the jobs sharing a prefix AmbiguousJobIdError names."""


class AmbiguousJobIdError(JobStoreError, ValueError):
    """An id prefix that names no single job: too short, or shared by several jobs
    (`candidates`, at most a few)."""

    def __init__(self, prefix: str, candidates: Sequence[str]) -> None:
        self.prefix, self.candidates = prefix, list(candidates)
        if not candidates:
            message = f"job id prefix {prefix!r} is too short: give at least {MIN_PREFIX_CHARS} characters"
        else:
            shown = ", ".join(sorted(self.candidates)[:AMBIGUOUS_SHOWN])
            more = " and more" if len(self.candidates) > AMBIGUOUS_SHOWN else ""
            message = f"job id prefix {prefix!r} is ambiguous: matches {shown}{more}; give more characters"
        super().__init__(message)


def records(store: JobStore, job_ids: Sequence[str]) -> list[JobRecord]:
    """The current records of `job_ids`, in order; UnknownJobError naming every unknown id."""
    return known(job_ids, store.get_many(list(job_ids)))


def known(job_ids: Sequence[str], found: Sequence[JobRecord | None]) -> list[JobRecord]:
    """The records `found` for `job_ids` (None where unknown), or UnknownJobError naming
    every unknown id (`records`, and the asyncio producer's reads)."""
    unknown = [j for j, r in zip(job_ids, found, strict=True) if r is None]
    if unknown:
        raise UnknownJobError(unknown)
    return [r for r in found if r is not None]


def resolve_ids(store: JobStore, refs: Sequence[str]) -> list[str]:
    """The whole id of the one job each of `refs` names (in any case), in order: a whole
    id, or a unique prefix of at least MIN_PREFIX_CHARS characters. Raises UnknownJobError
    naming every ref that matches no job, AmbiguousJobIdError when a prefix is too short or
    several jobs share it. A whole id costs one read; a prefix scans the index of all jobs
    (`JobStore.ids_starting_with`)."""
    given = list(refs)
    lowered = [ref.lower() for ref in given]  # ids are lowercase uuids: 0C1C0196 is 0c1c0196
    exact = store.get_many(lowered)
    resolved: list[str] = []
    unknown: list[str] = []
    for original, ref, record in zip(given, lowered, exact, strict=True):
        if record is not None:
            resolved.append(record.id)
            continue
        if len(ref) < MIN_PREFIX_CHARS:
            raise AmbiguousJobIdError(original, [])
        matches = store.ids_starting_with(ref, limit=AMBIGUOUS_SHOWN + 1)
        if len(matches) > 1:
            raise AmbiguousJobIdError(original, matches)
        if matches:
            resolved.append(matches[0])
        else:
            unknown.append(original)
    if unknown:
        raise UnknownJobError(unknown)
    return resolved


def lookup(store: JobStore, ref: str) -> JobRecord:
    """The record of the job `ref` (a whole id or a unique prefix) names; the errors of
    `resolve_ids`."""
    return records(store, resolve_ids(store, [ref]))[0]
