"""The HTTP endpoints: parse the request, let the ``Receiver`` decide, answer JSON."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

from syncd.server import batch, checksums, rawparts
from syncd.server.errors import ApiError
from syncd.server.forms import (
    NO_FILE,
    chunk_reader,
    exact_reader,
    iter_parts,
    media_type,
    prepend,
    read_head,
    read_text,
    skip,
)
from syncd.server.keys import HEADER as KEY_HEADER
from syncd.server.keys import BadUploadKey, parse_upload_key
from syncd.server.names import BadFilename, normalize_filename
from syncd.server.ranges import ContentRange, RangeError, parse_content_range
from syncd.server.receiver import OFFSETS_MISMATCH, Receiver, Session, WholeFile
from syncd.server.records import COMPLETE
from syncd.server.replies import answer_then_hang_up
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
    return web.json_response(_session_doc(request, session))


def _session_doc(request: web.Request, session: Session) -> dict[str, Any]:
    receiver = _receiver(request)
    url = session_url(request, receiver.settings, session.record.id)
    return session_json(session.record, url=url, expire=receiver.settings.expire)


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


def _upload_key(request: web.Request) -> str | None:
    try:
        return parse_upload_key(request.headers.getall(KEY_HEADER, []))
    except BadUploadKey as exc:
        raise ApiError(400, str(exc)) from None


def _checksum(request: web.Request) -> str:
    """The algorithm a first part asks for; a repeated header is taken as one list, as
    HTTP reads it (and refused)."""
    values = request.headers.getall(checksums.HEADER, [])
    return checksums.parse(", ".join(values) if values else None)


async def _receive_form(
    request: web.Request,
    session: Session,
    *,
    expected: int | None,
    limit: int | None,
    naming: bool,
    before_file: Callable[[dict[str, str]], None] | None = None,
) -> dict[str, str]:
    """Streams the ``file`` part into ``session``; returns the small fields.

    When ``naming`` (a new session), the ``filename`` field is checked before any data
    is written if it comes first, else right after. ``before_file`` sees the fields that
    came before the file part and may refuse the request before a byte is written.
    """
    receiver = _receiver(request)
    timeout = receiver.hooks.body_timeout
    fields: dict[str, str] = {}
    received: int | None = None
    async for part in iter_parts(request, timeout=timeout):
        if part.name == "file":
            if received is not None:
                raise ApiError(400, "More than one file was submitted")
            if before_file is not None:
                before_file(fields)
            if naming and "filename" in fields:
                receiver.assign_name(session, _filename(fields["filename"]))
            read = (
                chunk_reader(part, timeout=timeout)
                if expected is None
                else exact_reader(request, part, length=expected, timeout=timeout)
            )
            received = await receiver.receive(session, read, expected=expected, limit=limit)
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


async def create_session(request: web.Request) -> web.StreamResponse:
    """``PUT chunked_upload/``: a new session with its first part, verified with the
    algorithm ``Syncd-Checksum`` asks for (``checksums``; MD5 without it).

    With an ``Upload-Key`` that names a session already (the client lost the answer),
    the part goes to that session instead, as a ``PUT`` to its URL would.
    """
    receiver = _receiver(request)
    span = _content_range(request)
    key = _upload_key(request)
    checksum = _checksum(request)
    if media_type(request) == rawparts.MEDIA_TYPE:
        raise ApiError(400, f"{rawparts.MEDIA_TYPE} is for later parts: send the first part as a form")
    if span.start != 0:
        raise ApiError(400, "The first part must start at offset 0", provided_offset=span.start)
    receiver.check_size(span.total)
    if key is None:
        return await _create(request, span, key=None, checksum=checksum)
    async with receiver.key_locks.hold(key), receiver.locked_by_key(key) as named:
        if named is None:
            return await _create(request, span, key=key, checksum=checksum)
        return await _repeat_first_part(request, named, span, key, checksum)


async def _create(request: web.Request, span: ContentRange, *, key: str | None, checksum: str) -> web.Response:
    receiver = _receiver(request)
    receiver.check_space(span.total)
    async with receiver.creating(span.total, upload_key=key, checksum=checksum) as session:
        await _receive_form(
            request,
            session,
            expected=span.length,
            limit=span.length,
            naming=True,
            before_file=None if key is None else _name_first,
        )
        await receiver.register(session)
    return _answer(request, session)


def _name_first(fields: dict[str, str]) -> None:
    """A keyed first part names its file before its data, so a repeat can be checked
    against its session without reading the data."""
    if "filename" not in fields:
        raise ApiError(400, f"With {KEY_HEADER}, the filename field must come before the file part")


def _check_same_file(key: str, session: Session, *, filename: str | None, size: int) -> None:
    """400 when the request describes another file than the session its key names."""
    record = session.record
    if size != record.total:
        raise ApiError(
            400,
            f"{KEY_HEADER} {key!r} names an upload of {record.total} bytes, not {size}",
        )
    if filename is not None and _filename(filename) != record.filename:
        raise ApiError(
            400,
            f"{KEY_HEADER} {key!r} names an upload of {record.filename!r}, "
            f"not {_filename(filename)!r}",
        )


def _check_same_checksum(key: str, session: Session, checksum: str) -> None:
    """400 when the request asks for another algorithm than the session its key names has."""
    if checksum != session.record.checksum:
        raise ApiError(
            400,
            f"{KEY_HEADER} {key!r} names an upload checked with {session.record.checksum}, not {checksum}",
        )


async def _repeat_first_part(
    request: web.Request, session: Session, span: ContentRange, key: str, checksum: str
) -> web.StreamResponse:
    """A keyed first part whose session exists: that session's answer (it holds the lock)."""
    receiver = _receiver(request)
    _check_same_file(key, session, filename=None, size=span.total)
    _check_same_checksum(key, session, checksum)
    url = session_url(request, receiver.settings, session.record.id)
    if session.record.state == COMPLETE:
        fields = await _fields_before_file(request)
        _name_first(fields)
        _check_same_file(key, session, filename=fields["filename"], size=span.total)
        return await answer_then_hang_up(request, _answer(request, session))

    def before_file(fields: dict[str, str]) -> None:
        _name_first(fields)
        _check_same_file(key, session, filename=fields["filename"], size=span.total)
        try:
            receiver.check_part(session, start=span.start, total=span.total)
        except ApiError as err:
            if err.detail == OFFSETS_MISMATCH:  # tell the client where its session is
                err.extra.update(id=session.record.id, url=url)
            raise

    await _receive_form(
        request, session, expected=span.length, limit=span.length, naming=False, before_file=before_file
    )
    return _answer(request, session)


async def _fields_before_file(request: web.Request) -> dict[str, str]:
    """The small fields up to the file part (whose data is left unread)."""
    timeout = _receiver(request).hooks.body_timeout
    fields: dict[str, str] = {}
    parts = iter_parts(request, timeout=timeout)
    try:
        async for part in parts:
            if part.name == "file":
                return fields
            if part.name in ("filename", "md5"):
                fields[part.name] = await read_text(part, timeout=timeout)
            else:
                await skip(part, timeout=timeout)
    finally:
        await parts.aclose()
    raise ApiError(400, NO_FILE)


async def upload_whole(request: web.Request) -> web.Response:
    """``POST chunked_upload/``: a whole file with its md5 in one request.

    With an ``Upload-Key`` that names a stored file already (the client lost the
    answer), the answer is that file's again and nothing new is stored. With
    ``Syncd-Batch: 1``, a batch of small files instead (``upload_batch``).
    """
    if batch.is_batch(request):
        return await upload_batch(request)
    key = _upload_key(request)
    if key is None:
        return await _store_whole(request, key=None)
    async with _receiver(request).key_locks.hold(key), _receiver(request).locked_by_key(key) as named:
        if named is None:
            return await _store_whole(request, key=key)
        return await _repeat_whole(request, named, key)


async def _repeat_whole(request: web.Request, session: Session, key: str) -> web.Response:
    """A keyed whole file whose key names a session: the stored file's answer, checked
    against what was sent (read and dropped) so two files are never taken for one."""
    record = session.record
    _check_stored(key, session)
    timeout = _receiver(request).hooks.body_timeout
    fields: dict[str, str] = {}
    size: int | None = None
    async for part in iter_parts(request, timeout=timeout):
        if part.name == "file":
            if size is not None:
                raise ApiError(400, "More than one file was submitted")
            read, size = chunk_reader(part, timeout=timeout), 0
            while chunk := await read():
                size += len(chunk)
                if size > record.total:  # another file: refused now, the rest never read
                    _check_same_file(key, session, filename=None, size=size)
        elif part.name in ("filename", "md5"):
            fields[part.name] = await read_text(part, timeout=timeout)
        else:
            await skip(part, timeout=timeout)
    if size is None:
        raise ApiError(400, NO_FILE)
    _check_same_whole(key, session, filename=fields.get("filename"), size=size, md5=fields.get("md5"))
    return _answer(request, session)


def _check_stored(key: str, session: Session) -> None:
    """400 unless the session a whole file's key names is a stored file."""
    record = session.record
    if record.state != COMPLETE:
        raise ApiError(
            400,
            f"{KEY_HEADER} {key!r} names an upload still open for parts "
            f"({record.offset} of {record.total} bytes), not a whole file",
        )


def _check_same_whole(key: str, session: Session, *, filename: str | None, size: int, md5: str | None) -> None:
    """400 when a whole file is another than the stored one its key names (whole files
    are checked with MD5)."""
    _check_same_checksum(key, session, checksums.DEFAULT)
    _check_same_file(key, session, filename=filename, size=size)
    if md5 is not None and md5.strip().lower() != session.record.md5:
        raise ApiError(400, f"{KEY_HEADER} {key!r} names an upload with another md5 ({session.record.md5})")


async def _store_whole(request: web.Request, *, key: str | None) -> web.Response:
    """A file part of at most ``SMALL_FILE`` bytes is kept in memory (as much as one write
    batch of a streamed part) and stored by ``Receiver.store_whole`` in one I/O call;
    a larger one is streamed to disk like any part."""
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
                streamed = await stack.enter_async_context(receiver.creating(0, upload_key=key))
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
    return _answer(request, await receiver.store_whole(name, small, fields.get("md5"), upload_key=key))


def _checked_name(receiver: Receiver, raw: str | None) -> str:
    name = _filename(raw)
    receiver.check_parents(name)
    return name


async def upload_batch(request: web.Request) -> web.Response:
    """``POST chunked_upload/`` with ``Syncd-Batch: 1``: up to ``batch.MAX_FILES`` small
    files, each answered as a whole-file ``POST`` of it (with its key) would be.

    A body that is no batch is refused whole; then each file on its own: a key naming a
    stored file answers it again, any other file is checked and stored. Every key's lock
    is held (taken in sorted order) from its check until the file is stored. The files
    to store are stored together (``Receiver.store_batch``): all of them are durable,
    data and name, before the answer.
    """
    receiver = _receiver(request)
    files = await batch.read_files(request, file_limit=SMALL_FILE, timeout=receiver.hooks.body_timeout)
    receiver.check_space(sum(file.size for file in files))
    entries: list[dict[str, Any]] = [{} for _ in files]
    to_store: list[tuple[int, WholeFile]] = []
    usable: set[str] = set()  # folders checked by an earlier file of the batch
    async with contextlib.AsyncExitStack() as stack:
        keys = sorted(file.key for file in files if file.key is not None)
        for key in keys:
            await stack.enter_async_context(receiver.key_locks.hold(key))
        named = {key: await stack.enter_async_context(receiver.locked_by_key(key)) for key in keys}
        for i, file in enumerate(files):
            try:
                if file.key is not None and (session := named[file.key]) is not None:
                    _check_stored(file.key, session)
                    _check_same_whole(file.key, session, filename=file.filename, size=file.size, md5=file.md5)
                    entries[i] = batch.stored_entry(_session_doc(request, session))
                    continue
                name = _filename(file.filename)
                if (folder := name.rpartition("/")[0]) not in usable:
                    receiver.check_parents(name)
                    usable.add(folder)
                receiver.check_size(file.size)
                to_store.append((i, WholeFile(name, file.data, file.md5, file.key)))
            except ApiError as err:
                entries[i] = batch.error_entry(err, file.filename)
        outcomes = await receiver.store_batch([whole for _, whole in to_store])
    for (i, _), outcome in zip(to_store, outcomes):
        if isinstance(outcome, ApiError):
            entries[i] = batch.error_entry(outcome, files[i].filename)
        else:
            entries[i] = batch.stored_entry(_session_doc(request, outcome))
    return web.json_response({"files": entries})


async def append_part(request: web.Request) -> web.Response:
    """``PUT chunked_upload/{id}/``: the next part, as a form or as a raw body (``rawparts``)."""
    receiver = _receiver(request)
    span = _content_range(request)
    session = receiver.lookup(request.match_info["id"])
    raw = media_type(request) == rawparts.MEDIA_TYPE
    async with receiver.locked(session):
        receiver.check_part(session, start=span.start, total=span.total)
        if raw:
            read = rawparts.chunk_reader(request, timeout=receiver.hooks.body_timeout)
            await receiver.receive(session, read, expected=span.length, limit=span.length)
        else:
            await _receive_form(request, session, expected=span.length, limit=span.length, naming=False)
    return _answer(request, session)


async def find_by_key(request: web.Request) -> web.Response:
    """``GET chunked_upload/`` with ``Upload-Key``: the session the client named (404 if
    none), so a client whose first part's answer was lost can resume or abort it."""
    receiver = _receiver(request)
    key = _upload_key(request)
    if key is None:  # syncd's client asks so, once, what the server takes (the answer's headers)
        raise ApiError(400, f"GET on the collection needs an {KEY_HEADER} header", quiet=True)
    async with receiver.key_locks.hold(key), receiver.locked_by_key(key) as named:
        if named is None:
            raise ApiError(404, f"No upload is named {KEY_HEADER} {key!r}")
        return _answer(request, named)


async def get_session(request: web.Request) -> web.Response:
    """``GET chunked_upload/{id}/``: the session, with the offset to resume from."""
    receiver = _receiver(request)
    session = receiver.lookup(request.match_info["id"])
    async with receiver.locked(session):
        return _answer(request, session)


async def complete_session(request: web.Request) -> web.Response:
    """``POST chunked_upload/{id}/`` with ``md5`` (JSON or form), or ``sha256`` for a
    SHA-256 session: verify and store."""
    receiver = _receiver(request)
    session = receiver.lookup(request.match_info["id"])
    digest = await _checksum_field(request, session.record.checksum)
    async with receiver.locked(session):
        await receiver.complete(session, digest)
    return _answer(request, session)


async def abort_session(request: web.Request) -> web.Response:
    """``DELETE chunked_upload/{id}/``: forget the session and its partial data."""
    receiver = _receiver(request)
    session = receiver.lookup(request.match_info["id"])
    async with receiver.locked(session):
        await receiver.abort(session)
    return web.Response(status=204)


async def _checksum_field(request: web.Request, name: str) -> str | None:
    """The field ``name`` (``md5`` or ``sha256``) of a completion, JSON or form."""
    content_type = media_type(request)
    if content_type == "application/json":
        try:
            doc: Any = await request.json()
        except ValueError:
            raise ApiError(400, "Malformed JSON body") from None
        value = doc.get(name) if isinstance(doc, dict) else None
    elif content_type == "application/x-www-form-urlencoded":
        value = (await request.post()).get(name)
    elif content_type == "multipart/form-data":
        timeout = _receiver(request).hooks.body_timeout
        value = None
        async for part in iter_parts(request, timeout=timeout):
            if part.name == name:
                value = await read_text(part, timeout=timeout)
            else:
                await skip(part, timeout=timeout)
    else:
        value = None
    return value if isinstance(value, str) else None
