"""Batches: many small whole files in one ``POST chunked_upload/`` with ``Syncd-Batch: 1``.

A whole-file ``POST`` a small file costs a request and an fsync of the file's folder each;
a batch carries up to ``MAX_FILES`` files, and the receiver fsyncs each folder once for
all of them. The body is multipart/form-data: each file is given by the fields
``filename`` and ``md5`` (and optionally ``key``, an upload key as the ``Upload-Key``
header takes it) followed by its ``file`` part; fields apply to the next file part only,
other fields are skipped. Each file is at most ``file_limit`` bytes, all of them together at
most ``MAX_BYTES``, held in memory.

The answer is ``{"files": [...]}``, one entry a file in request order, each what a
whole-file ``POST`` of that file (with ``Upload-Key: <key>``) would have answered: the
session's JSON for a file stored (or found stored under its key), an error's JSON for a
file refused, with ``http_status`` (and the ``filename`` as sent, on errors).

Every JSON answer carries ``Syncd-Batch: 64`` (``MAX_FILES``) so a client knows it may
send batches; synapse-sdk and drf-chunked-upload clients never look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from syncd.server.errors import ApiError
from syncd.server.forms import NO_FILE, chunk_reader, iter_parts, media_type, read_head, read_text, skip
from syncd.server.keys import BadUploadKey, parse_upload_key
from syncd.units import format_size

ADVERTISE_HEADER = "Syncd-Batch"
REQUEST_HEADER = "Syncd-Batch"
MAX_FILES = 64
MAX_BYTES = 16 * 1024 * 1024
"""the most file bytes one batch may carry (its files are held in memory until stored)"""
_FIELDS = ("filename", "md5", "key")


@dataclass(frozen=True)
class BatchFile:
    """One file of a batch as it was sent (nothing checked but its key's syntax)."""

    position: int  # 1-based, as errors name it
    filename: str
    md5: str
    key: str | None
    data: list[bytes]

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.data)


def is_batch(request: web.Request) -> bool:
    return request.headers.get(REQUEST_HEADER, "").strip() == "1"


async def read_files(request: web.Request, *, file_limit: int, timeout: float) -> list[BatchFile]:
    """The files of a batch body, in order; a 400 for a body that is not a batch as a
    whole (nothing of it is to be stored then)."""
    if media_type(request) != "multipart/form-data":
        raise ApiError(400, f"{REQUEST_HEADER}: 1 needs a multipart/form-data body")
    files: list[BatchFile] = []
    total = 0
    fields: dict[str, str] = {}
    keys: dict[str, int] = {}  # key -> position of the file that has it
    async for part in iter_parts(request, timeout=timeout):
        if part.name in _FIELDS:
            fields[part.name] = await read_text(part, timeout=timeout)
            continue
        if part.name != "file":
            await skip(part, timeout=timeout)
            continue
        position = len(files) + 1
        if position > MAX_FILES:
            raise ApiError(400, f"A batch carries at most {MAX_FILES} files")
        for name in ("filename", "md5"):
            if name not in fields:
                raise ApiError(400, f"File {position} of the batch has no {name} field before it")
        key = _key(fields.get("key"), position)
        if key is not None:
            if key in keys:
                raise ApiError(400, f"Files {keys[key]} and {position} of the batch have the same key {key!r}")
            keys[key] = position
        data, ended = await read_head(chunk_reader(part, timeout=timeout), file_limit)
        if not ended:
            raise ApiError(400, f"a file in a batch is at most {format_size(file_limit)}")
        total += sum(len(b) for b in data)
        if total > MAX_BYTES:
            raise ApiError(413, f"A batch carries at most {format_size(MAX_BYTES)} of files")
        files.append(BatchFile(position, fields["filename"], fields["md5"], key, data))
        fields = {}
    if not files:
        raise ApiError(400, NO_FILE)
    return files


def _key(raw: str | None, position: int) -> str | None:
    if raw is None:
        return None
    try:
        return parse_upload_key([raw])
    except BadUploadKey as exc:
        raise ApiError(400, f"File {position} of the batch: {exc}") from None


def stored_entry(doc: dict[str, Any]) -> dict[str, Any]:
    """The entry of a file stored or found stored: its session's JSON."""
    return {**doc, "http_status": 200}


def error_entry(err: ApiError, filename: str) -> dict[str, Any]:
    """The entry of a file refused: what its own request would have answered, and its name as sent."""
    return {"http_status": err.status, "detail": err.detail, **err.extra, "filename": filename}


async def advertise(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every JSON answer says how many files a batch may carry."""
    if response.content_type == "application/json":
        response.headers[ADVERTISE_HEADER] = str(MAX_FILES)
