"""Budgets: caps on spend per UTC day, per month and per tag, shared by the whole fleet
through Redis.

Every job counts, cap or no cap: its estimate is reserved against its day, month and tag
counters when it is enqueued, in the same transaction that stores it (so concurrent
producers cannot overshoot a cap), and settled when the job reaches a final status, in the
transaction that moves it there: the reservation is released and the actual cost (zero if
the provider charged nothing; with the estimate of any task the job may have been billed
for but does not use) is added as spent. A job counts against the UTC day and month it was
submitted in; a tag counter runs for all time.

The caps live in one Redis hash (keys.BUDGET_CAPS), set with `videoqueue budget set`. For each
budget the cap in force is, in this order: the one in Redis (an amount, or "none" for no
cap); else this process's setting (BUDGET_DAILY_USD, BUDGET_MONTHLY_USD, BUDGET_TAGS_USD);
else no cap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from videoqueue import keys
from videoqueue.errors import BudgetExceededError as BudgetExceededError  # noqa: PLC0414 - re-export
from videoqueue.job import JobRecord
from videoqueue.keys import budget_counter_key

NO_CAP = "none"
DAY, MONTH = "day", "month"
MICRO = Decimal(1_000_000)
# Day and month counters outlive their period long enough for reports, then go.
DAY_TTL_S = 40 * 86400
MONTH_TTL_S = 400 * 86400

# Where a cap comes from: Redis (an amount, or "none" stored: no cap whatever the
# settings say; binds the whole fleet), the settings of the process that reads it (binds
# only the producers and workers whose settings have it), or nowhere (no cap).
CapSource = Literal["redis", "shell-settings", "none"]


def to_micro(amount: Decimal) -> int:
    """Dollars to integer micro-dollars, the unit Redis counters hold."""
    return int((amount * MICRO).to_integral_value())


def from_micro(value: int | str | None) -> Decimal:
    """Integer micro-dollars back to dollars."""
    return Decimal(int(value or 0)) / MICRO


# Cap amounts are whole cents from one cent to a billion dollars: `budget show` prints
# cents, so a finer cap would show as something it is not, and the bound keeps every cap
# a finite JSON number and far inside the 64-bit micro-dollar counters (1e15 of 9.2e18).
MIN_CAP_USD = Decimal("0.01")
MAX_CAP_USD = Decimal(1_000_000_000)
CENT = Decimal("0.01")
AMOUNT_RULE = "must be an amount of US dollars from 0.01 to 1000000000 with at most 2 decimals, such as 100 or 12.50"


def _decimal(value: object) -> Decimal:
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        return Decimal("NaN")


def parse_usd(value: object) -> Decimal:
    """A cap amount given by a person (setting, `budget set`): whole cents from 0.01 to
    1,000,000,000 US dollars, returned with 2 decimals. Raises ValueError with a one-line
    message (AMOUNT_RULE) otherwise."""
    amount = _decimal(value)
    if not amount.is_finite() or not MIN_CAP_USD <= amount <= MAX_CAP_USD or amount != amount.quantize(CENT):
        raise ValueError(AMOUNT_RULE)
    return amount.quantize(CENT)


def stored_usd(value: object) -> Decimal:
    """A cap amount read back from Redis, perhaps written before the rule of parse_usd:
    any positive amount up to MAX_CAP_USD, as stored (a finer cap is kept, never loosened).
    ValueError otherwise."""
    amount = _decimal(value)
    if not amount.is_finite() or not 0 < amount <= MAX_CAP_USD:
        raise ValueError(AMOUNT_RULE)
    return amount


def counter_ttl(key: str) -> int | None:
    """Seconds a counter is kept after its last reservation (None: for ever)."""
    budget = key.removeprefix(keys.BUDGET_PREFIX)
    return DAY_TTL_S if budget.startswith(f"{DAY}:") else MONTH_TTL_S if budget.startswith(f"{MONTH}:") else None


def cap_name(key: str) -> str:
    """The cap a counter key answers to: `day`, `month` or `tag:NAME`."""
    kind, _, name = key.removeprefix(keys.BUDGET_PREFIX).partition(":")
    return kind if kind in (DAY, MONTH) else f"{kind}:{name}"


def keys_for(record: JobRecord) -> list[str]:
    """Every counter a job counts against: its UTC day, its month, each of its tags."""
    day = record.created_at.date().isoformat()
    counters = [budget_counter_key(f"{DAY}:{day}"), budget_counter_key(f"{MONTH}:{day[:7]}")]
    counters.extend(budget_counter_key(f"tag:{tag}") for tag in dict.fromkeys(record.request.get("tags") or ()))
    return counters


@dataclass(frozen=True)
class BudgetPolicy:
    """The caps this process's settings give (None = no cap): the defaults, used for each
    budget that has no cap in Redis."""

    daily_usd: Decimal | None = None
    monthly_usd: Decimal | None = None
    tag_usd: dict[str, Decimal] | None = None

    def keys_for(self, record: JobRecord) -> list[str]:
        """The counters this job reserves against (all of them, cap or not)."""
        return keys_for(record)

    def default(self, name: str) -> Decimal | None:
        """The setting's cap for `day`, `month` or `tag:NAME`, or None."""
        if name == DAY:
            return self.daily_usd
        if name == MONTH:
            return self.monthly_usd
        return (self.tag_usd or {}).get(name.removeprefix("tag:"))


@dataclass(frozen=True)
class Cap:
    """The cap in force for one budget and where it comes from."""

    amount: Decimal | None
    source: CapSource


@dataclass(frozen=True)
class Caps:
    """The caps stored in Redis (None = "none", no cap on purpose) over the defaults."""

    stored: Mapping[str, Decimal | None] = field(default_factory=dict)
    defaults: BudgetPolicy = field(default_factory=BudgetPolicy)

    def cap(self, name: str) -> Cap:
        """The cap of `day`, `month` or `tag:NAME`."""
        if name in self.stored:
            return Cap(self.stored[name], "redis")  # None: "none" stored, no cap on purpose
        default = self.defaults.default(name)
        return Cap(default, "shell-settings") if default is not None else Cap(None, "none")

    def tag_names(self) -> set[str]:
        """Tags with a cap in Redis or in the settings."""
        names = {n.removeprefix("tag:") for n, a in self.stored.items() if n.startswith("tag:") and a is not None}
        names |= {t for t in self.defaults.tag_usd or {} if f"tag:{t}" not in self.stored}
        return names


def load_caps(client: Any, defaults: BudgetPolicy) -> Caps:
    """The caps in Redis over `defaults` (works on a WATCHing pipeline too). A stored value
    that is not an amount counts as no cap stored."""
    return caps_from(client.hgetall(keys.BUDGET_CAPS) or {}, defaults)


def caps_from(raw: Mapping[str, str], defaults: BudgetPolicy) -> Caps:
    """The caps of a keys.BUDGET_CAPS hash as read (`raw`) over `defaults`."""
    stored: dict[str, Decimal | None] = {}
    for name, value in raw.items():
        if value == NO_CAP:
            stored[name] = None
            continue
        try:
            stored[name] = stored_usd(value)
        except ValueError:
            continue
    return Caps(stored, defaults)


def set_caps(client: Any, changes: Mapping[str, Decimal | Literal["clear"] | None]) -> None:
    """Store caps in Redis: an amount, None for "no cap" (over any setting), or "clear" to
    remove the stored cap so that each process's setting applies again."""
    pipe = client.pipeline(transaction=True)
    for name, value in changes.items():
        if value == "clear":
            pipe.hdel(keys.BUDGET_CAPS, name)
        elif value is None:
            pipe.hset(keys.BUDGET_CAPS, name, NO_CAP)
        else:
            pipe.hset(keys.BUDGET_CAPS, name, str(parse_usd(value)))
    pipe.execute()


def check_and_reserve(pipe: Any, policy: BudgetPolicy, records: Sequence[JobRecord]) -> None:
    """Inside a transaction WATCHing the records' counters and keys.BUDGET_CAPS: read the caps and
    counters, refuse (BudgetExceededError) if the batch would cross a cap, else issue MULTI
    and queue the reservations. Each record's `budget_keys` must already be set."""
    needed: dict[str, int] = {}
    for record in records:
        for key in record.budget_keys:
            needed[key] = needed.get(key, 0) + to_micro(record.cost_estimate_usd)
    caps = load_caps(pipe, policy)
    for key, amount in needed.items():
        cap = caps.cap(cap_name(key)).amount
        if cap is None:
            continue
        reserved, spent = (int(v or 0) for v in pipe.hmget(key, "reserved", "spent"))
        if reserved + spent + amount > to_micro(cap):
            raise BudgetExceededError(
                key.removeprefix(keys.BUDGET_PREFIX), cap, from_micro(spent), from_micro(reserved), from_micro(amount)
            )
    pipe.multi()
    for key, amount in needed.items():
        pipe.hincrby(key, "reserved", amount)
        ttl = counter_ttl(key)
        if ttl:
            pipe.expire(key, ttl)


def exceeded(client: Any, record: JobRecord, defaults: BudgetPolicy) -> BudgetExceededError | None:
    """The worker's check before creating a job's provider task: is any budget the job
    reserved against over its cap now (a cap lowered since enqueue)? The job's own
    reservation counts, so of the jobs waiting, those that still fit go ahead."""
    # On the submit path of every queued job: the caps and all its counters in one round trip.
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.BUDGET_CAPS)
    for key in record.budget_keys:
        pipe.hmget(key, "reserved", "spent")
    raw_caps, *counters = pipe.execute()
    caps = caps_from(raw_caps or {}, defaults)
    for key, counter in zip(record.budget_keys, counters, strict=True):
        cap = caps.cap(cap_name(key)).amount
        if cap is None:
            continue
        reserved, spent = (int(v or 0) for v in counter)
        if reserved + spent > to_micro(cap):
            return BudgetExceededError(
                key.removeprefix(keys.BUDGET_PREFIX),
                cap,
                from_micro(spent),
                from_micro(reserved),
                record.cost_estimate_usd,
                created=True,
            )
    return None


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


@dataclass(frozen=True)
class BudgetState:
    """One budget as `videoqueue budget show` prints it. Amounts in USD."""

    budget: str  # day:YYYY-MM-DD, month:YYYY-MM or tag:NAME
    cap_usd: Decimal | None
    cap_source: CapSource
    spent_usd: Decimal
    reserved_usd: Decimal

    @property
    def left_usd(self) -> Decimal | None:
        """What may still be reserved: cap - spent - reserved (negative once a cap was
        lowered below what is spent); None without a cap."""
        return None if self.cap_usd is None else self.cap_usd - self.spent_usd - self.reserved_usd

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: amounts as numbers, null where there is no cap."""
        kind, _, name = self.budget.partition(":")

        def number(value: Decimal | None) -> float | None:
            return None if value is None else float(value)

        return {
            "budget": self.budget,
            "kind": kind,
            "name": name,
            "cap_usd": number(self.cap_usd),
            "cap_source": self.cap_source,
            "spent_usd": number(self.spent_usd),
            "reserved_usd": number(self.reserved_usd),
            "left_usd": number(self.left_usd),
        }


def states(client: Any, defaults: BudgetPolicy, today: date) -> list[BudgetState]:
    """Today's day budget, this month's, and each tag that has a cap or a counter."""
    caps = load_caps(client, defaults)
    tags = caps.tag_names()
    tags |= {
        str(k).removeprefix(budget_counter_key("tag:"))
        for k in client.scan_iter(budget_counter_key("tag:*"), count=500)
    }
    day = today.isoformat()
    budgets = [(f"{DAY}:{day}", DAY), (f"{MONTH}:{day[:7]}", MONTH), *((f"tag:{t}", f"tag:{t}") for t in sorted(tags))]
    result: list[BudgetState] = []
    for budget, name in budgets:
        reserved, spent = usage(client, budget_counter_key(budget))
        cap = caps.cap(name)
        result.append(BudgetState(budget, cap.amount, cap.source, spent, reserved))
    return result
