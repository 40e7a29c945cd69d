"""The C allocator's settings for the daemon: with a dozen threads, glibc gives threads
arenas of their own and keeps freed 1 MiB read buffers in them (its mmap threshold rises to
the size of the first such buffer freed), so RSS grows by megabytes per thread that ever
read a part. Two arenas, and buffers of 256 KiB or more always mapped and unmapped, keep the
daemon's RSS near what it was with two threads (bench/soak.py).

Only glibc has ``mallopt``; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("syncd")

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD = 256 * 1024


def tune_allocator() -> bool:
    """True if the settings were taken. Call before starting threads."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    ok = mallopt(M_ARENA_MAX, ARENAS) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if not ok:
        log.debug("mallopt refused the arena and mmap settings; RSS may grow with the number of threads")
    return ok
