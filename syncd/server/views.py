"""What clients see of a session: drf-chunked-upload's JSON, with an absolute ``url``."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from syncd.server.records import COMPLETE, STATUS_CODES, SessionRecord
from syncd.server.settings import ReceiverSettings

# A Host header that could not break out of the URL it is put into.
_HOST_RE = re.compile(r"^[A-Za-z0-9._~%-]+(?::[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?$")


def _first(value: str | None) -> str | None:
    return value.split(",")[0].strip() if value else None


def public_base(request: web.Request, settings: ReceiverSettings) -> str:
    """``scheme://host/base/`` as the client reached us.

    ``X-Forwarded-Proto``/``-Host`` come from whoever sends the request, so they are
    believed only when the operator says a proxy sets them (``trust_forwarded``).
    """
    scheme, host = request.scheme, request.host
    if settings.trust_forwarded:
        proto = (_first(request.headers.get("X-Forwarded-Proto")) or "").lower()
        if proto in ("http", "https"):
            scheme = proto
        forwarded_host = _first(request.headers.get("X-Forwarded-Host"))
        if forwarded_host and _HOST_RE.match(forwarded_host):
            host = forwarded_host
    if not _HOST_RE.match(host):  # absent or odd Host header: the address it came in on
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        if sock:
            host = f"[{sock[0]}]:{sock[1]}" if ":" in sock[0] else f"{sock[0]}:{sock[1]}"
        else:
            host = "localhost"
    return f"{scheme}://{host}{settings.base_path}"


def session_url(request: web.Request, settings: ReceiverSettings, session_id: str) -> str:
    return f"{public_base(request, settings)}chunked_upload/{session_id}/"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


def session_json(record: SessionRecord, *, url: str, expire: float) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": record.id,
        "url": url,
        "filename": record.filename,
        "offset": record.offset,
        "total": record.total,
        "status": STATUS_CODES[record.state],
        "created_at": _iso(record.created_at),
        "completed_at": _iso(record.completed_at),
        "expires_at": _iso(record.updated_at + expire),
        "checksum": record.checksum,
    }
    if record.state == COMPLETE:
        # drf's ``md5``, or ``sha256`` for a SHA-256 session: named after its algorithm
        doc.update({record.checksum: record.md5, "size": record.total, "path": record.path})
    if record.upload_key is not None:
        doc["upload_key"] = record.upload_key
    return doc
