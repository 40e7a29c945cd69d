"""glibc malloc profiles: each is taken, and a process still allocates under it."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
@pytest.mark.parametrize("profile", ["tune_for_daemon", "tune_for_receiver"])
def test_glibc_takes_the_profile_and_the_process_still_allocates(profile) -> None:
    # In a child: the settings are process-wide.
    code = (
        f"from syncd.allocator import {profile}\n"
        f"assert {profile}() is True\n"
        "blocks = [bytes(256 * 1024) for _ in range(64)] + [bytes(8 << 20)]\n"
        "assert sum(map(len, blocks)) == 64 * 256 * 1024 + (8 << 20)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
