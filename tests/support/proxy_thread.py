"""An aiohttp server on 127.0.0.1 (on a port the OS chooses) running on a thread of its own,
with one client session to forward requests with: what the test proxies share (the thread's
lifecycle is the embedded receiver's, ``syncd.server.loopthread``). A subclass
answers each request in ``_handle`` and may shape the client session or the server."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from syncd.server.loopthread import LoopThread


class ProxyThread(LoopThread):
    name = "proxy"
    start_timeout = 10.0
    stop_timeout = 15.0

    def __init__(self) -> None:
        super().__init__()
        self.thread_name = self.name.replace(" ", "-")
        self._client: aiohttp.ClientSession | None = None
        self.port: int | None = None

    # --- the event loop thread ------------------------------------------------------------

    def _client_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(auto_decompress=False,
                                     skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))

    def _server(self) -> web.Server:
        return web.Server(self._handle, access_log=None)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raise NotImplementedError

    async def _serve(self, stop: asyncio.Event) -> None:
        self._client = self._client_session()
        runner = web.ServerRunner(self._server(), shutdown_timeout=0.5)
        try:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # port 0: what the OS chose
            self._ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()
            await self._client.close()
