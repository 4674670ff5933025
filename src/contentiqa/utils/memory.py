"""Keeping a long-lived store of many tensors from fragmenting the C heap.

glibc raises its mmap threshold every time a large block allocated by mmap is freed (up to
32 MiB), after which such blocks come from the heap instead. A cache of thousands of
quarter-megabyte encodings, built between freed temporaries of a few megabytes (decoded photos,
network inputs and outputs), then pins heap pages that can never be returned: measured here,
resident memory grew by about ten times the size of what was stored. A fixed threshold keeps
large blocks on mmap, returned to the system when freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_done = False


def fix_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process (once); False where
    the C library is not glibc, which has no such adaptive threshold to fix."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    return _done
