"""worker.malloc: with the mmap threshold fixed, large blocks a task frees go back to the
system; without it, glibc serves them from the heap after the first and keeps what they
leave (the store pool child's growth of the compressed day, docs/benchmarks.md section 9)."""

from __future__ import annotations

import ctypes.util
import importlib
import platform
import subprocess
import sys

import pytest

from worker import malloc

# After one large block was freed, blocks of 1.3 MB, each followed by
# a block that lives on, then all of them freed: from the heap, the space they leave stays
# in the process.
# What both scripts below start with: C's malloc and free, and the process's RSS in KiB.
_PRELUDE = """
import ctypes, sys
from worker import malloc
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_kib():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])

def allocate_then_free(count, size, after_each=0, at_top=0):
    blocks = []
    for _ in range(count):
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        blocks.append(block)
        if after_each:
            libc.malloc(after_each)  # lives on, after it
    if at_top:
        libc.malloc(at_top)  # lives on, at the top
    for block in blocks:
        libc.free(block)
"""

_CHURN = (
    _PRELUDE
    + """
if sys.argv[1] == "fixed":
    assert malloc.fix_mmap_threshold()
first = libc.malloc(8_000_000)
libc.free(first)  # glibc's threshold rises to its size, unless fixed
before = rss_kib()
allocate_then_free(50, 1_300_000, after_each=100_000)
print(rss_kib() - before)
"""
)

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the threshold is glibc's"
)


def _growth_kib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@glibc
def test_freed_large_blocks_go_back_to_the_system_with_the_threshold_fixed() -> None:
    assert ctypes.util.find_library("c")
    unfixed, fixed = _growth_kib("default"), _growth_kib("fixed")
    # 50 blocks of 1.3 MB freed: kept in the heap, about 63 MB; mapped apart, given back.
    assert unfixed > 50_000, unfixed
    assert fixed < 10_000, fixed


@glibc
def test_the_setting_is_taken() -> None:
    assert malloc.fix_mmap_threshold() is True


# Many small blocks, then one that lives on at the top of the heap, then the small ones
# freed: the heap cannot shrink past the live one, so glibc keeps the space below it until
# a trim hands the free pages inside the heap back.
_SMALL = (
    _PRELUDE
    + """
assert malloc.fix_mmap_threshold()
before = rss_kib()
allocate_then_free(200_000, 500, at_top=500)
kept = rss_kib() - before
trimmed = malloc.trim_if_due()
print(kept, rss_kib() - before, trimmed, malloc.trim_if_due())
"""
)


@glibc
def test_a_trim_gives_back_small_blocks_freed_below_one_that_lives_on() -> None:
    done = subprocess.run([sys.executable, "-c", _SMALL], capture_output=True, text=True, check=True)
    kept, after, trimmed, again = done.stdout.split()
    # 200,000 blocks of 500 B: about 100 MB kept in the heap, given back by the trim.
    assert int(kept) > 80_000, kept
    assert int(after) < 10_000, after
    assert trimmed == "True"
    assert again == "False"  # not again within the interval


def test_a_trim_is_done_at_most_once_an_interval() -> None:
    now = [1000.0]
    trimmer = malloc._Trimmer(30.0, clock=lambda: now[0])
    assert trimmer() is (malloc._glibc() is not None)
    now[0] += 29.9
    assert trimmer() is False
    now[0] += 0.2
    assert trimmer() is (malloc._glibc() is not None)


def test_a_trim_is_not_done_while_another_thread_is_at_it() -> None:
    trimmer = malloc._Trimmer(30.0)
    with trimmer._lock:
        assert trimmer() is False
    assert trimmer._last is None  # it did not count as done


def test_a_prefork_child_is_capped_by_default_and_the_cap_can_be_lifted(monkeypatch: pytest.MonkeyPatch) -> None:
    from videoqueue import celeryconfig
    from videoqueue.settings import get_settings

    monkeypatch.delenv("WORKER_MAX_MEMORY_PER_CHILD", raising=False)
    get_settings.cache_clear()
    assert importlib.reload(celeryconfig).worker_max_memory_per_child == 512 * 1024  # KiB, as Celery counts
    monkeypatch.setenv("WORKER_MAX_MEMORY_PER_CHILD", "0")
    get_settings.cache_clear()
    assert importlib.reload(celeryconfig).worker_max_memory_per_child is None  # Celery's "never"
    monkeypatch.undo()
    get_settings.cache_clear()
    importlib.reload(celeryconfig)


def test_a_cap_below_a_working_child_is_warned_of() -> None:
    warning = malloc.child_cap_warning(1000)
    assert warning is not None and "WORKER_MAX_MEMORY_PER_CHILD=1000 KiB is below" in warning
    assert malloc.child_cap_warning(0) is None  # no cap
    assert malloc.child_cap_warning(512 * 1024) is None  # the default
