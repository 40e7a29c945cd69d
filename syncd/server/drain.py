"""Stopping without cutting off requests in flight.

aiohttp's own shutdown closes every connection first and from then on drops whatever
arrives on them, so a part still being received can only time out. Instead: stop
listening, answer requests that start from now on with 503 (``Retry-After``; the client
retries elsewhere or later), let the ones already running finish within a grace, and
only then let aiohttp close what is left.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from syncd.server.auth import Handler
from syncd.server.errors import ApiError
from syncd.server.replies import answer_then_hang_up

log = logging.getLogger("syncd.server")

SHUTTING_DOWN = "The receiver is shutting down; retry shortly"
_RETRY = {"Retry-After": "5"}


class Drain:
    """Counts requests in flight; once ``begin`` is called, refuses new ones."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.draining:
            response = ApiError(503, SHUTTING_DOWN, headers=_RETRY).response()
            response.force_close()
            return await answer_then_hang_up(request, response)
        self._in_flight += 1
        self._idle.clear()
        try:
            response = await handler(request)
            if self.draining and not response.prepared:
                response.force_close()  # no next request on this connection
            return response
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    def begin(self) -> None:
        self.draining = True

    async def wait(self, timeout: float) -> bool:
        """Whether every request in flight finished within ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


DRAIN = web.AppKey("drain", Drain)


async def stop_gracefully(runner: web.AppRunner, *, grace: float) -> None:
    """Stops listening, lets requests in flight finish (up to ``grace`` seconds), cleans up."""
    for site in list(runner.sites):
        await site.stop()
    drain = runner.app[DRAIN]
    drain.begin()
    if drain.in_flight:
        log.info("waiting up to %gs for %d request(s) in flight", grace, drain.in_flight)
        if not await drain.wait(grace):
            log.warning(
                "%d request(s) still in flight after %gs: cut off (their sessions resume)",
                drain.in_flight,
                grace,
            )
    await runner.cleanup()
