"""Where glibc puts large blocks: on mmap while a long-lived store of many tensors grows, on the
heap while a training loop churns through large temporaries.

glibc raises its mmap threshold every time a large block allocated by mmap is freed (up to
32 MiB), after which such blocks come from the heap instead. A cache of thousands of
quarter-megabyte encodings, built between freed temporaries of a few megabytes (decoded photos,
network inputs and outputs), then pins heap pages that can never be returned: resident memory
grows by several times the size of what was stored. A low fixed threshold keeps large blocks on
mmap, returned to the system when freed.

That same low threshold is wrong for what follows: a training step allocates and frees tens of
megabytes of activations and gradients, and with every one of them mapped and unmapped the step
spends much of its time in page faults. So :func:`growing_store` lowers the threshold only while
the store grows and afterwards leaves large blocks on the heap, kept for reuse.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from typing import Iterator

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
STORE_THRESHOLD = 128 * 1024
# glibc's own ceiling for the adaptive threshold on 64-bit systems, and its trim threshold there.
WORK_THRESHOLD = 32 * 1024 * 1024
WORK_TRIM = 2 * WORK_THRESHOLD

_mallopt = None


def _libc_mallopt():
    """glibc's mallopt, or None where the C library is not glibc (no adaptive threshold)."""
    global _mallopt
    if _mallopt is None:
        _mallopt = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                fn = libc.mallopt
            except (OSError, AttributeError):
                return None
            fn.argtypes = [ctypes.c_int, ctypes.c_int]
            fn.restype = ctypes.c_int
            _mallopt = fn
    return _mallopt or None


def set_thresholds(mmap: int, trim: int | None = None) -> bool:
    """Fix glibc's mmap (and trim) threshold in bytes for this process; False where there is
    no glibc to tell."""
    fn = _libc_mallopt()
    if fn is None:
        return False
    ok = bool(fn(_M_MMAP_THRESHOLD, int(mmap)))
    if trim is not None:
        ok = bool(fn(_M_TRIM_THRESHOLD, int(trim))) and ok
    return ok


@contextlib.contextmanager
def growing_store() -> Iterator[bool]:
    """Large blocks on mmap for the block (a long-lived store grows), then on the heap, kept for
    reuse (the temporaries of the work that reads the store). Yields whether glibc was told."""
    ok = set_thresholds(STORE_THRESHOLD)
    try:
        yield ok
    finally:
        if ok:
            set_thresholds(WORK_THRESHOLD, WORK_TRIM)
