"""The receiver on a background thread with its own event loop: for ``syncd run``'s quick
start and for tests, which start it on port 0."""

from __future__ import annotations

import asyncio

from syncd.server.drain import stop_gracefully
from syncd.server.hooks import ServerHooks
from syncd.server.listen import display_url, start_site
from syncd.server.loopthread import LoopThread
from syncd.server.settings import ReceiverSettings

STOP_GRACE = 2.0  # requests in flight get this long to finish, then are cut off (parts stay resumable)


class ReceiverStartError(RuntimeError):
    """The receiver could not start (address in use, root not usable...)."""


class EmbeddedReceiver(LoopThread):
    """``start()`` returns once the socket listens; ``stop()`` stops listening, lets requests
    in flight finish (up to ``stop_grace`` seconds), shuts down and joins."""

    thread_name = "syncd-receiver"

    def __init__(
        self, settings: ReceiverSettings, *, hooks: ServerHooks | None = None, stop_grace: float = STOP_GRACE
    ) -> None:
        super().__init__()
        self.settings = settings
        self._hooks = hooks
        self._stop_grace = stop_grace
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the receiver is not started")
        return display_url(self.settings.host, self.port, self.settings.base_path) + "chunked_upload/"

    def stop(self) -> None:
        super().stop()
        self.port = None

    def _start_error(self, error: BaseException) -> BaseException:
        where = f"{self.settings.host}:{self.settings.port}"
        return ReceiverStartError(f"cannot start the receiver on {where}: {error}")

    async def _serve(self, stop: asyncio.Event) -> None:
        runner, self.port = await start_site(self.settings, hooks=self._hooks, access_log=False)
        try:
            self._ready.set()
            await stop.wait()
        finally:
            await stop_gracefully(runner, grace=self._stop_grace)
