"""The archive: a finished job's manifest in storage (worker/manifest.py writes it next to
the video, `<job id>.json` under STORAGE_URL) outlives its record in Redis, which expires
JOB_RETENTION_S after the job ended (videoqueue.retention). `videoqueue status` of an expired
job names it and `videoqueue archive get` reads the record back from it
(`VideoQueue.archived`).

Jobs that cost nothing (cancelled or expired before the provider had them, most failures
before a create) have no manifest: once their record expired nothing says they existed,
and their id is unknown like any other.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from videoqueue import namespace
from videoqueue.inputs import InputStorage

# Job ids are UUIDs; the pattern keeps any other id from naming a path outside the storage.
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


LOOKUP_LIMIT = 1000
"""The most objects an id prefix's lookup lists (one S3 listing page): a job has two, its
video and its manifest."""


LOOKUP_READS = 20
"""The most manifests an id prefix's lookup reads to tell this deployment's jobs from the
rest; past that the prefix is too short to name one job anyway."""


def manifest_uri(storage_url: str, job_id: str) -> str | None:
    """Where the workers of STORAGE_URL `storage_url` write the manifest of `job_id`
    (`file:///abs/folder/<id>.json` or `s3://bucket/prefix/<id>.json`, as `manifest_uri` in
    a record), or None for an id that cannot be a job's."""
    if not _JOB_ID.match(job_id):
        return None
    return _object_uri(storage_url, f"{job_id}.json")


def archived_ids(storage: InputStorage, storage_url: str, prefix: str) -> list[str]:
    """The ids of this deployment's archived jobs (namespace) whose ids start with `prefix`
    (an id as `jobs` shows it, 8 characters; any case), sorted; [] for a prefix that cannot
    start an id. Lists the storage folder, then reads each candidate manifest (at most
    LOOKUP_READS): another deployment's job or a movie's manifest is not one. StorageError
    when storage cannot be listed (an S3 user without s3:ListBucket) or read."""
    prefix = prefix.lower()
    if not _JOB_ID.match(prefix):
        return []
    found = storage.uris_starting_with(_object_uri(storage_url, prefix), LOOKUP_LIMIT)
    names = (uri.rsplit("/", 1)[-1] for uri in found)
    candidates = sorted({n[:-5] for n in names if n.endswith(".json") and _JOB_ID.match(n[:-5])})
    if len(candidates) > LOOKUP_READS:
        return candidates  # a prefix this short names no one job, whoever's they are
    return [job_id for job_id in candidates if read_archived(storage, storage_url, job_id)]


def _object_uri(storage_url: str, name: str) -> str:
    if storage_url.startswith("file://"):
        return (Path(storage_url.removeprefix("file://") or ".").resolve() / name).as_uri()
    parts = urlsplit(storage_url)
    prefix = parts.path.strip("/")
    return f"s3://{parts.netloc}/{prefix + '/' if prefix else ''}{name}"


@dataclass(frozen=True)
class ArchivedJob:
    """A job read back from its manifest: `uri` where it is, `manifest` the whole document
    (worker/manifest.py: `job`, `cost`, `ledger`, `video`...)."""

    job_id: str
    uri: str
    manifest: dict[str, Any]

    @property
    def record(self) -> dict[str, Any]:
        """The job record as it ended (JSON fields of `JobRecord.public_dict`, without its
        history and short-lived video URL)."""
        job = self.manifest.get("job")
        return job if isinstance(job, dict) else {}


def read_archived(storage: InputStorage, storage_url: str, job_id: str) -> ArchivedJob | None:
    """The archived job `job_id` of this deployment (namespace), or None when storage holds
    no manifest of it. Raises StorageError when storage cannot be read."""
    uri = manifest_uri(storage_url, job_id)
    if uri is None:
        return None
    raw = storage.read(uri)
    if raw is None:
        return None
    try:
        document = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(document, dict) or document.get("job_id") != job_id:
        return None
    written_by = document.get("namespace", namespace.DEFAULT)
    if written_by != namespace.current():
        return None
    return ArchivedJob(job_id, uri, document)
