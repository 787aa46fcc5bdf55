"""The C allocator of a worker process: large blocks in mappings of their own, so that what
a task frees goes back to the system.

glibc's malloc serves a block of at least its mmap threshold (128 KiB at first) from a
mapping of its own, which `free` unmaps; but each such `free` raises the threshold to the
size of that block (up to 32 MiB), and from then on blocks of that size come from the heap,
where the space they leave, with small blocks that live on allocated around it, is neither
reused whole nor given back. In the compressed day (`python -m bench day`, docs/benchmarks.md
section 9) the workers of one host grew from 544 to 2,178 MiB over 200,000 jobs. In shorter
runs of it one store pool child's heap grew by 100 MB in 5 minutes while its Python objects
did not, and a `malloc_trim` gave it back: freed memory kept, not a leak. With the threshold
set (`mallopt`, which also stops glibc adjusting it) the same 20,000-job run kept every pool
child within a few MB.

The threshold does not cover small blocks: a heap whose top is held by one small block that
lives on keeps everything freed below it. `trim_if_due`, called after each task, gives the
heap's free pages back with `malloc_trim` at most once per `TRIM_INTERVAL_S` a process. What
neither can give back is fragmentation: free chunks too small for what comes next, about
0.8 KB a job in a busy store child (benchmarks section 9); Celery's
`worker_max_memory_per_child` (WORKER_MAX_MEMORY_PER_CHILD) bounds that by replacing the child.

Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter number for the mmap threshold (malloc.h)."""

MMAP_THRESHOLD_BYTES = 128 * 1024
"""Blocks of at least this many bytes get a mapping of their own: glibc's own starting value,
kept from then on."""


TRIM_INTERVAL_S = 30.0
"""Seconds between two `malloc_trim` calls of one process: each costs a walk of the heap
(about a millisecond for a worker's), so once in 30 s is nothing beside the tasks between."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    # Once a process (and inherited by forks): find_library runs `ldconfig -p`.
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has a mallopt that does nothing
    except (OSError, AttributeError, TypeError):
        return None
    return libc


class _Trimmer:
    """`malloc_trim(0)` for this process, at most once per interval, whichever thread asks."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None

    def __call__(self) -> bool:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another thread of this process is trimming
        try:
            if self._last is not None and now - self._last < self.interval_s:
                return False
            self._last = now
            libc = _glibc()
            if libc is None:
                return False
            libc.malloc_trim(ctypes.c_size_t(0))
            return True
        finally:
            self._lock.release()


trim_if_due = _Trimmer(TRIM_INTERVAL_S)
"""Give the heap's free memory back to the system (`malloc_trim(0)`) unless this process did
within `TRIM_INTERVAL_S`. Returns True when it trimmed; False when not due, when another
thread is at it, or off glibc. Never raises."""


SMALLEST_SENSIBLE_CHILD_CAP_KIB = 256 * 1024
"""Below this a prefork child's cap is under what a fresh child holds (about 130 MiB) plus a
store's working set: every task or nearly would get a new child, each a wait of seconds."""


def child_cap_warning(cap_kib: int) -> str | None:
    """What to warn of a WORKER_MAX_MEMORY_PER_CHILD of `cap_kib` KiB (0: no cap), or None."""
    if 0 < cap_kib < SMALLEST_SENSIBLE_CHILD_CAP_KIB:
        return (
            f"WORKER_MAX_MEMORY_PER_CHILD={cap_kib} KiB is below a working pool child's size "
            f"(about 130 MiB, more during a store): prefork children will be replaced after nearly "
            f"every task, each replacement a wait of seconds; {SMALLEST_SENSIBLE_CHILD_CAP_KIB} KiB or "
            "more is sensible, 0 turns the cap off"
        )
    return None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes for this process (and the processes
    it forks), which stops glibc from raising it. Returns False where the C library is not
    glibc or refused the setting (nothing is changed then)."""
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = int(mallopt(M_MMAP_THRESHOLD, threshold)) == 1
    if not done:
        log.warning("glibc refused the mmap threshold", extra={"threshold": threshold})
    return done
