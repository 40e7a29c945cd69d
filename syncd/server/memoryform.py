"""A small multipart/form-data body, split in memory in one pass.

aiohttp's part reader looks for the boundary chunk by chunk, copying as it goes, and
parses the first part's Content-Disposition with its own regular expressions: about
360 µs of CPU for the three parts of a 4 KiB whole-file POST, a third of all the
receiver spends on it. A body of at most ``MEMORY_FORM_MAX`` bytes (a whole-file POST of
a small file, as syncd and synapse-sdk send them) is read at once instead and split here
with ``bytes.find``; its parts are read through the same functions as streamed ones
(``forms``), which see a ``MemoryPart`` where they would see aiohttp's part reader.

The framing rules are aiohttp's (RFC 2046 section 5.1.1): a preamble before the first
delimiter line and an epilogue after the closing one are ignored; whitespace after a
delimiter is padding; a body part's content ends at the CRLF before the next delimiter.
Stricter than aiohttp: a line break is CRLF, and a body that ends before its closing
delimiter, or has a folded (obs-fold) or nameless header line, is refused (``FormError``).
"""

from __future__ import annotations

import re

from aiohttp.helpers import parse_mimetype
from multidict import CIMultiDict, CIMultiDictProxy

from syncd.server.formheaders import HeaderError, parse_content_disposition

MEMORY_FORM_MAX = 256 * 1024
"""bodies up to this many bytes (by their Content-Length) are split here"""
MAX_BOUNDARY = 70  # RFC 2046, as aiohttp enforces it
MAX_CHARSET_FIELD = 31  # aiohttp's bound on the ``_charset_`` field's value
_WHITESPACE = b" \t"
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 section 5.5: CTLs but HTAB
_SINGLETONS = frozenset({"content-length", "content-location", "content-range", "content-type", "etag", "host",
                         "max-forwards", "server", "transfer-encoding", "user-agent"})  # at most once each


class FormError(ValueError):
    """The body is not a well-formed multipart body. ``str(err)`` says why."""


class MemoryPart:
    """One part of a form held in memory, read like aiohttp's ``BodyPartReader``: its
    ``headers``, ``read_chunk`` until ``b""``, and ``get_charset``."""

    def __init__(self, headers: CIMultiDictProxy[str], data: bytes, *, default_charset: str | None):
        self.headers = headers
        self._data = data
        self._pos = 0
        self._default_charset = default_charset

    async def read_chunk(self, size: int) -> bytes:
        chunk = self._data[self._pos:self._pos + size]  # all of it: the same bytes object, not a copy
        self._pos += len(chunk)
        return chunk

    def get_charset(self, default: str) -> str:
        mimetype = parse_mimetype(self.headers.get("Content-Type", ""))
        return mimetype.parameters.get("charset", self._default_charset or default)


def boundary_of(content_type: str) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type, as aiohttp reads it."""
    mimetype = parse_mimetype(content_type)
    if mimetype.type != "multipart":
        raise FormError("multipart/* content type expected")
    boundary = mimetype.parameters.get("boundary")
    if not boundary:
        raise FormError(f"boundary missed for Content-Type: {content_type}")
    if len(boundary) > MAX_BOUNDARY:
        raise FormError(f"boundary {boundary!r} is too long ({MAX_BOUNDARY} chars max)")
    return boundary.encode("utf-8", "surrogateescape")


def split_form(body: bytes, content_type: str) -> list[MemoryPart]:
    """The parts of ``body``, in order; a leading ``_charset_`` field (RFC 7578 section
    4.6) is not a part of its own but the default charset of the others."""
    delimiter = b"--" + boundary_of(content_type)
    pos = _first_delimiter(body, delimiter)
    parts: list[MemoryPart] = []
    default_charset: str | None = None
    while True:
        # the rest of a delimiter's line: "--" (the closing delimiter) or padding
        line_end = body.find(b"\r\n", pos)
        rest = (body[pos:] if line_end < 0 else body[pos:line_end]).rstrip()
        if rest == b"--":
            return parts  # what follows is the epilogue
        if rest or line_end < 0:
            raise FormError(f"Invalid boundary {delimiter + rest[:20]!r}, expected {delimiter!r}")
        head_start = line_end + 2
        if body.startswith(b"\r\n", head_start):  # a part without headers
            head, content_start = b"", head_start + 2
        else:
            head_end = body.find(b"\r\n\r\n", head_start)
            if head_end < 0:
                raise FormError("a part's headers do not end")
            head, content_start = body[head_start:head_end], head_end + 4
        content_end = body.find(b"\r\n" + delimiter, content_start)
        if content_end < 0:
            raise FormError(f"Could not find the next boundary {delimiter!r}")
        headers = _headers(head)
        data = body[content_start:content_end]
        if not parts and default_charset is None and _is_charset_field(headers):
            default_charset = _charset_value(data)
        else:
            parts.append(MemoryPart(headers, data, default_charset=default_charset))
        pos = content_end + 2 + len(delimiter)


def _first_delimiter(body: bytes, delimiter: bytes) -> int:
    """Where the first delimiter line's delimiter ends (a preamble may come before it)."""
    if body.startswith(delimiter):
        return len(delimiter)
    at = body.find(b"\r\n" + delimiter)
    if at < 0:
        raise FormError(f"Could not find starting boundary {delimiter!r}")
    return at + 2 + len(delimiter)


def _headers(head: bytes) -> CIMultiDictProxy[str]:
    """``Name: value`` lines, by aiohttp's rules: the name a token, no control characters
    but HTAB in the value, and no second Content-Type (nor of the other singletons)."""
    headers: CIMultiDict[str] = CIMultiDict()
    if head:
        for line in head.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                raise FormError(f"a part has a malformed header line {line[:100]!r}")
            text = name.decode("ascii")
            if text in headers and text.lower() in _SINGLETONS:
                raise FormError(f"a part has two {text} headers")
            headers.add(text, value.strip(_WHITESPACE).decode("utf-8", "surrogateescape"))
    return CIMultiDictProxy(headers)


def _is_charset_field(headers: CIMultiDictProxy[str]) -> bool:
    raw = headers.get("Content-Disposition")
    if raw is None or "_charset_" not in raw:
        return False
    try:
        return parse_content_disposition(raw).get("name") == "_charset_"
    except HeaderError:
        return False  # refused with the other parts' headers (``forms``)


def _charset_value(data: bytes) -> str:
    if len(data) > MAX_CHARSET_FIELD:
        raise FormError("the _charset_ field is too long")
    try:
        return data.strip().decode("ascii")
    except UnicodeDecodeError:
        raise FormError("the _charset_ field is not ASCII") from None
