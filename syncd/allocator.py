"""glibc malloc settings, one profile per kind of process (elsewhere nothing changes:
only glibc has ``mallopt``). Call before starting threads.

- The uploading side, ``syncd run`` and ``syncd upload`` (``tune_for_uploads``): with a
  dozen threads, glibc gives threads arenas of their own and keeps freed read buffers in
  them (its mmap threshold rises to the size of the first such buffer freed), so RSS grows
  by megabytes per thread that ever read a part: two arenas keep the daemon's RSS near what
  it was with two threads (bench/soak.py). A part is read in 256 KiB blocks (a bytes object
  a little larger) that live for milliseconds: mapped and unmapped each (a threshold of
  256 KiB, the daemon's until now), or with the heap top trimmed and grown again (glibc's
  defaults), every block is faulted in afresh: ``syncd upload`` of 1 GiB took 65,000-96,000
  minor faults. Below a 512 KiB threshold and with up to 4 MiB of free heap kept, blocks
  reuse warm memory: 7,700 faults and 0.30-0.38 s of system time instead of 0.54-0.87;
  the daemon's CPU for a 1 GiB file 1.33 -> 0.93 s. The cost is the free heap kept: peak
  RSS +0.4-0.8 MiB for one big file; a daemon under 16 files a second sat 2-3 MiB higher
  (55.2 vs 52.9 MiB at minute 7), growing at the same pace. The embedded receiver runs in
  the daemon's process and shares these.
- ``syncd serve`` (``tune_for_receiver``): a part arrives as 256 KiB buffers that live for a
  few milliseconds. With glibc's defaults the heap top is trimmed as soon as 128 KiB-odd lie
  free there (the threshold moves with the sizes seen) and grown again by the next buffers,
  so every page is faulted in afresh: 30,000-72,000 minor faults per GiB received, against
  about 2,000 with this profile (bench/receiver.py, 3 rounds). Buffers of 4 MiB and more
  still get their own mapping, and up to 32 MiB of free heap is kept for reuse.

And one table of the interpreter's (``grow_interned_strings``, the daemon's), each thread's
cache of freed blocks filled when it starts (``fill_thread_caches``, the daemon's), and the
daemon's regular hand-back of free heap pages (``release_free_memory``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("syncd")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

UPLOADS = ((M_ARENA_MAX, 2), (M_MMAP_THRESHOLD, 512 * 1024), (M_TRIM_THRESHOLD, 4 * 1024 * 1024))
RECEIVER = ((M_MMAP_THRESHOLD, 4 * 1024 * 1024), (M_TRIM_THRESHOLD, 32 * 1024 * 1024))


def tune_for_uploads() -> bool:
    """True if the settings were taken."""
    return _apply(UPLOADS, "RSS may grow with the number of threads")


def tune_for_receiver() -> bool:
    """True if the settings were taken."""
    return _apply(RECEIVER, "receiving may fault in more pages")


@functools.cache
def _libc(name: str, *argtypes: type, restype: type = ctypes.c_int) -> Callable[..., int] | None:
    """The C library's function ``name``, or None where there is none."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = restype
    return function


def _apply(settings: tuple[tuple[int, int], ...], otherwise: str) -> bool:
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    ok = all([mallopt(param, value) == 1 for param, value in settings])
    if not ok:
        log.debug("mallopt refused the allocator settings; %s", otherwise)
    return ok


INTERN_NAMES = 100_000
"""more names than the table of interned strings holds before it is rebuilt (two thirds of
2**17 slots), so the rebuild happens in ``grow_interned_strings`` whatever the start-up left"""


def grow_interned_strings() -> None:
    """Give the interpreter's table of interned strings now the size it would reach later.

    pathlib (Python 3.11's, at least) interns every component of every path it parses, so each
    new file name is put into that table and leaves a free slot behind when its last
    ``Path`` goes. Once enough of those have come and gone (about 7,000 files into a
    daemon's life), CPython rebuilds the table for what is alive, at twice its start-up
    size (0.9 MiB more), and at that size from then on. Interning (and dropping) as many
    names at start-up moves that one-time step to before the daemon says it is ready, so
    its RSS does not step up hours later. Call after the imports and backends are loaded.
    """
    for i in range(INTERN_NAMES):
        sys.intern(f"syncd-{i}")


RELEASE_EVERY = 60.0
"""seconds between two ``release_free_memory`` calls of the daemon"""


def release_free_memory() -> bool:
    """Hands the free pages inside glibc's heaps back to the system (``malloc_trim(0)``);
    False where there is no such call.

    The trim threshold above only ever returns the top of a heap, so free memory between
    live blocks stays resident however long it is free. In a daemon taking 16 files a
    second that was 3-5 MiB (mallinfo2's free bytes), growing slowly, while the
    interpreter's own memory (tracemalloc) stayed flat. A call took 0.3-0.7 ms and gave
    back 2.6-3.0 MiB; the pages are faulted in again only if the heap needs them.
    """
    trim = _libc("malloc_trim", ctypes.c_size_t)
    if trim is None:
        return False
    trim(0)
    return True


THREAD_CACHE_SIZES = range(24, 1033, 16)
"""one request size per bin of glibc's per-thread cache (tcache: 64 bins, chunks of 32 to
1040 bytes)"""
THREAD_CACHE_COUNT = 7
"""blocks a tcache bin holds (glibc's default; only ``GLIBC_TUNABLES`` changes it)"""


def fill_thread_cache() -> bool:
    """Fills the calling thread's tcache: every bin gets its most blocks now, where rare sizes
    would fill it over tens of minutes. False where there is no glibc malloc.

    Each thread keeps up to 7 freed blocks of each small size for its own next calls, and
    malloc counts them as in use. A bin fills only when its thread frees blocks of that size,
    and some sizes come rarely, so a daemon's heap grew by 60-120 bytes a file for tens of
    minutes (mallinfo2's bytes in use, while tracemalloc and SQLite's own count stayed flat;
    with ``GLIBC_TUNABLES=glibc.malloc.tcache_count=0`` it stayed flat too). Filled at the
    start, the bins are at their bound from the first minute: about 240 KiB a thread. Only
    ``GLIBC_TUNABLES`` can shrink the bins, and only before the process starts.
    """
    malloc = _libc("malloc", ctypes.c_size_t, restype=ctypes.c_void_p)
    free = _libc("free", ctypes.c_void_p, restype=None)
    if malloc is None or free is None or _libc("gnu_get_libc_version", restype=ctypes.c_char_p) is None:
        return False
    for size in THREAD_CACHE_SIZES:
        blocks = [malloc(size) for _ in range(THREAD_CACHE_COUNT)]
        for block in blocks:
            free(block)
    return True


def fill_thread_caches() -> Callable[[], None]:
    """``fill_thread_cache`` in this thread now and in every thread started from now on, as
    its first step (through ``threading.setprofile``; the hook then hands the thread whatever
    profile hook was there before). Returns the call that ends it. For a long-running process
    whose threads live long: a short-lived thread pays 0.2-0.5 ms and gives its cache back
    when it ends."""
    fill_thread_cache()
    previous = threading.getprofile()

    def fill_on_first_call(frame: object, event: str, arg: object) -> None:
        sys.setprofile(previous)
        fill_thread_cache()

    threading.setprofile(fill_on_first_call)
    return lambda: threading.setprofile(previous)
