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

And one table of the interpreter's (``grow_interned_strings``, the daemon's), glibc's
per-thread caches turned off for the daemon (``restart_without_thread_caches``), and the
daemon's regular hand-back of free heap pages (``release_free_memory``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping

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


TUNABLES = "GLIBC_TUNABLES"
THREAD_CACHES_OFF = "glibc.malloc.tcache_count=0"


def environment_without_thread_caches(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with glibc's per-thread caches of freed blocks turned off, or None where
    there is nothing to do: no glibc, or ``GLIBC_TUNABLES`` already sets them."""
    current = environ.get(TUNABLES, "")
    if "glibc.malloc.tcache_count=" in current or _libc("gnu_get_libc_version", restype=ctypes.c_char_p) is None:
        return None
    environment = dict(environ)
    environment[TUNABLES] = f"{current}:{THREAD_CACHES_OFF}" if current else THREAD_CACHES_OFF
    return environment


def restart_without_thread_caches() -> None:
    """Executes this program again, in this process, with glibc's per-thread caches off
    (``GLIBC_TUNABLES``, which glibc reads only when a program starts); returns only where
    there is nothing to do or the exec fails. Call first, before any thread or file is open.

    Each thread keeps up to 7 freed blocks of each of 64 small sizes for its own next calls
    (tcache), and malloc counts them as in use. A bin fills only when its thread frees
    blocks of that size, and some sizes come rarely, so a daemon's heap in use grew by
    60-120 bytes a file for its first tens of minutes, while tracemalloc and SQLite's own
    count stayed flat. Filling every thread's bins at its start stopped that, but the
    blocks they hold keep free memory from merging, and RSS wandered by a MiB. Without
    the caches, the heap in use and RSS stayed flat for an hour (+0.04 MiB from minute 10
    to 60), 2 MiB lower (BENCHMARKS section 17). Its programs (ffmpeg) inherit the setting.
    """
    environment = environment_without_thread_caches(os.environ)
    if environment is None or not sys.executable or os.getuid() != os.geteuid() or os.getgid() != os.getegid():
        return  # (a set-id program's GLIBC_TUNABLES may be cut: it would start again and again)
    try:
        os.execve(sys.executable, sys.orig_argv, environment)
    except OSError as exc:
        log.debug("cannot start again without glibc's per-thread caches: %s", exc)
