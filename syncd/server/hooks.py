"""What the receiver takes from the operating system, injectable for tests.

Tests swap the clock (expiry), the free space (507) and the write call (a disk that
fills up mid-part) without touching a real disk or waiting.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from syncd.server.safefs import start_writeback


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class ServerHooks:
    clock: Callable[[], float] = time.time
    free_bytes: Callable[[Path], int] = _free_bytes
    pwritev: Callable[[int, Sequence[bytes | memoryview], int], int] = os.pwritev
    start_writeback: Callable[[int, int, int], None] = start_writeback
    """(fd, offset, length): start writing what a batch wrote to disk, without waiting"""
    body_timeout: float = 60.0
    """a request body that sends nothing for this long is answered 408"""
