"""Rebuild the cost ledger from the manifests in storage, after Redis lost (some of) it.

A merge: entries whose manifests are found are added (or, if they differ, replaced by the
manifest's); entries whose manifests are not found stay, unless the caller prunes them.
The storage read is the one STORAGE_URL names in the caller's settings, which may not be
the one the workers write to: the result says which it was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from producer.jobstore import JobStore
from producer.ledger import Ledger, LedgerDiff, LedgerEntry
from producer.settings import Settings
from worker.storage import open_storage

log = logging.getLogger("videoqueue.ledger")


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild read and what it changed (or, in a dry run, would change)."""

    storage: str  # which storage was read, without secrets
    manifests: int  # manifests read
    without_entry: int  # of those, jobs that cost nothing (no ledger entry)
    diff: LedgerDiff


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
    """Merge the ledger entries of the manifests in storage into the ledger in Redis."""
    entries: dict[str, LedgerEntry] = {}
    manifests = without = 0
    for key, document in open_storage(settings).iter_json():
        if not isinstance(document, dict) or "manifest_version" not in document:
            continue
        manifests += 1
        raw = document.get("ledger")
        if raw:
            entry = LedgerEntry.model_validate(raw)
            entries[entry.job_id] = entry
        else:
            without += 1
            log.debug("manifest without a ledger entry", extra={"key": key})
    store = JobStore.from_url(settings.redis_url)
    diff = Ledger(store.redis).merge(entries.values(), prune=prune, dry_run=dry_run)
    return RebuildResult(describe_storage(settings), manifests, without, diff)
