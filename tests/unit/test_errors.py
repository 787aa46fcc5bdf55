"""One error tree: every exception class videoqueue, producer and worker define derives from
`VideoqueueError` (but the documented control-flow ones), the tree in `videoqueue.errors`'
docstring is the real one, and `except VideoqueueError` catches what the API raises."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from decimal import Decimal
from typing import Any

import fakeredis
import pytest

from producer import (
    BudgetExceededError,
    InvalidRequestError,
    JobStoreError,
    RequestError,
    Settings,
    UnknownJobError,
    VideoQueue,
    VideoRequest,
)
from videoqueue import errors
from videoqueue.errors import OUTSIDE_THE_TREE, VideoqueueError
from videoqueue.jobstore import JobStore

PACKAGES = ("videoqueue", "producer", "worker")


def _defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined (not just imported) in a module of PACKAGES, by name."""
    found: dict[str, type[BaseException]] = {}
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        modules = [package_name] + [
            info.name
            for info in pkgutil.walk_packages(package.__path__, f"{package_name}.")
            if not info.name.endswith(".__main__")
        ]
        for module_name in modules:
            module = importlib.import_module(module_name)
            for name, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module_name
                    and value.__qualname__ == name
                ):
                    assert name not in found, f"two exception classes named {name}: {found[name]} and {value}"
                    found[name] = value
    return found


DEFINED = _defined_exceptions()


def test_every_exception_class_is_in_the_tree_or_documented_outside_it() -> None:
    outside = sorted(f"{c.__module__}.{n}" for n, c in DEFINED.items() if not issubclass(c, VideoqueueError))
    allowed = sorted(f"{DEFINED[n].__module__}.{n}" for n in OUTSIDE_THE_TREE if n in DEFINED)
    assert outside == allowed, "derive it from a branch of videoqueue.errors, or document why it stays outside"
    # The allow-list names classes that exist, and the docstring says why each is there.
    assert DEFINED.keys() >= OUTSIDE_THE_TREE
    assert all(f"`{name}`" in (errors.__doc__ or "") for name in OUTSIDE_THE_TREE)
    # The walk sees the classes of every package, not only the core's.
    assert {"ProviderError", "VideoCheckError", "FetchError", "JobFailed", "UnknownJobError"} <= DEFINED.keys()


def _documented_tree() -> dict[str, tuple[str | None, tuple[str, ...], str]]:
    """The docstring's tree: class name -> (parent, built-in bases, module it is defined in)."""
    doc = errors.__doc__ or ""
    block = doc.split("\n\n    VideoqueueError\n", 1)[1].split("\n\n", 1)[0]
    lines = ["    VideoqueueError", *block.splitlines()]
    line = re.compile(r"^(?P<indent> *)(?P<name>\w+)(?: \((?P<builtins>[\w, ]+)\))?(?: +(?P<module>[\w.]+))?$")
    tree: dict[str, tuple[str | None, tuple[str, ...], str]] = {}
    parents: list[str] = []
    for text in lines:
        match = line.match(text)
        assert match, f"not a line of the tree: {text!r}"
        depth = (len(match["indent"]) - 4) // 4
        parents = parents[:depth]
        builtins = tuple(match["builtins"].split(", ")) if match["builtins"] else ()
        tree[match["name"]] = (parents[-1] if parents else None, builtins, match["module"] or "videoqueue.errors")
        parents.append(match["name"])
    return tree


def test_the_documented_tree_is_the_real_one() -> None:
    real: dict[str, tuple[str | None, tuple[str, ...], str]] = {}
    for name, cls in DEFINED.items():
        if not issubclass(cls, VideoqueueError):
            continue
        in_tree = [b.__name__ for b in cls.__bases__ if issubclass(b, VideoqueueError)]
        builtins = tuple(b.__name__ for b in cls.__bases__ if not issubclass(b, VideoqueueError))
        assert len(in_tree) <= 1, f"{name} has two parents in the tree: {in_tree}"
        parent = in_tree[0] if in_tree else None
        real[name] = (parent, () if cls is VideoqueueError else builtins, cls.__module__)
    assert _documented_tree() == real, "the tree in the docstring of videoqueue.errors differs from the code"


def test_the_classes_moved_into_the_core_are_the_same_classes_at_their_old_homes() -> None:
    from videoqueue import budget, jobstore, settings
    from worker.providers import base as provider_base
    from worker.storage import base as storage_base

    assert jobstore.JobExistsError is errors.JobExistsError
    assert jobstore.TaskClaimedError is errors.TaskClaimedError
    assert jobstore.DuplicateClientJobIdError is errors.DuplicateClientJobIdError
    assert budget.BudgetExceededError is errors.BudgetExceededError
    assert settings.InvalidSettingsError is errors.InvalidSettingsError
    assert provider_base.ProviderError is errors.ProviderError
    assert storage_base.StorageError is errors.StorageError


def _queue(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> tuple[VideoQueue, Any]:
    client = fakeredis.FakeRedis(decode_responses=True)
    vq = VideoQueue(Settings(_env_file=None, **settings), store=JobStore(client))
    monkeypatch.setattr(vq, "_send", lambda records: None)  # no broker in unit tests
    return vq, client


def test_except_videoqueue_error_catches_a_budget_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, client = _queue(monkeypatch, budget_daily_usd=Decimal("0.10"))
    try:
        vq.submit(VideoRequest(prompt="a red fox in snow"))
    except VideoqueueError as exc:
        caught: VideoqueueError = exc
    else:
        raise AssertionError("a job over the daily cap was enqueued")
    assert isinstance(caught, BudgetExceededError) and isinstance(caught, ValueError)
    assert "cap $0.10" in str(caught)
    assert client.keys("*") == []


def test_except_videoqueue_error_catches_an_invalid_request(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, client = _queue(monkeypatch)
    try:
        vq.submit({"prompt": "a red fox in snow", "duration": 99})
    except VideoqueueError as exc:
        caught: VideoqueueError = exc
    else:
        raise AssertionError("a 99 s video was enqueued")
    assert isinstance(caught, InvalidRequestError) and isinstance(caught, RequestError)
    assert isinstance(caught, ValueError) and "duration" in caught.problems
    assert client.keys("*") == []


def test_an_unknown_job_is_a_job_store_error_and_still_a_key_error(monkeypatch: pytest.MonkeyPatch) -> None:
    vq, _ = _queue(monkeypatch)
    with pytest.raises(JobStoreError) as info:
        vq.get("0c1c0196-0000-4000-8000-000000000000")
    assert isinstance(info.value, UnknownJobError) and isinstance(info.value, KeyError)
