"""An aiohttp server on 127.0.0.1 (on a port the OS chooses) running on a thread of its own,
with one client session to forward requests with: what the test proxies share. A subclass
answers each request in ``_handle`` and may shape the client session or the server."""

from __future__ import annotations

import asyncio
import threading
from typing import Self

import aiohttp
from aiohttp import web


class ProxyThread:
    name = "proxy"

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._client: aiohttp.ClientSession | None = None
        self.port: int | None = None

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or self.port is None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"{self.name} did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop already ended
        thread.join(15)
        if thread.is_alive():
            raise RuntimeError(f"{self.name} did not stop within 15s")
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the event loop thread ------------------------------------------------------------

    def _client_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(auto_decompress=False,
                                     skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))

    def _server(self) -> web.Server:
        return web.Server(self._handle, access_log=None)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._client = self._client_session()
        runner = web.ServerRunner(self._server(), shutdown_timeout=0.5)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # port 0: what the OS chose
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._client.close()
