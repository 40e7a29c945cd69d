"""Strict parsers for the header shapes of a form upload's parts: ``Content-Disposition``
and ``Content-Type``.

aiohttp's own part-header parser warns and carries on when a value is malformed (the
part then looks nameless and is skipped). These follow RFC 9110's grammar and refuse
anything else with ``HeaderError``; the caller answers 400 rather than guessing:

    value      = type *( OWS ";" OWS param ) OWS [ ";" OWS ]
    param      = token "=" ( token / quoted-string )      ; name="file"
               / token "*=" charset "'" [ language ] "'" pct-encoded-chars
                                                         ; filename*=UTF-8''%C3%A4.bin

Quoted strings take backslash escapes (``\\"``) and any non-ASCII text (UTF-8 file names,
as requests and browsers send them); ``filename*`` (RFC 8187, named by RFC 7578) wins
over ``filename``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_OWS = r"[ \t]*"
# qdtext: HTAB, SP, visible ASCII but '"' and '\', and obs-text (here: any non-ASCII).
_QUOTED = r'"(?:[\t !#-\[\]-~\x80-\U0010ffff]|\\[\t -~\x80-\U0010ffff])*"'
_EXT_VALUE = r"[!#$%&+.^_`|~0-9A-Za-z-]*'[A-Za-z0-9-]*'(?:[!#$&+.^_`|~0-9A-Za-z-]|%[0-9A-Fa-f]{2})*"
_PARAM = re.compile(
    rf"{_OWS};{_OWS}(?:(?P<ext>{_TOKEN})\*={_OWS}(?P<ext_value>{_EXT_VALUE})"
    rf"|(?P<name>{_TOKEN})(?<!\*)={_OWS}(?:(?P<token>{_TOKEN})|(?P<quoted>{_QUOTED})))"
)
_TRAILER = re.compile(rf"{_OWS}(?:;{_OWS})?")
_DISPOSITION_TYPE = re.compile(rf"{_OWS}({_TOKEN})")
_MEDIA_TYPE = re.compile(rf"{_OWS}({_TOKEN})/({_TOKEN})")
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "iso-8859-1"}  # the two RFC 8187 names


class HeaderError(ValueError):
    """The header is not in the grammar above. ``str(err)`` says where."""


@dataclass(frozen=True)
class HeaderValue:
    value: str  # lower-cased: "form-data", "multipart/form-data"
    params: dict[str, str]  # lower-cased names; an RFC 8187 ``name*`` is stored as ``name``

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)


def parse_content_type(raw: str) -> HeaderValue:
    """``type/subtype`` and its parameters, e.g. ``multipart/form-data; boundary=x``."""
    m = _MEDIA_TYPE.match(raw)
    if m is None:
        raise HeaderError(f"Content-Type {raw!r} is not type/subtype")
    return HeaderValue(f"{m[1]}/{m[2]}".lower(), _params(raw, m.end(), "Content-Type"))


def parse_content_disposition(raw: str) -> HeaderValue:
    """``form-data; name="file"; filename="a b.bin"``; ``filename*`` wins over ``filename``."""
    m = _DISPOSITION_TYPE.match(raw)
    if m is None:
        raise HeaderError(f"Content-Disposition {raw!r} has no disposition type")
    return HeaderValue(m[1].lower(), _params(raw, m.end(), "Content-Disposition"))


def _params(raw: str, pos: int, header: str) -> dict[str, str]:
    plain: dict[str, str] = {}
    extended: dict[str, str] = {}
    while True:
        m = _PARAM.match(raw, pos)
        if m is None:
            break
        pos = m.end()
        if m["ext"] is not None:
            key, value, into = m["ext"].lower(), _decode_ext(m["ext_value"], header), extended
        else:
            key, into = m["name"].lower(), plain
            value = m["token"] if m["token"] is not None else _UNESCAPE.sub(r"\1", m["quoted"][1:-1])
        if key in into:
            raise HeaderError(f"{header} names parameter {key!r} twice")
        into[key] = value
    end = _TRAILER.match(raw, pos)
    if end is None or end.end() != len(raw):
        raise HeaderError(f"{header} {raw!r} is malformed at character {pos}")
    return {**plain, **extended}


def _decode_ext(text: str, header: str) -> str:
    charset, _, rest = text.partition("'")
    _language, _, encoded = rest.partition("'")
    codec = _CHARSETS.get(charset.lower())
    if codec is None:
        raise HeaderError(f"{header}: charset {charset!r} is not UTF-8 or ISO-8859-1")
    try:
        return unquote_to_bytes(encoded).decode(codec)
    except UnicodeDecodeError:
        raise HeaderError(f"{header}: {text!r} is not valid {codec}") from None
