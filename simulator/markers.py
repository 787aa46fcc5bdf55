"""Fault-injection markers written into prompts, e.g. ``[sim:fail]`` or ``[sim:latency=2]``.

The syntax is shared by every emulated provider; what a failure looks like is each
provider's business (see ``fail`` and ``fail_code``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any


class MarkerError(ValueError):
    """A ``[sim:...]`` marker that is unknown or malformed."""


@dataclass(frozen=True)
class Markers:
    """Fault-injection directives found in a prompt.

    ``fail`` is set by ``[sim:fail]`` and ``[sim:fail=CODE]``; ``fail_code`` only by the
    latter, so each provider can give the bare marker its own default failure.
    """

    fail: bool = False
    fail_code: str | None = None
    expire: bool = False
    latency: float | None = None
    hold: bool = False
    create429: int = 0
    create500: int = 0
    get500: int = 0
    slowcreate: float = 0.0
    reasonsonly: bool = False
    # `[sim:badvideo]`: the task succeeds but its video is an MP4 by its first box only
    # (simulator.mp4.UNDECODABLE), for the store step's check.
    badvideo: bool = False


_MARKER_RE = re.compile(r"\[sim:([a-z0-9]+)(?:=([^\]]*))?\]")
_CODE_RE = re.compile(r"[A-Za-z0-9_.]+")
_FLAGS = ("expire", "hold", "reasonsonly", "badvideo")
_COUNTS = ("create429", "create500", "get500")
_SECONDS = ("latency", "slowcreate")


def parse_markers(text: str) -> Markers:
    """Parse every ``[sim:name]`` / ``[sim:name=value]`` marker in ``text`` (raises MarkerError)."""
    found: dict[str, Any] = {}
    for match in _MARKER_RE.finditer(text):
        name, value = match.group(1), match.group(2)
        found.update(_parse_marker(name, value, match.group(0)))
    return Markers(**found)


def _parse_marker(name: str, value: str | None, raw: str) -> dict[str, Any]:
    try:
        if name == "fail":
            if value is None:
                return {"fail": True}
            if _CODE_RE.fullmatch(value):
                return {"fail": True, "fail_code": value}
        elif name in _FLAGS and value is None:
            return {name: True}
        elif name in _COUNTS and value is not None and int(value) >= 0:
            return {name: int(value)}
        elif name in _SECONDS and value is not None:
            seconds = float(value)
            if math.isfinite(seconds) and seconds >= 0:
                return {name: seconds}
    except ValueError:
        pass
    raise MarkerError(f"unknown or malformed simulator marker {raw}")
