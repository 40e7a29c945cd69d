"""The receiver's event loop: uvloop's when it is installed, asyncio's otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from syncd.server import eventloop


async def loop_type() -> type:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


def test_the_receiver_runs_on_uvloop_where_it_is_installed():
    uvloop = pytest.importorskip("uvloop")
    assert eventloop.run(loop_type()) is uvloop.Loop


def test_without_uvloop_it_runs_on_asyncios_own_loop(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    kind = eventloop.run(loop_type())
    assert issubclass(kind, asyncio.BaseEventLoop) and kind.__module__.startswith("asyncio")
