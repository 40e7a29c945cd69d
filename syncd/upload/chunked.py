"""The ``chunked`` protocol: the Synapse SDK's ``create_chunked_upload``, as served by
drf-chunked-upload and by ``syncd serve``.

- ``PUT {url}`` with multipart fields ``filename`` and ``file`` and ``Content-Range`` makes a
  session from its first part; the answer's ``url`` is the session's address.
- ``PUT {session}`` sends each next part; ``400 Offsets do not match`` carries the
  server's ``expected_offset``.
- ``GET {session}`` tells the server's ``offset``; ``POST {session}`` with ``md5`` completes.
- ``POST {url}`` with ``filename``, ``file`` and ``md5`` sends a small file whole.

Parts stream from disk through requests-toolbelt's encoder: a part is never in memory.
"""

from __future__ import annotations

import email.utils
import json
import posixpath
import threading
import time
from typing import Any, BinaryIO
from urllib.parse import urljoin

import requests
from requests_toolbelt import MultipartEncoder

from syncd import __version__
from syncd.upload.base import (
    AuthRejected,
    ChecksumMismatch,
    OffsetMismatch,
    PartReceipt,
    PermanentError,
    RemoteFile,
    SessionGone,
    TransientError,
    UploadItem,
)

STREAM_BLOCK = 1024 * 1024
# A whole-file POST carries its MD5, so the file is read twice (hash, then send): worth
# saving a request only for small files, whose second read comes from the page cache.
SINGLE_REQUEST_MAX = 4 * 1024 * 1024
_RETRY_STATUSES = {408, 429} | set(range(500, 600)) - {507}


class _StreamingBody:
    """An iterable request body of known length: requests sends Content-Length and the
    encoder's bytes in 1 MiB blocks instead of http.client's 8 KiB reads."""

    def __init__(self, encoder: MultipartEncoder):
        self._encoder = encoder
        self.len = encoder.len

    def __iter__(self):
        while True:
            block = self._encoder.read(STREAM_BLOCK)
            if not block:
                return
            yield block


def _detail(resp: requests.Response) -> str:
    """The server's reason, one line: drf's ``detail`` (or its field errors), else the text."""
    try:
        data = resp.json()
    except ValueError:
        text = " ".join(resp.text.split())
        return text[:200] or resp.reason or ""
    if isinstance(data, dict) and "detail" in data:
        data = data["detail"]
    if isinstance(data, dict):
        parts = []
        for key, value in data.items():
            value = value if isinstance(value, list) else [value]
            parts.append(" ".join(str(v) for v in value) if key in ("file", "non_field_errors")
                         else f"{key}: {' '.join(str(v) for v in value)}")
        data = "; ".join(parts)
    elif isinstance(data, list):
        data = " ".join(str(v) for v in data)
    return " ".join(str(data).split())[:300]


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def raise_for_answer(resp: requests.Response, *, on_session: bool) -> dict[str, Any]:
    """The answer's JSON, or the error it means for the engine."""
    status = resp.status_code
    if 200 <= status < 300:
        try:
            data = resp.json()
        except ValueError:
            raise TransientError(f"HTTP {status} with a body that is not JSON", reason="protocol") from None
        if not isinstance(data, dict):
            raise PermanentError(f"HTTP {status}: unexpected answer {json.dumps(data)[:100]}")
        return data
    detail = _detail(resp)
    if status == 400:
        try:
            body = resp.json()
        except ValueError:
            body = {}
        if isinstance(body, dict) and "expected_offset" in body:
            raise OffsetMismatch(int(body["expected_offset"]), int(body.get("provided_offset", -1)))
        if "checksum does not match" in detail:
            raise ChecksumMismatch(detail)
    if status in (401, 403):
        raise AuthRejected(f"authentication rejected (HTTP {status})")
    if status in (404, 410) and on_session:
        raise SessionGone(f"upload session is gone (HTTP {status}: {detail})")
    if status == 413:
        raise PermanentError(f"too large for the server (HTTP 413): {detail}")
    if status == 507:
        raise PermanentError(f"server storage is full (HTTP 507): {detail}")
    if status in _RETRY_STATUSES:
        reason = "429" if status == 429 else "408" if status == 408 else "5xx"
        raise TransientError(f"HTTP {status}: {detail}", reason=reason, retry_after=_retry_after(resp))
    raise PermanentError(f"HTTP {status}: {detail}")


class ChunkedBackend:
    def __init__(self, name: str, *, url: str, token: str | None, part_size: int,
                 connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 verify: bool | str = True):
        self.name = name
        self.url = url
        self.part_size = part_size
        self.single_request_max = min(part_size, SINGLE_REQUEST_MAX)
        self._timeout = (connect_timeout, read_timeout)
        self._verify = verify
        self._headers = {"User-Agent": f"syncd/{__version__}"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    def _http(self) -> requests.Session:
        """One requests.Session per worker thread (they are not thread-safe)."""
        http = getattr(self._local, "http", None)
        if http is None:
            http = requests.Session()
            http.headers.update(self._headers)
            http.verify = self._verify
            self._local.http = http
            with self._sessions_lock:
                self._sessions.append(http)
        return http

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        return self._http().request(method, url, timeout=self._timeout, allow_redirects=False, **kw)

    def open_session(self, item: UploadItem, *, resume: str | None) -> ChunkedSession:
        return ChunkedSession(self, item, url=resume)

    def upload_whole(self, item: UploadItem, body: BinaryIO, md5_hex: str) -> RemoteFile:
        encoder = MultipartEncoder(fields=[
            ("filename", item.remote_name),
            ("md5", md5_hex),
            ("file", (posixpath.basename(item.remote_name), body, "application/octet-stream")),
        ])
        resp = self.request("POST", self.url, data=_StreamingBody(encoder),
                            headers={"Content-Type": encoder.content_type})
        data = raise_for_answer(resp, on_session=False)
        return _remote_file(data, item, md5_hex)

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, (TransientError, requests.ConnectionError, requests.Timeout,
                                requests.exceptions.ChunkedEncodingError))

    def retry_reason(self, exc: BaseException) -> str:
        if isinstance(exc, TransientError):
            return exc.reason
        if isinstance(exc, requests.Timeout):
            return "timeout"
        return "connection"

    def close(self) -> None:
        with self._sessions_lock:
            for http in self._sessions:
                http.close()
            self._sessions.clear()


def _remote_file(data: dict[str, Any], item: UploadItem, md5_hex: str) -> RemoteFile:
    md5 = data.get("md5")
    if isinstance(md5, str) and md5 and md5.lower() != md5_hex:
        raise ChecksumMismatch(f"server stored MD5 {md5}, expected {md5_hex}")
    return RemoteFile(
        name=str(data.get("path") or data.get("filename") or item.remote_name),
        size=int(data.get("size", data.get("offset", item.size))),
        md5=md5 if isinstance(md5, str) else None,
        location=data.get("url"),
    )


class ChunkedSession:
    parallel_parts = 1  # offsets must arrive in order

    def __init__(self, backend: ChunkedBackend, item: UploadItem, *, url: str | None):
        self._backend = backend
        self._item = item
        self.token = url
        self._offset = 0
        self._complete = False

    @property
    def part_size(self) -> int:
        return self._backend.part_size

    def refresh(self) -> None:
        resp = self._backend.request("GET", self.token)
        data = raise_for_answer(resp, on_session=True)
        self._offset = int(data.get("offset", 0))
        self._complete = data.get("status") == 2

    def committed(self) -> int:
        if self.token is not None:
            self.refresh()
        return self._offset

    def send_part(self, number: int, offset: int, body: BinaryIO, size: int) -> PartReceipt:
        total = self._item.size
        encoder = MultipartEncoder(fields=[
            ("filename", self._item.remote_name),
            ("file", (posixpath.basename(self._item.remote_name), body, "application/octet-stream")),
        ])
        headers = {
            "Content-Type": encoder.content_type,
            "Content-Range": f"bytes {offset}-{offset + size - 1}/{total}",
        }
        url = self.token or self._backend.url
        resp = self._backend.request("PUT", url, data=_StreamingBody(encoder), headers=headers)
        data = raise_for_answer(resp, on_session=self.token is not None)
        if self.token is None:
            if "url" not in data:
                raise PermanentError("server made a session without a url")
            self.token = urljoin(self._backend.url, str(data["url"]))
        self._offset = int(data.get("offset", offset + size))
        return PartReceipt(number=number, offset=offset, size=size, server_offset=self._offset)

    def complete(self, md5_hex: str) -> RemoteFile:
        if self._complete:
            # A previous run completed it and crashed before writing that down; the
            # server checked our MD5 then.
            return RemoteFile(name=self._item.remote_name, size=self._item.size, md5=None,
                              location=self.token)
        resp = self._backend.request("POST", self.token, data={"md5": md5_hex})
        try:
            data = raise_for_answer(resp, on_session=True)
        except PermanentError as exc:
            if 'already been marked as "complete"' in str(exc):
                return RemoteFile(name=self._item.remote_name, size=self._item.size, md5=None,
                                  location=self.token)
            raise
        self._complete = True
        return _remote_file(data, self._item, md5_hex)

    def abort(self) -> None:
        if self.token is None or self._complete:
            return
        try:
            self._backend.request("DELETE", self.token)
        except requests.RequestException:
            pass  # best effort; an idle session expires on the server
