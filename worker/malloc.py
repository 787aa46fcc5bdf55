"""The C allocator of a worker process: large blocks in mappings of their own, so that what
a task frees goes back to the system.

glibc's malloc serves a block of at least its mmap threshold (128 KiB at first) from a
mapping of its own, which `free` unmaps; but each such `free` raises the threshold to the
size of that block (up to 32 MiB), and from then on blocks of that size come from the heap,
where the space they leave, with small blocks that live on allocated around it, is neither
reused whole nor given back. In the compressed day (`python -m bench day`, docs/benchmarks.md
section 9) the workers of one host grew from 544 to 2,178 MiB over 200,000 jobs, most of it
in a store pool child whose heap grew by 100 MB in 5 minutes while its Python objects did
not: a `malloc_trim` gave it back, so it was freed memory kept, not a leak. With the
threshold set (`mallopt`, which also stops glibc adjusting it) the same run kept every pool
child within a few MB.

Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number for the mmap threshold (malloc.h)."""

MMAP_THRESHOLD_BYTES = 128 * 1024
"""Blocks of at least this many bytes get a mapping of their own: glibc's own starting value,
kept from then on."""


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes for this process (and the processes
    it forks), which stops glibc from raising it. Returns False where the C library is not
    glibc or refused the setting (nothing is changed then)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has a mallopt that does nothing
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = int(mallopt(M_MMAP_THRESHOLD, threshold)) == 1
    if not done:
        log.warning("glibc refused the mmap threshold", extra={"threshold": threshold})
    return done
