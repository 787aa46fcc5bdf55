"""worker.malloc: with the mmap threshold fixed, large blocks a task frees go back to the
system; without it, glibc serves them from the heap after the first and keeps what they
leave (the store pool child's growth of the compressed day, docs/benchmarks.md section 9)."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest

from worker import malloc

# After one large block was freed, blocks of 1.3 MB, each followed by
# a block that lives on, then all of them freed: from the heap, the space they leave stays
# in the process.
_CHURN = """
import ctypes, sys
from worker import malloc
if sys.argv[1] == "fixed":
    assert malloc.fix_mmap_threshold()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_kib():
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])

first = libc.malloc(8_000_000)
libc.free(first)  # glibc's threshold rises to its size, unless fixed
before = rss_kib()
frames = []
for _ in range(50):
    frame = libc.malloc(1_300_000)
    ctypes.memset(frame, 1, 1_300_000)
    frames.append(frame)
    libc.malloc(100_000)  # lives on, after it
for frame in frames:
    libc.free(frame)
print(rss_kib() - before)
"""

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
