"""The C allocator's settings for a training process: freed memory is kept for reuse, not handed back.

A training step allocates and frees tens of megabytes of tensors. glibc serves each block above its mmap
threshold with fresh pages from the kernel and returns them when freed, so every step faults in and zero-fills
the same memory again: ~2,100-3,000 page faults a step at the default CPU batch, 2-4 % of the step. Raising the
threshold to glibc's ceiling and not trimming the heap lets the next step reuse those pages (what jemalloc and
tcmalloc do; PyTorch's CPU performance guide suggests them). The process keeps its peak heap until it exits:
the right trade for the processes that train (``twotower train``, ``tune``, ``deploy``), which call this; a
process that goes on serving after training (``twotower demo``) does not.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_CEILING = 32 * 1024 * 1024  # the largest mmap threshold glibc accepts on 64-bit systems
_NO_TRIM = 1 << 30  # free space at the top of the heap kept up to 1 GiB


def reuse_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for the process; False (nothing changed) where the C library has
    no ``mallopt`` (macOS, musl) or refuses the setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_CEILING)) and bool(mallopt(_M_TRIM_THRESHOLD, _NO_TRIM))
