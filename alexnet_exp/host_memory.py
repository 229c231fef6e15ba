"""Keep freed host memory in the process, so that CPU training does not page-fault its activations in every step.

PyTorch's CPU allocator hands every tensor to malloc and back. glibc returns large freed blocks to the kernel
(blocks over its mmap threshold are unmapped; free space at the top of the heap over the trim threshold is
trimmed), so the next step's activations of the same size arrive as fresh pages that the kernel faults in and
zeroes one by one. On a 2-core CPU keeping them saves 4-11% of an `alexnet_cifar` training step (13-20% with an
earlier LRN that made more temporaries; benchmarks/RESULTS.md). Serving every block from the heap and never trimming
it keeps the process at its peak footprint instead: for a training process, the right trade.
"""
from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse (once per process). False where that is not possible:
    not glibc (macOS, Windows, musl), or mallopt refused."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if not GLIBC:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # Never trim the heap top; no mmap'd blocks, which are returned at every free (the heap serves them).
    return bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1)) and bool(mallopt(M_MMAP_MAX, 0))
