"""Reading multipart/form-data one part at a time; of a file part, at most a bounded head
(``read_head``) is ever held in memory. A body of at most ``MEMORY_FORM_MAX`` bytes is read
whole and split by ``memoryform`` instead, much cheaper than aiohttp's part reader.

Fields may come in any order (requests puts ``data`` before ``files``; a
MultipartEncoder keeps the caller's order), so callers get the parts as they come.
Part headers are parsed by ``formheaders`` (strict: malformed is a 400); nothing here
uses aiohttp's ``content_type``, which parses with the ``email`` package every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import BodyPartReader, MultipartReader, web

from syncd.server.errors import ApiError
from syncd.server.formheaders import HeaderError, parse_content_disposition, parse_content_type
from syncd.server.memoryform import MEMORY_FORM_MAX, FormError, MemoryPart, split_form
from syncd.server.writer import ReadChunk

READ_CHUNK = 256 * 1024  # measured: larger reads stop paying off around here
TEXT_FIELD_LIMIT = 16 * 1024
OTHER_FIELD_LIMIT = 1024 * 1024
MALFORMED = "Malformed multipart/form-data body"
NO_FILE = "No chunk file was submitted"


@dataclass(frozen=True)
class FormPart:
    name: str  # from its Content-Disposition: form-data; name="..."
    reader: BodyPartReader | MemoryPart


def media_type(request: web.Request) -> str | None:
    """The request's ``type/subtype`` in lower case, None without a Content-Type.

    Only the media type decides here (the boundary is aiohttp's to read and check), so
    this stays as lenient as aiohttp's ``content_type``, without its ``email`` parse.
    """
    raw = request.headers.get("Content-Type")
    return None if raw is None else raw.partition(";")[0].strip().lower()


async def iter_parts(request: web.Request, *, timeout: float) -> AsyncIterator[FormPart]:
    if media_type(request) != "multipart/form-data":
        raise ApiError(400, NO_FILE)  # what drf-chunked-upload answers to any other body
    length = request.content_length
    if length is not None and length <= MEMORY_FORM_MAX:
        for part in await _memory_parts(request, length, timeout=timeout):
            yield part
        return
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
        form_part = FormPart(_field_name(part), part)
        _check_plain(form_part)
        yield form_part


async def _memory_parts(request: web.Request, length: int, *, timeout: float) -> list[FormPart]:
    """The parts of a small body, read whole and split in memory (``memoryform``)."""
    chunks: list[bytes] = []
    left = length
    while left:
        try:
            async with asyncio.timeout(timeout):
                chunk = await request.content.read(left)
        except TimeoutError:
            raise ApiError(408, _stalled(timeout)) from None
        if not chunk:
            break  # shorter than announced: the split below finds no closing boundary
        chunks.append(chunk)
        left -= len(chunk)
    try:
        parts = split_form(b"".join(chunks), request.headers["Content-Type"])
    except FormError as exc:
        raise ApiError(400, f"{MALFORMED}: {exc}") from None
    form_parts = []
    for part in parts:
        if part.headers.get("Content-Type", "").partition("/")[0].strip().lower() == "multipart":
            raise ApiError(400, f"{MALFORMED}: nested multipart parts are not accepted")
        form_part = FormPart(_field_name(part), part)
        _check_plain(form_part)
        form_parts.append(form_part)
    return form_parts


def _field_name(part: BodyPartReader | MemoryPart) -> str:
    raw = part.headers.get("Content-Disposition")
    if raw is None:
        raise ApiError(400, f"{MALFORMED}: a part has no Content-Disposition")
    try:
        disposition = parse_content_disposition(raw)
    except HeaderError as exc:
        raise ApiError(400, f"{MALFORMED}: {exc}") from None
    name = disposition.get("name")
    if disposition.value != "form-data" or name is None:
        raise ApiError(400, f"{MALFORMED}: a part is not form-data with a name: {raw!r}")
    return name


def _stalled(timeout: float) -> str:
    return f"Request body stalled: nothing received for {timeout:g}s"


def _check_plain(part: FormPart) -> None:
    """Only identity encodings: a file part is written exactly as it arrives."""
    headers = part.reader.headers
    transfer = headers.get("Content-Transfer-Encoding", "binary").strip().lower()
    content = headers.get("Content-Encoding", "identity").strip().lower()
    if transfer not in ("binary", "8bit", "7bit") or content != "identity":
        raise ApiError(400, f"{MALFORMED}: part {part.name!r} uses an unsupported encoding")


def chunk_reader(part: FormPart, *, timeout: float) -> ReadChunk:
    """``read_chunk`` with errors mapped to answers: 408 when the body stalls."""
    reader = part.reader
    if isinstance(reader, MemoryPart):

        async def read_memory() -> bytes:  # the whole body is in memory already: nothing stalls
            return await reader.read_chunk(READ_CHUNK)

        return read_memory

    async def read() -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await part.reader.read_chunk(READ_CHUNK)
        except TimeoutError:
            raise ApiError(408, _stalled(timeout)) from None
        except ValueError as exc:
            raise ApiError(400, f"{MALFORMED}: {exc}") from None

    return read


def exact_reader(request: web.Request, part: FormPart, *, length: int, timeout: float) -> ReadChunk:
    """``read_chunk`` for a file part whose length is known (a ``PUT``'s Content-Range).

    aiohttp's part reader copies every chunk twice while it looks for the boundary. Here
    all but the last two of the announced bytes are read from the request body itself,
    as they arrived; aiohttp's reader then reads the rest and finds the boundary, so it
    still decides where the part ends (two bytes, because the CRLF before a boundary
    could otherwise pass for the part's last two). A part shorter or longer than
    announced comes out as such and is refused by the caller. A part with its own
    Content-Length header (which aiohttp may count by) takes the plain path.
    """
    plain = chunk_reader(part, timeout=timeout)
    if "Content-Length" in part.reader.headers or getattr(part.reader, "_content", None) is not request.content:
        return plain
    content = request.content
    left = max(0, length - 2)

    async def read() -> bytes:
        nonlocal left
        if left:
            try:
                async with asyncio.timeout(timeout):
                    # At most READ_CHUNK: a larger read would raise aiohttp's buffer limit to match.
                    data = await content.read(min(left, READ_CHUNK))
            except TimeoutError:
                raise ApiError(408, _stalled(timeout)) from None
            if data:
                left -= len(data)
                return data
            left = 0  # the body ended: aiohttp's reader says how
        return await plain()

    return read


async def read_head(read: ReadChunk, size: int) -> tuple[list[bytes], bool]:
    """Reads until the part ends (``True``) or more than ``size`` bytes came (``False``)."""
    chunks: list[bytes] = []
    seen = 0
    while chunk := await read():
        chunks.append(chunk)
        seen += len(chunk)
        if seen > size:
            return chunks, False
    return chunks, True


def prepend(chunks: list[bytes], read: ReadChunk) -> ReadChunk:
    """``read`` that first gives back ``chunks`` (already read by ``read_head``)."""
    pending = list(reversed(chunks))

    async def read_on() -> bytes:
        return pending.pop() if pending else await read()

    return read_on


async def read_text(part: FormPart, *, timeout: float) -> str:
    read = chunk_reader(part, timeout=timeout)
    data = bytearray()
    while chunk := await read():
        data += chunk
        if len(data) > TEXT_FIELD_LIMIT:
            raise ApiError(400, f"Form field {part.name!r} is longer than {TEXT_FIELD_LIMIT} bytes")
    try:
        return data.decode(_charset(part))
    except (UnicodeDecodeError, LookupError):
        raise ApiError(400, f"Form field {part.name!r} is not valid text") from None


def _charset(part: FormPart) -> str:
    """The part's charset, else the form's ``_charset_`` field, else UTF-8 (as aiohttp)."""
    raw = part.reader.headers.get("Content-Type")
    if raw is not None:
        try:
            parse_content_type(raw)  # strictly well-formed first
        except HeaderError as exc:
            raise ApiError(400, f"{MALFORMED}: {exc}") from None
    return part.reader.get_charset("utf-8")


async def skip(part: FormPart, *, timeout: float) -> None:
    read = chunk_reader(part, timeout=timeout)
    seen = 0
    while chunk := await read():
        seen += len(chunk)
        if seen > OTHER_FIELD_LIMIT:
            raise ApiError(400, f"Unexpected form field {part.name!r} is too large")
