"""The HTTP endpoints: parse the request, let the ``Receiver`` decide, answer JSON."""

from __future__ import annotations

import contextlib
from typing import Any

from aiohttp import web

from syncd.server.errors import ApiError
from syncd.server.forms import (
    NO_FILE,
    chunk_reader,
    iter_parts,
    media_type,
    prepend,
    read_head,
    read_text,
    skip,
)
from syncd.server.names import BadFilename, normalize_filename
from syncd.server.ranges import ContentRange, RangeError, parse_content_range
from syncd.server.receiver import Receiver, Session
from syncd.server.views import session_json, session_url
from syncd.server.writer import BATCH_BYTES

RECEIVER = web.AppKey("receiver", Receiver)

# Room for the multipart framing around a whole file sent by POST: boundaries, part
# headers, the filename and md5 fields. Only used to refuse early; the exact limit is
# enforced on the bytes as they arrive.
FORM_OVERHEAD = 64 * 1024

# A whole-file POST up to this size is held in memory and stored in one I/O call: no
# more than the write batch a streamed part holds anyway.
SMALL_FILE = BATCH_BYTES


def _receiver(request: web.Request) -> Receiver:
    return request.app[RECEIVER]


def _answer(request: web.Request, session: Session) -> web.Response:
    receiver = _receiver(request)
    url = session_url(request, receiver.settings, session.record.id)
    return web.json_response(session_json(session.record, url=url, expire=receiver.settings.expire))


def _content_range(request: web.Request) -> ContentRange:
    try:
        return parse_content_range(request.headers.get("Content-Range"))
    except RangeError as exc:
        raise ApiError(400, str(exc)) from None


def _filename(raw: str | None) -> str:
    if raw is None:
        raise ApiError(400, "filename: This field is required.")
    try:
        return normalize_filename(raw)
    except BadFilename as exc:
        raise ApiError(400, f"Invalid filename: {exc}") from None


async def _receive_form(
    request: web.Request,
    session: Session,
    *,
    expected: int | None,
    limit: int | None,
    naming: bool,
) -> dict[str, str]:
    """Streams the ``file`` part into ``session``; returns the small fields.

    When ``naming`` (a new session), the ``filename`` field is checked before any data
    is written if it comes first, else right after.
    """
    receiver = _receiver(request)
    timeout = receiver.hooks.body_timeout
    fields: dict[str, str] = {}
    received: int | None = None
    async for part in iter_parts(request, timeout=timeout):
        if part.name == "file":
            if received is not None:
                raise ApiError(400, "More than one file was submitted")
            if naming and "filename" in fields:
                receiver.assign_name(session, _filename(fields["filename"]))
            received = await receiver.receive(
                session, chunk_reader(part, timeout=timeout), expected=expected, limit=limit
            )
        elif part.name in ("filename", "md5"):
            fields[part.name] = await read_text(part, timeout=timeout)
        else:
            await skip(part, timeout=timeout)
    if received is None:
        raise ApiError(400, NO_FILE)
    if naming and not session.record.filename:
        receiver.assign_name(session, _filename(fields.get("filename")))
    return fields


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "open_sessions": _receiver(request).open_sessions()})


async def create_session(request: web.Request) -> web.Response:
    """``PUT chunked_upload/``: a new session with its first part."""
    receiver = _receiver(request)
    span = _content_range(request)
    if span.start != 0:
        raise ApiError(400, "The first part must start at offset 0", provided_offset=span.start)
    receiver.check_size(span.total)
    receiver.check_space(span.total)
    async with receiver.creating(span.total) as session:
        await _receive_form(request, session, expected=span.length, limit=span.length, naming=True)
        await receiver.register(session)
    return _answer(request, session)


async def upload_whole(request: web.Request) -> web.Response:
    """``POST chunked_upload/``: a whole file with its md5 in one request.

    A file part of at most ``SMALL_FILE`` bytes is kept in memory (as much as one write
    batch of a streamed part) and stored by ``Receiver.store_whole`` in one I/O call;
    a larger one is streamed to disk like any part.
    """
    receiver = _receiver(request)
    limit = receiver.settings.max_size
    announced = request.content_length
    if announced is not None and limit is not None and announced > limit + FORM_OVERHEAD:
        receiver.check_size(announced - FORM_OVERHEAD)
    receiver.check_space(announced or 0)
    timeout = receiver.hooks.body_timeout
    fields: dict[str, str] = {}
    name: str | None = None  # checked as soon as both the name and the file part came
    small: list[bytes] | None = None
    async with contextlib.AsyncExitStack() as stack:
        streamed: Session | None = None
        async for part in iter_parts(request, timeout=timeout):
            if part.name == "file":
                if small is not None or streamed is not None:
                    raise ApiError(400, "More than one file was submitted")
                if "filename" in fields:
                    name = _checked_name(receiver, fields["filename"])
                read = chunk_reader(part, timeout=timeout)
                head, ended = await read_head(read, SMALL_FILE if limit is None else min(SMALL_FILE, limit))
                receiver.check_size(sum(len(b) for b in head))  # past a limit under SMALL_FILE
                if ended:
                    small = head
                    continue
                streamed = await stack.enter_async_context(receiver.creating(0))
                if name is not None:
                    receiver.assign_name(streamed, name)
                await receiver.receive(streamed, prepend(head, read), expected=None, limit=limit)
            elif part.name in ("filename", "md5"):
                fields[part.name] = await read_text(part, timeout=timeout)
            else:
                await skip(part, timeout=timeout)
        if streamed is not None:
            if not streamed.record.filename:
                receiver.assign_name(streamed, _filename(fields.get("filename")))
            await receiver.complete(streamed, fields.get("md5"))
            await receiver.register(streamed)
            return _answer(request, streamed)
    if small is None:
        raise ApiError(400, NO_FILE)
    if name is None:
        name = _checked_name(receiver, fields.get("filename"))
    return _answer(request, await receiver.store_whole(name, small, fields.get("md5")))


def _checked_name(receiver: Receiver, raw: str | None) -> str:
    name = _filename(raw)
    receiver.check_parents(name)
    return name


async def append_part(request: web.Request) -> web.Response:
    """``PUT chunked_upload/{id}/``: the next part."""
    receiver = _receiver(request)
    span = _content_range(request)
    session = receiver.lookup(request.match_info["id"])
    async with receiver.locked(session):
        receiver.check_part(session, start=span.start, total=span.total)
        await _receive_form(request, session, expected=span.length, limit=span.length, naming=False)
    return _answer(request, session)


async def get_session(request: web.Request) -> web.Response:
    """``GET chunked_upload/{id}/``: the session, with the offset to resume from."""
    receiver = _receiver(request)
    session = receiver.lookup(request.match_info["id"])
    async with receiver.locked(session):
        return _answer(request, session)


async def complete_session(request: web.Request) -> web.Response:
    """``POST chunked_upload/{id}/`` with ``md5`` (JSON or form): verify and store."""
    receiver = _receiver(request)
    session = receiver.lookup(request.match_info["id"])
    md5 = await _md5_field(request)
    async with receiver.locked(session):
        await receiver.complete(session, md5)
    return _answer(request, session)


async def abort_session(request: web.Request) -> web.Response:
    """``DELETE chunked_upload/{id}/``: forget the session and its partial data."""
    receiver = _receiver(request)
    session = receiver.lookup(request.match_info["id"])
    async with receiver.locked(session):
        await receiver.abort(session)
    return web.Response(status=204)


async def _md5_field(request: web.Request) -> str | None:
    content_type = media_type(request)
    if content_type == "application/json":
        try:
            doc: Any = await request.json()
        except ValueError:
            raise ApiError(400, "Malformed JSON body") from None
        value = doc.get("md5") if isinstance(doc, dict) else None
    elif content_type == "application/x-www-form-urlencoded":
        value = (await request.post()).get("md5")
    elif content_type == "multipart/form-data":
        timeout = _receiver(request).hooks.body_timeout
        value = None
        async for part in iter_parts(request, timeout=timeout):
            if part.name == "md5":
                value = await read_text(part, timeout=timeout)
            else:
                await skip(part, timeout=timeout)
    else:
        value = None
    return value if isinstance(value, str) else None
