"""glibc malloc profiles: each is taken, and a process still allocates under it."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


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
