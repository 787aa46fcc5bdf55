"""Budgets: hard caps on spend per UTC day, per month and per tag, shared by the whole
fleet through Redis.

A job's estimate is reserved when it is enqueued, in the same transaction that stores
it (so concurrent producers cannot overshoot a cap), and settled when the job reaches a
final status, in the transaction that moves it there: the reservation is released and
the actual cost (zero if the provider charged nothing; with the estimate of any task
the job may have been billed for but does not use) is added as spent. A job counts
against the day and month it was submitted in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from producer import namespace
from producer.contract import JobRecord

KEY_PREFIX = namespace.keep(globals(), "KEY_PREFIX", lambda: namespace.key("budget:"))
MICRO = Decimal(1_000_000)
# Day and month counters outlive their period long enough for reports, then go.
_DAY_TTL_S = 40 * 86400
_MONTH_TTL_S = 400 * 86400


def to_micro(amount: Decimal) -> int:
    """Dollars to integer micro-dollars, the unit Redis counters hold."""
    return int((amount * MICRO).to_integral_value())


def from_micro(value: int | str | None) -> Decimal:
    """Integer micro-dollars back to dollars."""
    return Decimal(int(value or 0)) / MICRO


class BudgetExceededError(ValueError):
    """Enqueueing would cross a budget cap; nothing was stored or sent."""

    def __init__(self, budget: str, cap: Decimal, used: Decimal, requested: Decimal) -> None:
        self.budget, self.cap, self.used, self.requested = budget, cap, used, requested
        super().__init__(
            f"budget {budget} would be exceeded: cap ${cap:.2f}, already reserved or spent "
            f"${used:.4f}, this submission needs ${requested:.4f} (nothing was enqueued)"
        )


@dataclass(frozen=True)
class BudgetPolicy:
    """The caps in force (None = no cap)."""

    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    tag_usd: dict[str, Decimal] | None = None

    def keys_for(self, record: JobRecord) -> list[str]:
        """The budget counters this job reserves against."""
        keys: list[str] = []
        day = record.created_at.date().isoformat()
        if self.daily_usd is not None:
            keys.append(f"{KEY_PREFIX}day:{day}")
        if self.monthly_usd is not None:
            keys.append(f"{KEY_PREFIX}month:{day[:7]}")
        for tag in record.request.get("tags") or ():
            if self.tag_usd and tag in self.tag_usd:
                keys.append(f"{KEY_PREFIX}tag:{tag}")
        return keys

    def cap(self, key: str) -> Decimal:
        """The cap that a counter key stands for."""
        kind, _, name = key.removeprefix(KEY_PREFIX).partition(":")
        if kind == "day" and self.daily_usd is not None:
            return self.daily_usd
        if kind == "month" and self.monthly_usd is not None:
            return self.monthly_usd
        if kind == "tag" and self.tag_usd and name in self.tag_usd:
            return self.tag_usd[name]
        raise KeyError(key)


def check_and_reserve(pipe: Any, policy: BudgetPolicy, records: Sequence[JobRecord]) -> None:
    """Inside a WATCHed transaction: read the counters, refuse if the batch would cross a
    cap, else queue the reservations (call after `pipe.multi()` is NOT yet issued; this
    issues it). Each record's `budget_keys` must already be set."""
    needed: dict[str, int] = {}
    for record in records:
        for key in record.budget_keys:
            needed[key] = needed.get(key, 0) + to_micro(record.cost_estimate_usd)
    current = {key: pipe.hmget(key, "reserved", "spent") for key in needed}
    for key, amount in needed.items():
        reserved, spent = current[key]
        used = int(reserved or 0) + int(spent or 0)
        cap = policy.cap(key)
        if used + amount > to_micro(cap):
            raise BudgetExceededError(key.removeprefix(KEY_PREFIX), cap, from_micro(used), from_micro(amount))
    pipe.multi()
    for key, amount in needed.items():
        pipe.hincrby(key, "reserved", amount)
        ttl = _DAY_TTL_S if ":day:" in key else _MONTH_TTL_S if ":month:" in key else None
        if ttl:
            pipe.expire(key, ttl)


def settle(pipe: Any, record: JobRecord) -> None:
    """Queue, on a MULTI pipeline, the release of a final job's reservation and the
    addition of what it actually cost."""
    estimate = to_micro(record.cost_estimate_usd)
    charged = record.charged_usd
    actual = to_micro(charged) if charged is not None else 0
    for key in record.budget_keys:
        pipe.hincrby(key, "reserved", -estimate)
        if actual:
            pipe.hincrby(key, "spent", actual)


def usage(client: Any, key: str) -> tuple[Decimal, Decimal]:
    """Reserved and spent dollars of one counter."""
    reserved, spent = client.hmget(key, "reserved", "spent")
    return from_micro(reserved), from_micro(spent)
