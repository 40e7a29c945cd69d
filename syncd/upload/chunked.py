"""The ``chunked`` protocol: the Synapse SDK's ``create_chunked_upload``, as served by
drf-chunked-upload and by ``syncd serve``.

- ``PUT {url}`` with multipart fields ``filename`` and ``file`` and ``Content-Range`` makes a
  session from its first part; the answer's ``url`` is the session's address.
- ``PUT {session}`` sends each next part; ``400 Offsets do not match`` carries the
  server's ``expected_offset``.
- ``GET {session}`` tells the server's ``offset``; ``POST {session}`` with ``md5`` completes.
- ``POST {url}`` with ``filename``, ``file`` and ``md5`` sends a small file whole.

Four additions that ``syncd serve`` understands and other servers ignore: the ``Upload-Key``
header on a first part or a whole-file POST names the upload before the server has made it
(a repeated key finds the same session, so a crash between sending and journaling the
answer leaves no orphan); a server that answers ``Syncd-Raw-Parts: 1`` takes later
parts as a raw ``application/offset+octet-stream`` body instead of multipart; one that
answers ``Syncd-Batch: N`` takes up to N small whole files in one ``POST {url}`` with
``Syncd-Batch: 1`` (fields ``filename``, ``md5``, ``key`` before each ``file`` part) and
answers ``{"files": [...]}``, one entry per file with its own ``http_status``; and one that
answers ``Syncd-Checksum: sha256`` verifies a session whose first part says
``Syncd-Checksum: sha256`` with SHA-256 instead of MD5 (completed with ``sha256``; the
session's answers say ``"checksum": "sha256"``). Before its first session the client asks
the server once (``GET {url}``) unless an answer has already said what it takes.

Parts stream from disk through requests-toolbelt's encoder: a part is never in memory. A
small file's form (at most ``SMALL_FORM_MAX``) is built in memory in one go instead, and sent
through urllib3 directly (the pool requests itself uses, with the same TLS settings), or
to an ``http://`` target through ``http.client`` alone (``plainhttp``), unless the
environment names a proxy or ~/.netrc credentials for the target: for a 4 KiB file, the
streaming encoder and requests' own layers cost more CPU than the rest of the request.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import threading
from collections.abc import Sequence
from typing import Any, BinaryIO, Literal
from urllib.parse import urljoin

import requests
import urllib3
from pydantic import Field, field_validator
from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_environ_proxies, get_netrc_auth
from requests_toolbelt import MultipartEncoder
from urllib3.filepost import encode_multipart_formdata

from syncd import __version__, checksums
from syncd.config import TargetSettings, http_url
from syncd.units import format_size
from syncd.upload.base import (
    NO_BATCH,
    BatchLimit,
    Capabilities,
    ChecksumMismatch,
    OffsetMismatch,
    Part,
    PartReceipt,
    PermanentError,
    RemoteFile,
    TransientError,
    UploadError,
    UploadItem,
    WholeFile,
)
from syncd.upload.body import STREAM_BLOCK, SizedStream
from syncd.upload.httperrors import raise_for_http_status
from syncd.upload.plainhttp import PlainAnswer, PlainConnections
from syncd.upload.registry import ProtocolEntry

log = logging.getLogger("syncd.upload")

# A whole-file POST carries its MD5, so the file is read twice (hash, then send): worth
# saving a request only for small files, whose second read comes from the page cache.
SINGLE_REQUEST_MAX = 4 * 1024 * 1024
SMALL_FORM_MAX = 256 * 1024
UPLOAD_KEY_HEADER = "Upload-Key"
RAW_PART_TYPE = "application/offset+octet-stream"
BATCH_HEADER = "Syncd-Batch"
BATCH_FILE_MAX = SMALL_FORM_MAX
"""the largest file sent in a batch (its bytes are in memory until the answer)"""


class _Answer:
    """A response read whole (urllib3's, or ``plainhttp``'s), with what ``raise_for_answer``
    reads of a requests.Response."""

    def __init__(self, resp: urllib3.BaseHTTPResponse | PlainAnswer):
        self.status_code = resp.status
        self.headers = resp.headers
        self.reason = resp.reason or ""
        self._data = resp.data

    @property
    def text(self) -> str:
        return self._data.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self._data)


def _detail(resp: requests.Response | _Answer) -> str:
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


def raise_for_answer(resp: requests.Response | _Answer, *, on_session: bool) -> dict[str, Any]:
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
            raise OffsetMismatch(int(body["expected_offset"]), int(body.get("provided_offset", -1)),
                                 session_url=body.get("url"))
        if "checksum does not match" in detail:
            raise ChecksumMismatch(detail)
    raise_for_http_status(status, detail, retry_after=resp.headers.get("Retry-After"),
                          gone=f"upload session is gone (HTTP {status}: {detail})" if on_session else None)


class Settings(TargetSettings):
    """A ``protocol: chunked`` target: the Synapse SDK's protocol (drf-chunked-upload,
    ``syncd serve``)."""

    protocol: Literal["chunked"] = "chunked"
    url: str
    batch: int = Field(32, ge=1, le=1024)
    """small files (<= 256 KiB) sent together in one request to a server that takes batches
    (``syncd serve``; it says how many it takes at most); 1: one file per request"""
    checksum: Literal["auto", "md5"] = "auto"
    """the whole-file checksum of a file sent in parts: ``auto`` is SHA-256 where the server
    verifies with it (``syncd serve``), else MD5; ``md5``: always MD5"""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return http_url(value)

    def describe(self) -> str:
        return f"{self.url} (parts {format_size(self.part_size)})"


class ChunkedBackend:
    def __init__(self, name: str, *, url: str, token: str | None, part_size: int,
                 connect_timeout: float = 10.0, read_timeout: float = 120.0,
                 verify: bool | str = True, batch: int = 32, checksum: str = "auto"):
        self.name = name
        self.url = url
        self.part_size = part_size
        self.raw_parts = False
        """the server said (``Syncd-Raw-Parts: 1``) it takes a part's bytes without multipart"""
        self.batch = batch
        """the most small files sent in one request (the target's ``batch``)"""
        self.server_batch = 0
        """the most files the server said (``Syncd-Batch: N``) one batch may carry (0: none)"""
        self.sha256 = False
        """the server said (``Syncd-Checksum: sha256``) it verifies a session with SHA-256 if asked"""
        self.checksum = checksum
        """the target's ``checksum``: ``auto`` or ``md5``"""
        self._heard = False
        """an answer of the server has been read (it says what the server takes)"""
        self._timeout = (connect_timeout, read_timeout)
        self._verify = verify
        self._headers = {"User-Agent": f"syncd/{__version__}"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        direct = self._direct()
        self._plain = (PlainConnections(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
                       if direct and url.startswith("http://") else None)
        """small POSTs to an http:// target: http.client alone (``plainhttp``), cheaper than urllib3"""
        self._pool = self._small_request_pool() if direct and self._plain is None else None
        """small POSTs to an https:// target: urllib3, with requests' TLS settings"""

    @classmethod
    def from_settings(cls, name: str, settings: Settings) -> ChunkedBackend:
        return cls(name, url=settings.url, token=settings.resolve_token(), part_size=settings.part_size,
                   connect_timeout=settings.timeout.connect, read_timeout=settings.timeout.read,
                   verify=settings.tls_verify(), batch=settings.batch, checksum=settings.checksum)

    def _http(self) -> requests.Session:
        """One requests.Session per worker thread (they are not thread-safe).

        What requests would look up in the environment on every request (proxies, a CA
        bundle, ~/.netrc) is looked up once here, for the target's URL."""
        http = getattr(self._local, "http", None)
        if http is None:
            http = requests.Session()
            http.headers.update(self._headers)
            http.verify = self._verify
            if self._verify is True:
                http.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
            http.proxies.update(get_environ_proxies(self.url))
            if "Authorization" not in self._headers and (netrc := get_netrc_auth(self.url)):
                http.auth = netrc
            http.trust_env = False
            self._local.http = http
            with self._sessions_lock:
                self._sessions.append(http)
        return http

    def _direct(self) -> bool:
        """Whether small POSTs may bypass requests: not when the environment names a proxy or
        ~/.netrc credentials for the target (requests applies those)."""
        return not (get_environ_proxies(self.url)
                    or ("Authorization" not in self._headers and get_netrc_auth(self.url)))

    def _small_request_pool(self) -> urllib3.PoolManager:
        """The pool for small whole-file POSTs, verifying TLS as requests would."""
        tls: dict[str, Any] = {"cert_reqs": "CERT_NONE"} if self._verify is False else {"cert_reqs": "CERT_REQUIRED"}
        if self._verify is not False:
            bundle = self._verify if isinstance(self._verify, str) else (
                os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or DEFAULT_CA_BUNDLE_PATH)
            tls["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
        return urllib3.PoolManager(maxsize=64, block=False, retries=False,
                                   timeout=urllib3.Timeout(connect=self._timeout[0], read=self._timeout[1]), **tls)

    def _post_small(self, body: bytes, headers: dict[str, str]) -> _Answer:
        """One POST through ``plainhttp`` or the pool; a dropped connection or a timeout
        becomes a TransientError with the reason requests' errors get in ``request``."""
        if self._plain is not None:
            answer = _Answer(self._plain.post(body, {**self._headers, **headers}))
            self._learn(answer.headers)
            return answer
        try:
            resp = self._pool.request("POST", self.url, body=body, headers={**self._headers, **headers},
                                      redirect=False, retries=False)
        except urllib3.exceptions.NewConnectionError as exc:  # (a ConnectTimeoutError to urllib3)
            raise TransientError(f"POST failed: {exc}", reason="connection") from exc
        except urllib3.exceptions.TimeoutError as exc:
            raise TransientError(f"POST timed out: {exc}", reason="timeout") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"POST failed: {exc}", reason="connection") from exc
        self._learn(resp.headers)
        return _Answer(resp)

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        """One request; a dropped connection or a timeout becomes a TransientError."""
        try:
            resp = self._http().request(method, url, timeout=self._timeout, allow_redirects=False, **kw)
        except requests.Timeout as exc:
            raise TransientError(f"{method} timed out: {exc}", reason="timeout") from exc
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(f"{method} failed: {exc}", reason="connection") from exc
        self._learn(resp.headers)
        return resp

    def _learn(self, headers: Any) -> None:
        """What the server's answer says it also takes: raw parts, batches of small files,
        SHA-256 sessions."""
        self._heard = True
        if headers.get("Syncd-Raw-Parts") == "1":
            self.raw_parts = True
        offered = headers.get(checksums.HEADER) or ""
        self.sha256 = "sha256" in {name.strip().lower() for name in offered.split(",")}
        try:  # every answer of a server that takes batches says so: one that stops, stops them
            self.server_batch = max(0, int(headers.get(BATCH_HEADER) or 0))
        except ValueError:
            self.server_batch = 0

    def plan(self, item: UploadItem) -> Capabilities:
        single_request_max = min(self.part_size, SINGLE_REQUEST_MAX)
        checksum = checksums.DEFAULT
        if item.size > single_request_max and self.checksum == "auto":
            if not self._heard:
                self._probe()
            if self.sha256:
                checksum = "sha256"
        return Capabilities(part_size=self.part_size, min_part=1, max_part=5 * 1024**3, max_parts=2**31,
                            concurrency=1, verifies=checksum,
                            single_request_max=single_request_max)

    def _probe(self) -> None:
        """Before the first session: what the server takes, from the headers of its answer to
        ``GET {url}`` (``syncd serve`` answers it with a 400 that asks for an upload key).
        A server out of reach leaves the question to the next file's plan."""
        try:
            self.request("GET", self.url)
        except UploadError as exc:
            log.debug("%s: asking the server what it takes failed: %s", self.name, exc)

    def batch_limit(self) -> BatchLimit:
        files = min(self.batch, self.server_batch)
        return BatchLimit(files, min(BATCH_FILE_MAX, self.part_size), self.part_size) if files > 1 else NO_BATCH

    def create(self, item: UploadItem) -> ChunkedSession:
        return ChunkedSession(self, item, url=None)

    def resume(self, item: UploadItem, handle: str | None) -> ChunkedSession:
        return ChunkedSession(self, item, url=handle)

    def upload_whole(self, item: UploadItem, body: BinaryIO, md5_hex: str) -> RemoteFile:
        fields: list[tuple[str, Any]] = [("filename", item.remote_name), ("md5", md5_hex)]
        file_name = posixpath.basename(item.remote_name)
        small = item.size <= SMALL_FORM_MAX
        if small:
            form, content_type = encode_multipart_formdata(
                [*fields, ("file", (file_name, body.read(), "application/octet-stream"))])
            data: Any = form
        else:
            encoder = MultipartEncoder(fields=[*fields, ("file", (file_name, body, "application/octet-stream"))])
            content_type, data = encoder.content_type, SizedStream(encoder, encoder.len)
        headers = {"Content-Type": content_type}
        if item.key:
            headers[UPLOAD_KEY_HEADER] = item.key
        if small and (self._plain is not None or self._pool is not None):
            resp: requests.Response | _Answer = self._post_small(data, headers)
        else:
            resp = self.request("POST", self.url, data=data, headers=headers)
        data = raise_for_answer(resp, on_session=False)
        return _remote_file(data, item, md5_hex)

    def upload_batch(self, files: Sequence[WholeFile]) -> list[RemoteFile | UploadError]:
        fields: list[tuple[str, Any]] = []
        for f in files:
            fields += [("filename", f.item.remote_name), ("md5", f.md5_hex)]
            if f.item.key:
                fields.append(("key", f.item.key))
            fields.append(("file", (posixpath.basename(f.item.remote_name), f.data, "application/octet-stream")))
        form, content_type = encode_multipart_formdata(fields)
        headers = {"Content-Type": content_type, BATCH_HEADER: "1"}
        if self._plain is not None or self._pool is not None:
            resp: requests.Response | _Answer = self._post_small(form, headers)
        else:
            resp = self.request("POST", self.url, data=form, headers=headers)
        entries = raise_for_answer(resp, on_session=False).get("files")
        if not isinstance(entries, list) or len(entries) != len(files) or \
                not all(isinstance(e, dict) for e in entries):
            raise TransientError(f"a batch of {len(files)} files was answered with "
                                 f"{len(entries) if isinstance(entries, list) else 'no'} entries", reason="protocol")
        return [_batch_result(entry, f) for entry, f in zip(entries, files, strict=True)]

    def close(self) -> None:
        with self._sessions_lock:
            for http in self._sessions:
                http.close()
            self._sessions.clear()
        if self._pool is not None:
            self._pool.clear()
        if self._plain is not None:
            self._plain.close()


PROTOCOL = ProtocolEntry("chunked", Settings, ChunkedBackend.from_settings)


def _remote_file(data: dict[str, Any], item: UploadItem, digest: str) -> RemoteFile:
    algorithm, expected = checksums.split(digest)
    stored = data.get(algorithm)
    if isinstance(stored, str) and stored and stored.lower() != expected:
        raise ChecksumMismatch(f"server stored {algorithm.upper()} {stored}, expected {expected}")
    return RemoteFile(
        name=str(data.get("path") or data.get("filename") or item.remote_name),
        size=int(data.get("size", data.get("offset", item.size))),
        md5=checksums.tag(algorithm, stored.lower()) if isinstance(stored, str) and stored else None,
        location=data.get("url"),
        verified=algorithm,
    )


def _batch_result(entry: dict[str, Any], f: WholeFile) -> RemoteFile | UploadError:
    """One file's entry of a batch's answer: what the server holds, or the error a request
    of that file alone would have raised."""
    try:
        status = int(entry.get("http_status", 0))
    except (TypeError, ValueError, OverflowError):
        status = 0
    if status == 200:
        try:
            return _remote_file(entry, f.item, f.md5_hex)
        except (ChecksumMismatch, TypeError, ValueError) as exc:
            return exc if isinstance(exc, ChecksumMismatch) else \
                TransientError(f"unexpected batch entry: {exc}", reason="protocol")
    detail = " ".join(str(entry.get("detail", "")).split())[:300]
    if status == 400 and "checksum does not match" in detail:
        return ChecksumMismatch(detail)
    if not 400 <= status < 600:
        return TransientError(f"unexpected batch entry status {entry.get('http_status')!r}", reason="protocol")
    try:
        raise_for_http_status(status, detail, retry_after=None, gone=None)
    except UploadError as exc:
        return exc


class ChunkedSession:
    """An offset session: parts must arrive in order, and the server reports how many bytes
    it holds; ``committed`` turns that offset into the plan's whole parts."""

    def __init__(self, backend: ChunkedBackend, item: UploadItem, *, url: str | None):
        self._backend = backend
        self._item = item
        self.handle = url
        self.checksum: str | None = item.checksum if url is None else None
        """what the server verifies the session with: asked for by a new session, told by
        the server's answers (an answer without it: MD5)"""
        self._offset: int | None = None
        """bytes the server holds, as far as we know (None: not asked yet)"""
        self._complete = False

    def refresh(self) -> None:
        resp = self._backend.request("GET", self.handle)
        data = raise_for_answer(resp, on_session=True)
        self._offset = int(data.get("offset", 0))
        self._complete = data.get("status") == 2
        self._note_checksum(data)

    def _note_checksum(self, answer: dict[str, Any]) -> None:
        said = answer.get("checksum")
        self.checksum = said.lower() if isinstance(said, str) and said else checksums.DEFAULT

    def _find_by_key(self) -> None:
        """A session made by a first part whose answer was lost: ``syncd serve`` finds it by
        its upload key (``GET {url}`` with ``Upload-Key``); other servers know nothing of keys."""
        if self.handle is not None or not self._item.key:
            return
        resp = self._backend.request("GET", self._backend.url, headers={UPLOAD_KEY_HEADER: self._item.key})
        try:
            data = resp.json() if resp.status_code == 200 else None
        except ValueError:
            return
        if isinstance(data, dict) and data.get("upload_key") == self._item.key and data.get("url"):
            self.handle = urljoin(self._backend.url, str(data["url"]))

    def committed(self) -> dict[int, PartReceipt]:
        self._find_by_key()
        if self.handle is None:
            return {}  # not made yet (or the server knows no keys: a first part sent again
            # with the same key finds it on servers that do)
        self.refresh()
        size, part_size = self._item.size, self._item.part_size
        held = size if self._complete else min(self._offset, size)
        whole = held // part_size if part_size else 0
        receipts = {n: PartReceipt(number=n, size=part_size) for n in range(1, whole + 1)}
        if held == size and size % part_size:
            receipts[whole + 1] = PartReceipt(number=whole + 1, size=size - whole * part_size)
        return receipts

    def send_part(self, part: Part) -> PartReceipt:
        start, end = part.offset, part.offset + part.size
        known = self._offset or 0
        if self.handle is not None and known > start:
            # The server holds the start of this part (a part cut short earlier): send the rest.
            skip = min(known, end) - start
            while skip:
                skip -= len(part.body.read(min(skip, STREAM_BLOCK)))
            start = min(known, end)
            if start == end:
                return PartReceipt(number=part.number, size=part.size)
        headers = {"Content-Range": f"bytes {start}-{end - 1}/{self._item.size}"}
        if self.handle is not None and self._backend.raw_parts:
            headers["Content-Type"] = RAW_PART_TYPE
            data: Any = SizedStream(part.body, end - start)
        else:
            encoder = MultipartEncoder(fields=[
                ("filename", self._item.remote_name),
                ("file", (posixpath.basename(self._item.remote_name), part.body, "application/octet-stream")),
            ])
            headers["Content-Type"] = encoder.content_type
            data = SizedStream(encoder, encoder.len)
        if self.handle is None:
            if self._item.key:
                headers[UPLOAD_KEY_HEADER] = self._item.key
            if self._item.checksum != checksums.DEFAULT:
                headers[checksums.HEADER] = self._item.checksum
        try:
            resp = self._backend.request("PUT", self.handle or self._backend.url, data=data, headers=headers)
            answer = raise_for_answer(resp, on_session=self.handle is not None)
        except OffsetMismatch as exc:
            if self.handle is None and exc.session_url:
                self.handle = urljoin(self._backend.url, str(exc.session_url))
            self._offset = exc.expected
            raise
        if self.handle is None:
            if "url" not in answer:
                raise PermanentError("server made a session without a url")
            self.handle = urljoin(self._backend.url, str(answer["url"]))
        self._offset = int(answer.get("offset", end))
        if answer.get("status") == 2:
            self._complete = True
        self._note_checksum(answer)
        return PartReceipt(number=part.number, size=part.size)

    def complete(self, parts: Sequence[PartReceipt], md5_hex: str) -> RemoteFile:
        algorithm, hexdigest = checksums.split(md5_hex)
        if self._complete:
            # A previous run completed it and crashed before writing that down; the
            # server checked our checksum then.
            return RemoteFile(name=self._item.remote_name, size=self._item.size, md5=None,
                              location=self.handle, verified=algorithm)
        if self.checksum is not None and self.checksum != algorithm:
            raise ChecksumMismatch(f"the server verifies this upload with {self.checksum}, not {algorithm}")
        resp = self._backend.request("POST", self.handle, data={algorithm: hexdigest})
        try:
            data = raise_for_answer(resp, on_session=True)
        except PermanentError as exc:
            if 'already been marked as "complete"' in str(exc):
                return RemoteFile(name=self._item.remote_name, size=self._item.size, md5=None,
                                  location=self.handle, verified=algorithm)
            raise
        self._complete = True
        return _remote_file(data, self._item, md5_hex)

    def abort(self) -> None:
        try:
            self._find_by_key()
        except TransientError:
            return
        if self.handle is None or self._complete:
            return
        try:
            self._backend.request("DELETE", self.handle)
        except TransientError:
            pass  # best effort; an idle session expires on the server
