"""The receiving side of videoqueue's webhooks: check that a delivery is ours, and recent.

>>> from producer.webhooks import verify, WebhookVerificationError
>>> event = verify(request.headers, await request.body(), os.environ["WEBHOOK_SECRET"])
>>> event["type"], event["data"]["id"], event["data"]["status"]
("job.succeeded", "0c1c...", "succeeded")

Deliveries follow Standard Webhooks (videoqueue.webhooks): pass the body exactly as
received (bytes), the headers as a mapping (any case), and the secret(s) the sender signs
with. The same `webhook-id` may arrive more than once (a retry, a replay): drop what you
have seen already.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as _LibraryError

from videoqueue.errors import VideoqueueError
from videoqueue.webhooks import secrets_of

DEFAULT_TOLERANCE = timedelta(minutes=5)


class WebhookVerificationError(VideoqueueError, ValueError):
    """A request that is not a valid delivery: headers missing, a timestamp outside the
    tolerance, or no signature made with any of the secrets."""


def verify(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str | Sequence[str],
    *,
    tolerance: timedelta | float = DEFAULT_TOLERANCE,
) -> dict[str, Any]:
    """The delivery's payload (`{"type", "timestamp", "data"}`) once its signature checks
    out with one of the secrets (`whsec_...`: a string, comma separated, or a list: a
    receiver rotating secrets accepts the old and the new) and its `webhook-timestamp` is
    within `tolerance` of now (a timedelta, or seconds). Raises WebhookVerificationError; ValueError for a secret
    that is not `whsec_` + base64."""
    if not isinstance(tolerance, timedelta):
        tolerance = timedelta(seconds=tolerance)
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and stamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent = datetime.fromtimestamp(int(stamp), tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise WebhookVerificationError(f"webhook-timestamp {stamp[:20]!r} is not a Unix time") from None
    now = datetime.now(UTC)
    if sent < now - tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is {(now - sent).total_seconds():.0f} s old (stale)")
    if sent > now + tolerance:
        raise WebhookVerificationError(f"webhook-timestamp is {(sent - now).total_seconds():.0f} s in the future")
    payload = body.encode() if isinstance(body, str) else bytes(body)
    # The library's own verify holds a fixed tolerance and one secret: each secret signs
    # what was received, and any of the request's signatures may match (rotation, both sides).
    given = signatures.split(" ")
    for item in secrets_of(secret):
        try:
            expected = Webhook(item).sign(msg_id, sent, payload)
        except _LibraryError as exc:  # pragma: no cover - sign raises nothing of its own
            raise WebhookVerificationError(str(exc)) from None
        if any(_same(expected, candidate) for candidate in given):
            try:
                parsed: dict[str, Any] = json.loads(payload)
            except ValueError:
                raise WebhookVerificationError("the body is not JSON") from None
            return parsed
    raise WebhookVerificationError("no signature matches (a forged request, or another secret)")


def _same(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())
