"""Is an image URL reachable, and allowed? Asked once per URL at enqueue, through the URL
guard (videoqueue.urlguard: the same rules the worker's fetch applies), so a typo or an
internal address fails before any money is spent."""

from __future__ import annotations

from videoqueue.urlguard import (
    AllowList,
    FetchLimits,
    ForbiddenURLError,
    URLFetchError,
    URLStatusError,
    check_literal,
    open_url,
)

NOT_IMAGES = ("text/html", "application/json", "text/plain")
# The first bytes are enough to tell a reachable image; a server ignoring Range is cut off here.
PROBE_BYTES = 64 * 1024


def check_image_url(url: str, allow: AllowList | None = None, timeout: float = 5.0) -> str | None:
    """None if `url` answers like an image; otherwise why not (one line, after the URL).
    Raises ForbiddenURLError when the URL, or a redirect from it, leads to an address the
    guard refuses (`allow`: trusted internal hosts). `timeout` (seconds) bounds each method
    tried, redirects included."""
    allow = allow or AllowList()
    limits = FetchLimits(max_bytes=PROBE_BYTES, timeout_s=timeout)
    for method in ("HEAD", "GET"):
        try:
            with open_url(url, allow, limits, method=method, headers={"Range": "bytes=0-0"}) as response:
                kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                if kind in NOT_IMAGES:
                    return f"answers {kind}, not an image"
                return None
        except URLStatusError as exc:
            if method == "HEAD" and exc.status in (403, 405, 501):
                continue  # some servers refuse HEAD; ask for the first byte instead
            return f"answers HTTP {exc.status}"
        except ForbiddenURLError:
            raise
        except URLFetchError as exc:
            return _after_url(url, str(exc))
    return "is unreachable"


def check_image_address(url: str, allow: AllowList | None = None) -> None:
    """The part of the check that needs no network (used when CHECK_IMAGE_URLS is off): the
    scheme, and a host that is an IP literal or localhost. Raises ForbiddenURLError."""
    check_literal(url, allow or AllowList())


def _after_url(url: str, message: str) -> str:
    """The guard's messages start with the URL; the caller's problem line does too."""
    return message.removeprefix(url).strip() or message
