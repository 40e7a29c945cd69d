"""A coroutine that serves on a thread of its own, with its own event loop, until stopped:
the embedded receiver (``embedded``) and the test suite's proxies share this lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

from syncd.server import eventloop


class LoopThread:
    """``start()`` returns once ``_serve`` called ``self._ready.set()`` (or raises what
    ``_serve`` raised before that, through ``_start_error``); ``stop()`` sets the event
    ``_serve`` waits on and joins the thread."""

    thread_name = "loop-thread"
    start_timeout: float | None = None
    stop_timeout: float | None = None

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{self.thread_name} is already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout):
            self.stop()
            raise RuntimeError(f"{self.thread_name} did not start within {self.start_timeout}s")
        if self._error is not None:
            self._thread.join(self.stop_timeout)
            self._thread = None
            raise self._start_error(self._error) from self._error
        return self

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended on its own
                loop.call_soon_threadsafe(stop.set)
        thread.join(self.stop_timeout)
        if thread.is_alive():
            raise RuntimeError(f"{self.thread_name} did not stop within {self.stop_timeout}s")
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_error(self, error: BaseException) -> BaseException:
        """What ``start()`` raises for an error before the thread was ready."""
        return RuntimeError(f"{self.thread_name} did not start: {error!r}")

    async def _serve(self, stop: asyncio.Event) -> None:
        """Serve, ``self._ready.set()`` once serving, return when ``stop`` is set."""
        raise NotImplementedError

    def _run(self) -> None:
        try:
            eventloop.run(self._main())
        except BaseException as exc:  # reported by start() when it happens before ready
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                raise

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self._serve(self._stop)
