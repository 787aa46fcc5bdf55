"""Which provider endpoint and account, and which storage, a process is configured for, as
fingerprints that can be stored and shown: a job records the one its provider task was
created with, so only a worker configured the same way polls, cancels or looks it up, and
`videoqueue doctor` compares the fleet's with the shell's.

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

from videoqueue.settings import Settings

FINGERPRINT_LENGTH = 12
VERTEX_HOST = "aiplatform.googleapis.com"


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


def _host(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        return url.rsplit("@", maxsplit=1)[-1].split("/", maxsplit=1)[0] or "-"
    return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname


def provider_endpoint(provider: str, settings: Settings) -> Endpoint:
    """The endpoint and account `settings` send `provider`'s calls to. An unconfigured
    provider has a fingerprint too (of no account), so two such workers still match."""
    if provider == "byteplus":
        base = settings.byteplus_base_url.rstrip("/")
        key = settings.byteplus_api_key.get_secret_value() if settings.byteplus_api_key else ""
        return Endpoint(provider, _host(base), fingerprint(provider, base, "key", key))
    if provider == "veo":
        if settings.google_api_key is not None:
            base = (settings.veo_base_url or f"https://{VERTEX_HOST}").rstrip("/")
            account: tuple[str, ...] = ("key", settings.google_api_key.get_secret_value())
        else:
            location = settings.google_cloud_location
            base = (settings.veo_base_url or f"https://{location}-{VERTEX_HOST}").rstrip("/")
            account = ("project", settings.google_cloud_project or "", location)
        return Endpoint(provider, _host(base), fingerprint(provider, base, *account))
    return Endpoint(provider, "-", fingerprint(provider))


def storage_endpoint(settings: Settings) -> Endpoint:
    """Where `settings` store videos: `host` is the bucket (with the S3 endpoint's host) or
    `local`; the fingerprint covers the storage URL, the endpoint and the access key id."""
    url = settings.storage_url
    if url.startswith("s3://"):
        bucket = urlsplit(url).netloc
        endpoint = settings.s3_endpoint_url or f"https://s3.{settings.aws_region}.amazonaws.com"
        key_id = settings.aws_access_key_id.get_secret_value() if settings.aws_access_key_id else ""
        host = f"{bucket} at {_host(endpoint)}"
        return Endpoint("storage", host, fingerprint("s3", url.rstrip("/"), endpoint.rstrip("/"), key_id))
    return Endpoint("storage", "local", fingerprint("file", url.rstrip("/")))
