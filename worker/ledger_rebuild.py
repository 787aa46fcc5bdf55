"""Rebuild the cost ledger from the manifests in storage, after Redis lost it."""

from __future__ import annotations

import logging

from producer.jobstore import JobStore
from producer.ledger import Ledger, LedgerEntry
from producer.settings import Settings
from worker.storage import open_storage

log = logging.getLogger("videoqueue.ledger")


def rebuild_ledger(settings: Settings) -> int:
    """Replace the ledger with the entries found in the manifests; returns how many."""
    entries: dict[str, LedgerEntry] = {}
    for key, document in open_storage(settings).iter_json():
        if not isinstance(document, dict) or "manifest_version" not in document:
            continue
        raw = document.get("ledger")
        if raw:
            entry = LedgerEntry.model_validate(raw)
            entries[entry.job_id] = entry
        else:
            log.debug("manifest without a ledger entry", extra={"key": key})
    store = JobStore.from_url(settings.redis_url)
    return Ledger(store.redis).replace_all(entries.values())
