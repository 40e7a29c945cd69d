"""The receiver's event loop: uvloop's where it is installed (a dependency on Linux and
macOS), else asyncio's own.

uvloop's transports and its thread-safe callbacks are written in C: with it, ``syncd
serve`` spends less CPU per request, which is what small files cost (BENCHMARKS.md,
section 12); a big part's bytes go through the same reads and writes either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop of ``new_event_loop``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
