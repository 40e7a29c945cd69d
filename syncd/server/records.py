"""The persisted state of one upload session, and its JSON form on disk."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, fields
from typing import Any

from syncd.server.checksums import ALGORITHMS, DEFAULT
from syncd.server.keys import is_upload_key

UPLOADING = "uploading"
COMPLETE = "complete"
EXPIRED = "expired"  # a tombstone: the data is gone, the id answers 410 for a while
STATES = (UPLOADING, COMPLETE, EXPIRED)

# drf-chunked-upload's status numbers, as clients see them.
STATUS_CODES = {UPLOADING: 1, COMPLETE: 2, EXPIRED: 1}

_ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def new_session_id() -> str:
    return str(uuid.uuid4())


def canonical_id(text: str) -> str | None:
    """The canonical form of a session id from a URL, or None if it is not one.

    Ids become file names under ``.incoming``: only canonical UUIDs are ever let through.
    """
    try:
        value = str(uuid.UUID(text))
    except ValueError:
        return None
    return value if _ID_RE.match(value) else None


@dataclass(frozen=True)
class SessionRecord:
    id: str
    filename: str  # normalized relative path the client asked for
    total: int
    offset: int
    state: str
    created_at: float  # wall-clock seconds
    updated_at: float  # last accepted part (or state change): idle time counts from here
    completed_at: float | None = None
    # Set when complete: the whole file's checksum in hex, in ``checksum``'s algorithm
    # (named after drf-chunked-upload's field, which is always MD5).
    md5: str | None = None
    checksum: str = DEFAULT  # the algorithm that verifies the session (``checksums``)
    path: str | None = None  # where the file was stored, relative to the root
    upload_key: str | None = None  # the client's name for the session (``keys``), if it gave one

    def to_json(self) -> bytes:
        # vars(), not asdict(): every field is a str, int, float or None (nothing to deep-copy),
        # and this runs for every stored file
        return json.dumps(vars(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> SessionRecord:
        """Raises ValueError on anything that is not a record this code wrote."""
        try:
            doc: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(doc, dict) or not names >= doc.keys():
            raise ValueError("not a session record")
        try:
            record = cls(**doc)
        except TypeError as exc:
            raise ValueError(f"not a session record: {exc}") from None
        if (
            canonical_id(str(record.id)) != record.id
            or record.state not in STATES
            or record.checksum not in ALGORITHMS
            or not isinstance(record.total, int)
            or not isinstance(record.offset, int)
            or not 0 <= record.offset <= record.total
            or not (record.upload_key is None or is_upload_key(record.upload_key))
        ):
            raise ValueError("session record has invalid values")
        return record
