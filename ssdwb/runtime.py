"""Process-level settings for CPU runs.

``tune_cpu_allocator``: PyTorch's CPU tensors come from glibc ``malloc``. Blocks above glibc's
mmap threshold (128 KiB at start, adapting up to 32 MiB) are fresh ``mmap`` pages every time, so
every large temporary (an 8732-prior IoU matrix, a conv activation) pays page faults on first
touch. Raising the mmap and trim thresholds keeps freed memory in the heap for reuse: on this
project's 2-core machine the IoU of 496 GT boxes with the 8732 priors went from ~37 ms to ~6 ms
(measured with the same settings through ``MALLOC_MMAP_THRESHOLD_``; ``bench/bench_core.py``
applies it to both sides).
The same effect as ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` in the environment, or
preloading jemalloc/tcmalloc, as Intel's PyTorch CPU tuning guides suggest. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_done = False


def tune_cpu_allocator(threshold: int = 1 << 30) -> bool:
    """Keeps blocks below ``threshold`` bytes in the heap; returns whether glibc accepted it."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(opt, val) == 1 for opt, val in (
        (_M_MMAP_THRESHOLD, min(threshold, 1 << 30)),
        (_M_TRIM_THRESHOLD, min(threshold, 1 << 30)),
        (_M_TOP_PAD, 64 << 20),
    ))
    _done = ok
    return ok
