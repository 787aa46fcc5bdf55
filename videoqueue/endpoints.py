"""Which provider endpoint and account, and which storage, a process is configured for, as
fingerprints that can be stored and shown: a job records the one its provider task was
created with, so only a worker configured the same way polls, cancels or looks it up, and
`videoqueue doctor` compares the fleet's with the shell's. Each provider adapter computes
its own (`endpoint` in worker/providers/), each storage backend too (worker/storage/).

A fingerprint is the first 12 hex digits of a SHA-256 over the provider, its base URL and
the account it uses (API key, or Google project and location). It never holds a secret
(12 hex digits of a hash cannot give back a key) and it changes with any of them: a key
rotation makes a new fingerprint too, so rotate keys by adding workers with the new key
before stopping the old ones (docs/production.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit

FINGERPRINT_LENGTH = 12


@dataclass(frozen=True)
class Endpoint:
    """Where a process sends one provider's (or the storage's) calls: `host` is the plain
    host[:port] (or bucket) with no credentials, `fingerprint` 12 hex digits."""

    kind: str
    host: str
    fingerprint: str

    def describe(self) -> str:
        """E.g. `endpoint host 127.0.0.1:8000 (fingerprint 3f2a...)`."""
        return f"endpoint host {self.host} (fingerprint {self.fingerprint})"


def fingerprint(*parts: str) -> str:
    """12 hex digits of SHA-256 over `parts` (NUL-separated)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:FINGERPRINT_LENGTH]


def host_of(url: str) -> str:
    """The plain host[:port] of `url`, without credentials (`-` when it names none)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url.rsplit("@", maxsplit=1)[-1].split("/", maxsplit=1)[0] or "-"
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
