from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tuning_malloc_takes_and_the_process_still_allocates() -> None:
    # In a child: the settings are process-wide.
    code = (
        "from syncd.server.memory import tune_malloc\n"
        "assert tune_malloc()\n"
        "blocks = [bytes(256 * 1024) for _ in range(64)] + [bytes(8 << 20)]\n"
        "assert sum(map(len, blocks)) == 64 * 256 * 1024 + (8 << 20)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

