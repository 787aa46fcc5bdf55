"""What one readiness probe found (`videoqueue doctor`): ok, warn or fail, with a one-line
detail. Provider adapters and storage backends answer their own probe in these terms, so
the doctor needs no knowledge of any of them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit


class Status(StrEnum):
    """The outcome of one check."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Probe:
    """A probe's outcome and a one-line explanation (hosts, never credentials)."""

    status: Status
    detail: str


def safe_url(url: str) -> str:
    """`url` without its user and password (and a note that it had one)."""
    parts = urlsplit(url)
    if not parts.hostname:
        # Imported here: worker.logs brings Celery, and storage backends import this module.
        from worker.logs import redact

        return redact(url)
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    note = " (with credentials)" if parts.username or parts.password else ""
    return f"{parts.scheme}://{netloc}{parts.path}{note}"
