"""The receiver on a background thread with its own event loop: for ``syncd run``'s quick
start and for tests, which start it on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

from syncd.server.drain import stop_gracefully
from syncd.server.hooks import ServerHooks
from syncd.server.listen import display_url, start_site
from syncd.server.settings import ReceiverSettings

STOP_GRACE = 2.0  # requests in flight get this long to finish, then are cut off (parts stay resumable)


class ReceiverStartError(RuntimeError):
    """The receiver could not start (address in use, root not usable...)."""


class EmbeddedReceiver:
    """``start()`` returns once the socket listens; ``stop()`` stops listening, lets requests
    in flight finish (up to ``stop_grace`` seconds), shuts down and joins."""

    def __init__(
        self, settings: ReceiverSettings, *, hooks: ServerHooks | None = None, stop_grace: float = STOP_GRACE
    ) -> None:
        self.settings = settings
        self._hooks = hooks
        self._stop_grace = stop_grace
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the receiver is not started")
        return display_url(self.settings.host, self.port, self.settings.base_path) + "chunked_upload/"

    def start(self) -> EmbeddedReceiver:
        if self._thread is not None:
            raise RuntimeError("the receiver is already started")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="syncd-receiver", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            error = self._error
            where = f"{self.settings.host}:{self.settings.port}"
            raise ReceiverStartError(f"cannot start the receiver on {where}: {error}") from error
        return self

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended on its own
                loop.call_soon_threadsafe(stop.set)
        thread.join()
        self._thread = None
        self.port = None

    def __enter__(self) -> EmbeddedReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start() when it happens before ready
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                raise

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner, self.port = await start_site(self.settings, hooks=self._hooks, access_log=False)
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await stop_gracefully(runner, grace=self._stop_grace)
