"""Is an image URL reachable? Asked once per URL at enqueue, with the standard library
(producers install no HTTP client), so a typo fails before any money is spent."""

from __future__ import annotations

import urllib.error
import urllib.request

NOT_IMAGES = ("text/html", "application/json", "text/plain")


def check_image_url(url: str, timeout: float = 5.0) -> str | None:
    """None if `url` answers like an image; otherwise why not."""
    for method in ("HEAD", "GET"):
        request = urllib.request.Request(url, method=method, headers={"Range": "bytes=0-0"})  # noqa: S310 - http(s) only, checked by the request model
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if kind in NOT_IMAGES:
                    return f"answers {kind}, not an image"
                return None
        except urllib.error.HTTPError as exc:
            if method == "HEAD" and exc.code in (403, 405, 501):
                continue  # some servers refuse HEAD; ask for the first byte instead
            return f"answers HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"is unreachable ({reason})"
    return "is unreachable"
