"""Rebuild the cost ledger from the manifests in storage, after Redis lost (some of) it.

A merge: entries whose manifests are found are added (or, if they differ, replaced by the
manifest's); entries whose manifests are not found stay, unless the caller prunes them; a
job still running whose manifest is already written is left to its final move
(videoqueue.ledger, `Ledger.merge`).
The storage read is the one STORAGE_URL names in the caller's settings, which may not be
the one the workers write to: the result says which it was. Several deployments
(namespaces) may write to one storage (the default `./videos` folder above all): only the
manifests of the caller's namespace count; the others are skipped, and counted.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from videoqueue import keys, namespace
from videoqueue.jobstore import JobStore
from videoqueue.ledger import Ledger, LedgerDiff, LedgerEntry
from videoqueue.settings import Settings
from worker.storage import open_storage

log = logging.getLogger("videoqueue.ledger")


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild read and what it changed (or, in a dry run, would change)."""

    storage: str  # which storage was read, without secrets, and what of it was skipped
    manifests: int  # manifests of this namespace read
    without_entry: int  # of those, jobs that cost nothing (no ledger entry)
    diff: LedgerDiff
    skipped: dict[str, int] = field(default_factory=dict)  # manifests of other namespaces, by namespace


def manifest_namespace(document: dict[str, Any]) -> str:
    """The namespace (deployment) that wrote a manifest: its `namespace` field; for a
    manifest written before that field, the one its job's budget counter keys name
    (`vq:...` is `default`, `vq@N:...` is N); failing both, `default`."""
    recorded = document.get("namespace")
    if isinstance(recorded, str) and namespace.is_valid(recorded):
        return recorded
    job = document.get("job")
    budget_keys = job.get("budget_keys") if isinstance(job, dict) else None
    for key in budget_keys if isinstance(budget_keys, list) else ():
        name = keys.namespace_of(key) if isinstance(key, str) else None
        if name is not None:
            return name
    return namespace.DEFAULT


def describe_skipped(skipped: dict[str, int]) -> str:
    """`skipped 11 manifests of other deployments: bq 2, default 5, demo 4`, or an empty string."""
    if not skipped:
        return ""
    names = ", ".join(f"{name} {count}" for name, count in sorted(skipped.items()))
    return f"skipped {sum(skipped.values())} manifests of other deployments: {names}"


def describe_storage(settings: Settings) -> str:
    """The storage STORAGE_URL names, for people: backend, bucket and prefix or folder,
    and the S3 endpoint if not AWS's. Never a credential."""
    url = settings.storage_url
    if url.startswith("file://"):
        folder = Path(url.removeprefix("file://") or ".").resolve()
        missing = "" if folder.is_dir() else " (no such folder)"
        return f"local folder {folder}{missing}"
    parts = urlsplit(url)
    where = f"S3 bucket {parts.netloc}, prefix {parts.path.strip('/') or '(none)'}"
    if settings.s3_endpoint_url:
        endpoint = urlsplit(settings.s3_endpoint_url)
        host = endpoint.hostname or ""
        port = f":{endpoint.port}" if endpoint.port else ""
        where += f", endpoint {endpoint.scheme}://{host}{port}"
    return where


def rebuild_ledger(settings: Settings, *, prune: bool = False, dry_run: bool = False) -> RebuildResult:
    """Merge the ledger entries of the manifests in storage that the current namespace's
    workers wrote into the ledger in Redis; count those of other namespaces as skipped."""
    own = namespace.current()
    entries: dict[str, LedgerEntry] = {}
    skipped: Counter[str] = Counter()
    manifests = without = 0
    for key, document in open_storage(settings).iter_json():
        if not isinstance(document, dict) or "manifest_version" not in document:
            continue
        written_by = manifest_namespace(document)
        if written_by != own:
            skipped[written_by] += 1
            continue
        manifests += 1
        raw = document.get("ledger")
        if raw:
            entry = LedgerEntry.model_validate(raw)
            entries[entry.job_id] = entry
        else:
            without += 1
            log.debug("manifest without a ledger entry", extra={"key": key})
    store = JobStore.from_settings(settings)
    diff = Ledger(store.redis).merge(entries.values(), prune=prune, dry_run=dry_run)
    where = f"{describe_storage(settings)}, namespace {own}"
    if skipped:
        where += f" ({describe_skipped(dict(skipped))})"
    return RebuildResult(where, manifests, without, diff, dict(skipped))
