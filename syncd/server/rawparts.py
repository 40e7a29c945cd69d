"""Raw part bodies: ``PUT {session url}`` with ``Content-Type: application/offset+octet-stream``
(tus's media type) and the usual ``Content-Range``; the body is the part's bytes, nothing
else. Only for parts after the first: the session already knows the file's name.

Every JSON answer carries ``Syncd-Raw-Parts: 1`` so a client knows it may send them;
synapse-sdk and drf-chunked-upload clients never look and keep sending forms.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from syncd.server.errors import ApiError
from syncd.server.writer import ReadChunk

MEDIA_TYPE = "application/offset+octet-stream"
ADVERTISE_HEADER = "Syncd-Raw-Parts"


def chunk_reader(request: web.Request, *, timeout: float) -> ReadChunk:
    """``read_chunk`` over the body as it arrived: each buffer aiohttp received, uncopied
    (``readany`` would join what is buffered); 408 when the body stalls."""
    content = request.content

    async def read() -> bytes:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data, _end_of_http_chunk = await content.readchunk()
                    if data or content.at_eof():
                        return data
        except TimeoutError:
            raise ApiError(408, f"Request body stalled: nothing received for {timeout:g}s") from None

    return read


async def advertise(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every JSON answer says raw parts are accepted."""
    if response.content_type == "application/json":
        response.headers[ADVERTISE_HEADER] = "1"
