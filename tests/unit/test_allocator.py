"""glibc malloc profiles: each is taken, and a process still allocates under it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from syncd.allocator import TUNABLES, environment_without_thread_caches


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("profile", ["tune_for_uploads", "tune_for_receiver"])
def test_glibc_takes_the_profile_and_the_process_still_allocates(profile) -> None:
    # In a child: the settings are process-wide.
    code = (
        f"from syncd.allocator import {profile}\n"
        f"assert {profile}() is True\n"
        "blocks = [bytes(256 * 1024) for _ in range(64)] + [bytes(8 << 20)]\n"
        "assert sum(map(len, blocks)) == 64 * 256 * 1024 + (8 << 20)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


GROWTH_PROBE = """
import sys, tracemalloc
from pathlib import Path
import syncd.daemon  # the daemon's imports: what is interned at its start
from syncd.allocator import grow_interned_strings
tracemalloc.start()
if sys.argv[1] == "grown":
    grow_interned_strings()
before = tracemalloc.get_traced_memory()[0]
drop = Path("/drop/watch")
for i in range(60_000):  # a long-running daemon's new file names
    (drop / f"file-{i}.bin").name
print(tracemalloc.get_traced_memory()[0] - before)
"""


@pytest.mark.parametrize("start", ["as_is", "grown"])
def test_new_file_names_do_not_grow_the_interned_strings_after_start_up(start) -> None:
    """Without ``grow_interned_strings`` the table is rebuilt at twice its size somewhere in
    those names (the new table is traced, the old one, from before tracing, is not); after
    it, a rebuild swaps two traced tables of one size."""
    out = subprocess.run([sys.executable, "-c", GROWTH_PROBE, start], check=True, timeout=60,
                         capture_output=True, text=True).stdout
    grew = int(out)
    if start == "grown":
        assert grew < 256 * 1024
    else:
        assert grew > 512 * 1024


RELEASE_PROBE = """
import os
import sys
from syncd.allocator import release_free_memory, tune_for_uploads

def rss_anon_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

tune_for_uploads()  # the daemon's profile
blocks = [bytearray(2048) for _ in range(32 * 1024)]  # 64 MiB of heap blocks, above pymalloc's sizes
kept = blocks[::64] + [blocks[-1]]  # live blocks all through the heap, its top among them
del blocks
before = rss_anon_kib()
assert release_free_memory() is True
print(before - rss_anon_kib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_memory_hands_back_free_pages_between_live_blocks() -> None:
    out = subprocess.run([sys.executable, "-c", RELEASE_PROBE], check=True, timeout=60, capture_output=True,
                         text=True)
    released_kib = int(out.stdout)
    assert released_kib > 32 * 1024  # of the ~63 MiB freed between live blocks



CACHE_PROBE = """
import ctypes, threading

libc = ctypes.CDLL(None)

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
grew = []

def work():  # a thread's life: blocks of every small size come and go
    before = libc.mallinfo2().uordblks
    for size in range(24, 1033, 8):
        blocks = [libc.malloc(size) for _ in range(10)]
        for block in blocks:
            libc.free(block)
    grew.append(libc.mallinfo2().uordblks - before)

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(grew[0])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the per-thread cache is glibc's")
@pytest.mark.parametrize("caches", ["on", "off"])
def test_without_thread_caches_a_threads_freed_blocks_do_not_stay_counted_in_use(caches) -> None:
    """Freed blocks kept in a thread's cache count as in use: ~240 KB of heap that no live
    object holds, filled over a thread's life; with the environment syncd run starts again
    with, none."""
    environment = {k: v for k, v in os.environ.items() if k != TUNABLES}
    if caches == "off":
        environment = environment_without_thread_caches(environment)
    out = subprocess.run([sys.executable, "-c", CACHE_PROBE], check=True, timeout=60, capture_output=True,
                         text=True, env=environment)
    grew = int(out.stdout)
    if caches == "off":
        assert grew < 16 * 1024
    else:
        assert grew > 128 * 1024


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="GLIBC_TUNABLES is glibc's")
def test_the_environment_adds_the_setting_to_other_tunables_and_leaves_an_operators_own() -> None:
    assert environment_without_thread_caches({"A": "1"}) == {"A": "1", TUNABLES: "glibc.malloc.tcache_count=0"}
    assert environment_without_thread_caches({TUNABLES: "glibc.malloc.arena_max=2"}) == \
        {TUNABLES: "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"}
    assert environment_without_thread_caches({TUNABLES: "glibc.malloc.tcache_count=3"}) is None
