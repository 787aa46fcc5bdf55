"""TLS for a Celery broker on Redis (`rediss://`), verified the way the job store's client
verifies it.

redis-py, which opens the job store, checks a `rediss://` server's certificate and host name
by default (against the system's CAs, or the CA file the URL names with `ssl_ca_certs`).
Kombu, which carries Celery's messages, does not: a `rediss://` broker URL with no `ssl_*`
parameter and no `broker_use_ssl` connects with `CERT_NONE` and trusts any certificate (it
logs "defaulting to insecure SSL behaviour"). `broker_use_ssl` below closes that gap, so one
`rediss://` URL means the same for both. The URL's own `ssl_*` parameters (`ssl_ca_certs`,
`ssl_cert_reqs`, `ssl_certfile`, `ssl_keyfile`) replace this default as a whole: kombu reads
them into its SSL options, redis-py into its connection, and a URL that leaves
`ssl_cert_reqs` out still gets redis-py's default, `required`.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit


def broker_use_ssl(broker_url: str) -> dict[str, Any] | None:
    """Celery's `broker_use_ssl` for `broker_url`: certificate verification required
    (`{"ssl_cert_reqs": ssl.CERT_REQUIRED}`) for `rediss://`, None for any other scheme
    (plain Redis, and AMQP, whose TLS Celery configures otherwise)."""
    if urlsplit(broker_url).scheme != "rediss":
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}
