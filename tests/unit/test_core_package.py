"""The core package `videoqueue` re-exports the producer's API, lazily (so the core never
imports the producer on its own)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import producer
import videoqueue


def test_producer_api_from_the_core_package() -> None:
    from videoqueue import VideoQueue, VideoRequest

    assert VideoQueue is producer.VideoQueue
    assert VideoRequest is producer.VideoRequest


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = videoqueue.no_such_thing


def test_importing_the_core_does_not_import_the_producer() -> None:
    code = "import sys, videoqueue.jobstore, videoqueue.settings; print('producer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_failure_record_keeps_its_old_name_for_producers() -> None:
    from producer import JobError, JobFailure

    assert JobError is JobFailure
    assert not issubclass(JobFailure, BaseException)
