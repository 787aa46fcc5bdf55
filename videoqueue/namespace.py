"""Deployment namespaces: every Redis key and Celery queue videoqueue uses is named here.

A deployment (`VQ_NAMESPACE`, default `default`) owns the keys and queues carrying its
name, so two deployments on one Redis (a real fleet and `make demo`, or the test suite)
never take each other's jobs. The `default` namespace keeps the names videoqueue used
before namespaces existed (keys `vq:...`, queues `vq.submit`, `vq.poll`, `vq.store`), so
an existing deployment keeps its jobs, counters and ledger on upgrade; namespace N uses
keys `vq@N:...` and queues `vq@N.submit`... A name holds only `a-z`, `0-9` and `-`, so no
prefix is a prefix of another deployment's names (`vq:` vs `vq@`, and `:`/`.` end N).

One process serves one deployment: the worker app and `VideoQueue` call `use()` with
their settings' namespace, and reading the process's settings (`get_settings()`, as every
CLI command does) adopts theirs unless a namespace was chosen already. Every Redis key
is named in `videoqueue.keys`; names derived from the namespace are module attributes
(`keys.DUE_INDEX`, `job.QUEUE_SUBMIT`...) defined with `keep()`, which sets them again
whenever the namespace changes; read them as `module.NAME` (or through the module's own
functions) when used, never copy them with `from module import NAME` in code that may
run after a change of namespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TypeVar

DEFAULT = "default"
STEPS = ("submit", "poll", "store")
_VALID = re.compile(r"[a-z0-9-]{1,32}")
RULE = "must be 1-32 characters, each a lowercase letter, a digit or '-'"

T = TypeVar("T")

_current = DEFAULT
_chosen = False
_bound: list[Callable[[], None]] = []


def is_valid(name: str) -> bool:
    """True if `name` can name a namespace."""
    return isinstance(name, str) and _VALID.fullmatch(name) is not None


def validate(name: str) -> str:
    """`name` if it is a valid namespace; ValueError (one line) otherwise."""
    if not is_valid(name):
        raise ValueError(f"VQ_NAMESPACE {RULE}")
    return name


def current() -> str:
    """The namespace this process serves."""
    return _current


def _switch(name: str) -> None:
    global _current
    validate(name)
    if name != _current:
        _current = name
        for apply in _bound:
            apply()


def use(name: str) -> None:
    """Make `name` this process's namespace and re-derive every kept key and queue name;
    later `adopt()` calls no longer change it. ValueError if the name is invalid."""
    global _chosen
    _switch(name)
    _chosen = True


def adopt(name: str) -> None:
    """Serve `name` unless `use()` chose a namespace already: what reading the process's
    settings (settings.get_settings) does, so that a tool that chose its namespace (the
    demo, a test) keeps it when a library reads the environment's settings later."""
    if not _chosen:
        _switch(name)


@contextmanager
def using(name: str) -> Iterator[None]:
    """Serve `name` inside the block, then the namespace served before (tests, tools)."""
    global _chosen
    before, chosen = current(), _chosen
    use(name)
    try:
        yield
    finally:
        _switch(before)
        _chosen = chosen


def key_prefix(name: str | None = None) -> str:
    """What every Redis key of namespace `name` (default: the current one) starts with."""
    name = current() if name is None else validate(name)
    return "vq:" if name == DEFAULT else f"vq@{name}:"


def queue(step: str, name: str | None = None) -> str:
    """The Celery queue of a pipeline step (`submit`, `poll`, `store`) in namespace `name`
    (default: the current one)."""
    name = current() if name is None else validate(name)
    return f"vq.{step}" if name == DEFAULT else f"vq@{name}.{step}"


def queues(name: str | None = None) -> tuple[str, ...]:
    """The three queues of namespace `name` (default: the current one), in step order."""
    return tuple(queue(step, name) for step in STEPS)


def celery_names(name: str | None = None) -> dict[str, str]:
    """Celery's control and event exchanges of a namespace, so that its broadcasts
    (inspect, shutdown) and events (Flower) stay inside it; `default` keeps Celery's own."""
    name = current() if name is None else validate(name)
    if name == DEFAULT:
        return {"control_exchange": "celery", "event_exchange": "celeryev"}
    return {"control_exchange": f"vq@{name}", "event_exchange": f"vq@{name}.ev"}


def keep(scope: MutableMapping[str, Any], attribute: str, make: Callable[[], T]) -> T:
    """Return `make()` for a module attribute `attribute` of `scope` (a module's
    `globals()`), and set it again to `make()` whenever the namespace changes."""

    def apply() -> None:
        scope[attribute] = make()

    _bound.append(apply)
    return make()
