"""Reading multipart/form-data one part at a time, never holding a file part in memory.

Fields may come in any order (requests puts ``data`` before ``files``; a
MultipartEncoder keeps the caller's order), so callers get the parts as they come.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import BodyPartReader, MultipartReader, web

from syncd.server.errors import ApiError
from syncd.server.writer import ReadChunk

READ_CHUNK = 256 * 1024  # measured: larger reads stop paying off around here
TEXT_FIELD_LIMIT = 16 * 1024
OTHER_FIELD_LIMIT = 1024 * 1024
MALFORMED = "Malformed multipart/form-data body"
NO_FILE = "No chunk file was submitted"


async def iter_parts(request: web.Request, *, timeout: float) -> AsyncIterator[BodyPartReader]:
    if request.content_type != "multipart/form-data":
        raise ApiError(400, NO_FILE)  # what drf-chunked-upload answers to any other body
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise ApiError(400, f"{MALFORMED}: {exc}") from None
    while True:
        try:
            async with asyncio.timeout(timeout):
                part = await reader.next()
        except TimeoutError:
            raise ApiError(408, _stalled(timeout)) from None
        except ValueError as exc:
            raise ApiError(400, f"{MALFORMED}: {exc}") from None
        if part is None:
            return
        if isinstance(part, MultipartReader):
            raise ApiError(400, f"{MALFORMED}: nested multipart parts are not accepted")
        _check_plain(part)
        yield part


def _stalled(timeout: float) -> str:
    return f"Request body stalled: nothing received for {timeout:g}s"


def _check_plain(part: BodyPartReader) -> None:
    """Only identity encodings: a file part is written exactly as it arrives."""
    transfer = part.headers.get("Content-Transfer-Encoding", "binary").strip().lower()
    content = part.headers.get("Content-Encoding", "identity").strip().lower()
    if transfer not in ("binary", "8bit", "7bit") or content != "identity":
        raise ApiError(400, f"{MALFORMED}: part {part.name!r} uses an unsupported encoding")


def chunk_reader(part: BodyPartReader, *, timeout: float) -> ReadChunk:
    """``read_chunk`` with errors mapped to answers: 408 when the body stalls."""

    async def read() -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await part.read_chunk(READ_CHUNK)
        except TimeoutError:
            raise ApiError(408, _stalled(timeout)) from None
        except ValueError as exc:
            raise ApiError(400, f"{MALFORMED}: {exc}") from None

    return read


async def read_text(part: BodyPartReader, *, timeout: float) -> str:
    read = chunk_reader(part, timeout=timeout)
    data = bytearray()
    while chunk := await read():
        data += chunk
        if len(data) > TEXT_FIELD_LIMIT:
            raise ApiError(400, f"Form field {part.name!r} is longer than {TEXT_FIELD_LIMIT} bytes")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (UnicodeDecodeError, LookupError):
        raise ApiError(400, f"Form field {part.name!r} is not valid text") from None


async def skip(part: BodyPartReader, *, timeout: float) -> None:
    read = chunk_reader(part, timeout=timeout)
    seen = 0
    while chunk := await read():
        seen += len(chunk)
        if seen > OTHER_FIELD_LIMIT:
            raise ApiError(400, f"Unexpected form field {part.name!r} is too large")
