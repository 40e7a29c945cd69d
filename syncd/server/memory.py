"""glibc malloc settings for the receiving process.

A part arrives as 256 KiB buffers that live for a few milliseconds. With glibc's
defaults the heap top is trimmed as soon as 128 KiB-odd lie free there (the threshold
moves with the sizes seen) and grown again by the next buffers, so every page is
faulted in afresh: 30,000-72,000 minor faults per GiB received, against about 2,000 with
the settings below (bench/receiver.py, 3 rounds). Buffers of 4 MiB and more still get
their own mapping, and up to 32 MiB of free heap is kept for reuse.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 32 * 1024 * 1024
MMAP_THRESHOLD = 4 * 1024 * 1024


def tune_malloc() -> bool:
    """Applies the settings; False where the C library is not glibc (nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
