"""Answering before the request body is all read."""

from __future__ import annotations

import contextlib

from aiohttp import web


async def answer_then_hang_up(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Sends ``response`` and closes the connection if the client is still sending a body
    that will not be read, rather than draining gigabytes first."""
    if request.body_exists and not request.content.is_eof():
        response.force_close()
        with contextlib.suppress(ConnectionError):  # it may have hung up first
            await response.prepare(request)
            await response.write_eof()
        request.protocol.force_close()
    return response
