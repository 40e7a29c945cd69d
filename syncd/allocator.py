"""glibc malloc settings, one profile per kind of process (elsewhere nothing changes:
only glibc has ``mallopt``). Call before starting threads.

- The daemon (``tune_for_daemon``): with a dozen threads, glibc gives threads arenas of
  their own and keeps freed 1 MiB read buffers in them (its mmap threshold rises to the
  size of the first such buffer freed), so RSS grows by megabytes per thread that ever read
  a part. Two arenas, and buffers of 256 KiB or more always mapped and unmapped, keep the
  daemon's RSS near what it was with two threads (bench/soak.py). The embedded receiver
  runs in the daemon's process and shares these.
- ``syncd serve`` (``tune_for_receiver``): a part arrives as 256 KiB buffers that live for a
  few milliseconds. With glibc's defaults the heap top is trimmed as soon as 128 KiB-odd lie
  free there (the threshold moves with the sizes seen) and grown again by the next buffers,
  so every page is faulted in afresh: 30,000-72,000 minor faults per GiB received, against
  about 2,000 with this profile (bench/receiver.py, 3 rounds). Buffers of 4 MiB and more
  still get their own mapping, and up to 32 MiB of free heap is kept for reuse.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("syncd")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

DAEMON = ((M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 256 * 1024))
RECEIVER = ((M_MMAP_THRESHOLD, 4 * 1024 * 1024), (M_TRIM_THRESHOLD, 32 * 1024 * 1024))


def tune_for_daemon() -> bool:
    """True if the settings were taken."""
    return _apply(DAEMON, "RSS may grow with the number of threads")


def tune_for_receiver() -> bool:
    """True if the settings were taken."""
    return _apply(RECEIVER, "receiving may fault in more pages")


def _apply(settings: tuple[tuple[int, int], ...], otherwise: str) -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = all([mallopt(param, value) == 1 for param, value in settings])
    if not ok:
        log.debug("mallopt refused the allocator settings; %s", otherwise)
    return ok
