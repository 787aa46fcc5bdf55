"""The callback URLs of ModelArk creates and their tokens.

A create carries `callback_url=<CALLBACK_BASE_URL>/callbacks/byteplus/<job id>/<token>`;
the token is HMAC-SHA256(CALLBACK_SECRET, job id), URL-safe base64 without padding, so only
who holds the secret can name the URL of a job. The receiver (worker/callbacks.py) checks
it in constant time. The token is as secret as the key it is made with: never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from videoqueue.settings import Settings

PATH_PREFIX = "/callbacks/byteplus"
"""The receiver's route for ModelArk callbacks: PATH_PREFIX/<job id>/<token>."""


def callback_token(secret: str, job_id: str) -> str:
    """HMAC-SHA256(`secret`, `job_id`) as URL-safe base64 without padding (43 characters)."""
    digest = hmac.new(secret.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_matches(secret: str, job_id: str, token: str) -> bool:
    """True when `token` is the token of `job_id` (compared in constant time)."""
    return hmac.compare_digest(callback_token(secret, job_id).encode(), token.encode())


def callback_url(settings: Settings, job_id: str) -> str | None:
    """The callback URL of a job's ModelArk create; None when callbacks are off
    (CALLBACK_BASE_URL unset)."""
    if not settings.callback_base_url or settings.callback_secret is None:
        return None
    token = callback_token(settings.callback_secret.get_secret_value(), job_id)
    return f"{settings.callback_base_url}{PATH_PREFIX}/{job_id}/{token}"


def callbacks_on(settings: Settings, provider: str) -> bool:
    """True when `provider`'s tasks call back (ModelArk, with CALLBACK_BASE_URL set): its
    regular polls then stretch to CALLBACK_SAFETY_POLL_S. Veo has no callbacks."""
    return provider == "byteplus" and bool(settings.callback_base_url)
