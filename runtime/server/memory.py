"""Handing freed memory back to the operating system after large requests.

glibc keeps what a process frees in its heaps for reuse; after a burst of 10-MB bodies
the server's resident size would stay hundreds of MB above its working set until other
allocations happen to reuse it. ``malloc_trim(0)`` returns the free pages (a few
milliseconds). Elsewhere (musl, macOS) it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim() -> bool:
    """Return free heap memory to the system; False where the C library cannot."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)  # ctypes releases the GIL for the call
    return True
