"""``Content-Range: bytes START-END/TOTAL`` as the chunked upload protocol uses it.

The grammar is drf-chunked-upload's (``^bytes (\\d+)-(\\d+)/(\\d+)$``), stricter on
meaning: END may not pass TOTAL-1. ``bytes */0`` (RFC 9110's form for "no range of an
empty representation") opens a session for an empty file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TOTAL = 2**63 - 1  # what a file offset can hold
_RANGE_RE = re.compile(r"^bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})$")
_EMPTY = "bytes */0"
HEADER_ERROR = "Error in request headers"


class RangeError(ValueError):
    """``str(err)`` is the ``detail`` of the 400 answer."""


@dataclass(frozen=True)
class ContentRange:
    start: int
    end: int  # inclusive; -1 for the empty range of an empty file
    total: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_content_range(header: str | None) -> ContentRange:
    if header == _EMPTY:
        return ContentRange(start=0, end=-1, total=0)
    match = _RANGE_RE.match(header or "")
    if not match:
        raise RangeError(HEADER_ERROR)
    start, end, total = (int(g) for g in match.groups())
    if total > MAX_TOTAL:
        raise RangeError(f"{HEADER_ERROR}: sizes stop at {MAX_TOTAL} bytes")
    if end < start:
        raise RangeError(f"{HEADER_ERROR}: range ends before it starts")
    if end >= total:
        raise RangeError(f"End of chunk exceeds reported total ({total} bytes)")
    return ContentRange(start=start, end=end, total=total)
