"""What a failed HTTP answer means for the engine, the same for every HTTP protocol
(chunked, tus): fail fast on 401/403, 413 and 507, retry on 408, 429 and 5xx (after the
server's Retry-After), and a 404/410 on an upload session means the session is gone.
A protocol looks at its own statuses first (chunked's 400 offsets, tus's 460) and then
hands the rest here."""

from __future__ import annotations

from typing import NoReturn

from syncd.upload.base import AuthRejected, PermanentError, SessionGone, StorageFull, TransientError
from syncd.upload.retry import parse_retry_after

RETRY_STATUSES = frozenset({408, 429} | set(range(500, 600)) - {507})


def raise_for_http_status(status: int, detail: str, *, retry_after: str | None, gone: str | None,
                          what: str = "") -> NoReturn:
    """Raises the engine's error for a non-2xx ``status``. ``detail``: the server's reason, one
    line; ``retry_after``: the Retry-After header; ``gone``: the message for a 404/410 when it
    means the upload session is gone (None: it does not); ``what``: the request, put before
    the messages of transient and other permanent failures."""
    prefix = f"{what}: " if what else ""
    if status in (401, 403):
        raise AuthRejected(f"authentication rejected (HTTP {status})")
    if status in (404, 410) and gone is not None:
        raise SessionGone(gone)
    if status == 413:
        raise PermanentError(f"too large for the server (HTTP 413): {detail}")
    if status == 507:
        raise StorageFull(f"server storage is full (HTTP 507): {detail}")
    if status in RETRY_STATUSES:
        reason = "throttled" if status == 429 else "timeout" if status == 408 else "server"
        raise TransientError(f"{prefix}HTTP {status}: {detail}", reason=reason,
                             retry_after=parse_retry_after(retry_after))
    raise PermanentError(f"{prefix}HTTP {status}: {detail}")
