"""The ``tus`` protocol: resumable uploads to any tus 1.0 server (tusd, @tus/server,
Supabase Storage, Cloudflare Stream, Vimeo...).

- ``OPTIONS {url}`` once per target: the version, the extensions, ``Tus-Max-Size`` and the
  checksum algorithms the server offers; syncd uses what is there.
- ``POST {url}`` with ``Upload-Length`` and ``Upload-Metadata`` (``filename`` is the remote
  name) makes an upload; its ``Location`` is the session handle, journaled at once, before
  any byte is sent. creation-with-upload is not used, even for small files: tus has no upload
  keys, so a lost answer to a creation that carried the whole file would leave a second
  finished copy on the server (a second video on a media platform); one more request per
  small file buys exactly-once. Only an empty file is whole at its creation.
- ``PATCH {upload}`` with ``Upload-Offset`` sends bytes as ``application/offset+octet-stream``,
  streamed from disk; ``409`` (another offset) re-reads the offset with ``HEAD``. With the
  checksum extension each PATCH carries ``Upload-Checksum``, and ``460`` sends it again.
- ``HEAD {upload}`` gives ``Upload-Offset``: the server's view wins. ``404`` / ``410`` (or a
  known ``Upload-Expires`` in the past) start a new upload.
- ``DELETE {upload}`` frees an abandoned upload when the server offers termination.

tus has no completion call and most servers check nothing but the byte count, so what a
finished upload is verified by is the target's ``verify`` policy: ``server`` accepts what
the server checks (sizes, or each PATCH's checksum), ``read_back`` downloads the upload
(``GET``) and compares its MD5 with the local one, ``size`` accepts sizes explicitly.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import logging
import mimetypes
import posixpath
import queue
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urljoin

import requests
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

from syncd import __version__
from syncd.config import TargetSettings, http_url, read_secret
from syncd.units import format_size
from syncd.upload.base import (
    NO_BATCH,
    AuthRejected,
    BatchLimit,
    Capabilities,
    ChecksumMismatch,
    NotStarted,
    OffsetMismatch,
    Part,
    PartReceipt,
    PermanentError,
    RemoteFile,
    SessionGone,
    TransientError,
    UploadItem,
)
from syncd.upload.body import STREAM_BLOCK, SizedStream
from syncd.upload.httperrors import RETRY_STATUSES, raise_for_http_status
from syncd.upload.registry import ProtocolEntry

log = logging.getLogger("syncd.upload")

TUS_VERSION = "1.0.0"
OCTET_STREAM = "application/offset+octet-stream"
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256")
"""the checksum extension's algorithms syncd computes, in order of preference"""
_METADATA_KEY = re.compile(r"^[\x21-\x2b\x2d-\x7e]+$")  # printable ASCII, no space, no comma
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class HeaderSource(BaseModel):
    """A header value read from a file or an environment variable (never logged)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: Path | None = None
    env: str | None = None

    @model_validator(mode="after")
    def _one(self) -> HeaderSource:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of file, env")
        return self

    def resolve(self) -> str:
        return read_secret(file=self.file, env=self.env)


class Settings(TargetSettings):
    """A ``protocol: tus`` target: any tus 1.0 server."""

    protocol: Literal["tus"] = "tus"
    url: str
    """the creation endpoint (``POST`` makes uploads here)"""
    token_header: str = "Authorization"
    token_scheme: str = "Bearer"
    """the token goes as ``{token_header}: {token_scheme} {token}`` (no scheme: the token alone)"""
    headers: dict[str, SecretStr | HeaderSource] = {}
    metadata: dict[str, str] = {}
    """extra ``Upload-Metadata`` pairs (``filename`` is always the remote name)"""
    verify: Literal["server", "read_back", "size"] = "server"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        http_url(value)  # the check; tus servers care whether the path ends in a slash
        return value

    @field_validator("token_header")
    @classmethod
    def _token_header(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise ValueError(f"{value!r} is not an HTTP header name")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if name.lower() in _OWN_HEADERS:
                raise ValueError(f"{name!r} is set by syncd itself")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _METADATA_KEY.match(key):
                raise ValueError(f"{key!r} is not a metadata key (printable ASCII, no spaces or commas)")
            if key == "filename":
                raise ValueError("'filename' is always the remote name; it cannot be set")
        return value

    def environment_problems(self, *, skip_secrets: bool = False) -> list[str]:
        problems = super().environment_problems(skip_secrets=skip_secrets)
        if skip_secrets:
            return problems
        for name, source in self.headers.items():
            if isinstance(source, HeaderSource):
                try:
                    source.resolve()
                except ValueError as exc:
                    problems.append(f"headers.{name}: {exc}")
        return problems

    def verified_by(self) -> str:
        # Without asking the server, a tus target is only sure of the byte count; the
        # checksum extension, when the server offers it, is a bonus found at run time.
        return {"server": "size", "read_back": "read-back", "size": "size"}[self.verify]

    def accepts_size_only(self) -> bool:
        return self.verify == "size"

    def describe(self) -> str:
        return f"{self.url} (tus, parts {format_size(self.part_size)}, verify {self.verify})"

    def resolve_headers(self) -> dict[str, str]:
        """Every header the target sends besides the protocol's own: the token and ``headers``."""
        out = {}
        for name, source in self.headers.items():
            out[name] = source.resolve() if isinstance(source, HeaderSource) else source.get_secret_value()
        token = self.resolve_token()
        if token:
            out[self.token_header] = f"{self.token_scheme} {token}" if self.token_scheme else token
        return out


_OWN_HEADERS = {"tus-resumable", "upload-offset", "upload-length", "upload-metadata", "upload-checksum",
                "content-type", "content-length", "host"}


# --- what the server offers -----------------------------------------------------------------

@dataclass(frozen=True)
class ServerInfo:
    """What ``OPTIONS`` said."""

    extensions: frozenset[str]
    max_size: int | None
    checksum: str | None
    """the checksum algorithm syncd uses (one the server offers and syncd computes), or None"""

    @classmethod
    def from_headers(cls, headers: Any) -> ServerInfo:
        extensions = frozenset(e.strip() for e in headers.get("Tus-Extension", "").split(",") if e.strip())
        try:
            max_size = int(headers["Tus-Max-Size"]) if headers.get("Tus-Max-Size") else None
        except ValueError:
            max_size = None
        offered = {a.strip().lower() for a in headers.get("Tus-Checksum-Algorithm", "").split(",")}
        checksum = next((a for a in CHECKSUM_ALGORITHMS if a in offered), None) \
            if "checksum" in extensions else None
        return cls(extensions=extensions, max_size=max_size, checksum=checksum)

    @property
    def verifies(self) -> Literal["part-checksum", "size"]:
        return "part-checksum" if self.checksum else "size"


def _detail(resp: requests.Response) -> str:
    text = " ".join(resp.text.split())[:200] if resp.content else ""
    return text or resp.reason or ""


def raise_for_status(resp: requests.Response, *, what: str, on_upload: bool) -> None:
    """Nothing for a 2xx answer, else the error it means for the engine."""
    status = resp.status_code
    if 200 <= status < 300:
        return
    detail = _detail(resp)
    if status == 460:
        raise TransientError(f"{what}: the server's checksum of the body differs (HTTP 460)", reason="checksum")
    raise_for_http_status(status, detail, retry_after=resp.headers.get("Retry-After"), what=what,
                          gone=f"upload is gone (HTTP {status} on {what}: {detail})" if on_upload else None)


def _offset(resp: requests.Response, what: str) -> int:
    try:
        return int(resp.headers["Upload-Offset"])
    except (KeyError, ValueError):
        raise TransientError(f"{what}: answer without a valid Upload-Offset", reason="protocol") from None


def _expires(resp: requests.Response) -> float | None:
    value = resp.headers.get("Upload-Expires")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def encode_metadata(pairs: dict[str, str]) -> str:
    """``Upload-Metadata``: ``key base64(value)`` pairs, comma-separated."""
    return ",".join(f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}"
                    for key, value in pairs.items())


def checksum_header(algorithm: str, data: bytes | memoryview, *, md5_hex: str | None = None) -> str:
    digest = bytes.fromhex(md5_hex) if algorithm == "md5" and md5_hex else hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode('ascii')}"


_END = object()


class _ReadAhead:
    """An iterable request body of known length whose next blocks are read from disk (and
    hashed, by the engine's body) on a helper thread while this one sends: the disk read and
    the MD5 (both release the GIL) overlap the socket instead of taking turns with it.
    At most ``depth`` blocks wait in memory. ``close()`` stops and joins the helper."""

    def __init__(self, source: Any, length: int, *, depth: int = 3):
        self._source = source
        self.len = length
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._gone = threading.Event()
        """the sender stopped taking blocks (done, or the request failed)"""
        self._thread: threading.Thread | None = None

    def _read(self) -> None:
        left = self.len
        try:
            while left > 0 and not self._gone.is_set():
                block = self._source.read(min(STREAM_BLOCK, left))
                if not block:
                    break
                left -= len(block)
                self._put(block)
            self._put(_END)
        except BaseException as exc:  # Interrupted, FileChanged: the sender raises it
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._gone.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        self._thread = threading.Thread(target=self._read, name="syncd-tus-read", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._gone.set()
        if self._thread is not None:
            self._thread.join()


# --- the backend -----------------------------------------------------------------------------

class TusBackend:
    def __init__(self, name: str, *, url: str, part_size: int, headers: dict[str, str] | None = None,
                 metadata: dict[str, str] | None = None, verify: str = "server",
                 connect_timeout: float = 10.0, read_timeout: float = 120.0, tls_verify: bool | str = True,
                 clock: Any = time.time):
        self.name = name
        self.url = url
        self.part_size = part_size
        self.metadata = dict(metadata or {})
        self.verify = verify
        self.clock = clock
        self._timeout = (connect_timeout, read_timeout)
        self._tls_verify = tls_verify
        self._headers = {"User-Agent": f"syncd/{__version__}", "Tus-Resumable": TUS_VERSION, **(headers or {})}
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._info: ServerInfo | None = None

    @classmethod
    def from_settings(cls, name: str, settings: Settings) -> TusBackend:
        return cls(name, url=settings.url, part_size=settings.part_size, headers=settings.resolve_headers(),
                   metadata=settings.metadata, verify=settings.verify,
                   connect_timeout=settings.timeout.connect, read_timeout=settings.timeout.read,
                   tls_verify=settings.tls_verify())

    def _http(self) -> requests.Session:
        """One requests.Session per worker thread (they are not thread-safe)."""
        http = getattr(self._local, "http", None)
        if http is None:
            http = requests.Session()
            http.headers.update(self._headers)
            http.verify = self._tls_verify
            self._local.http = http
            with self._lock:
                self._sessions.append(http)
        return http

    def request(self, method: str, url: str, **kw: Any) -> requests.Response:
        """One request; a dropped connection or a timeout becomes a TransientError."""
        try:
            return self._http().request(method, url, timeout=self._timeout, allow_redirects=False, **kw)
        except requests.Timeout as exc:
            raise TransientError(f"{method} timed out: {exc}", reason="timeout") from exc
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TransientError(f"{method} failed: {exc}", reason="connection") from exc

    def info(self) -> ServerInfo:
        """What the server offers, asked once per target (``OPTIONS``)."""
        with self._lock:
            if self._info is not None:
                return self._info
        resp = self.request("OPTIONS", self.url)
        if resp.status_code in (401, 403):
            raise AuthRejected(f"authentication rejected (HTTP {resp.status_code})")
        if resp.status_code in RETRY_STATUSES:
            raise_for_status(resp, what="OPTIONS", on_upload=False)
        if 200 <= resp.status_code < 300:
            info = ServerInfo.from_headers(resp.headers)
            versions = resp.headers.get("Tus-Version", TUS_VERSION)
            if TUS_VERSION not in (v.strip() for v in versions.split(",")):
                raise PermanentError(f"the server speaks tus {versions}, not {TUS_VERSION}")
        else:  # OPTIONS is optional in tus: assume the core protocol with creation
            log.info("%s: OPTIONS answered HTTP %d; assuming tus core with creation", self.name, resp.status_code)
            info = ServerInfo(extensions=frozenset({"creation"}), max_size=None, checksum=None)
        if "creation" not in info.extensions:
            raise PermanentError(f"the tus server at {self.url} does not offer the creation extension")
        log.debug("%s: tus server offers %s (max size %s, checksum %s)", self.name,
                  ", ".join(sorted(info.extensions)), info.max_size, info.checksum)
        with self._lock:
            self._info = info
        return info

    def plan(self, item: UploadItem) -> Capabilities:
        info = self.info()
        if info.max_size is not None and item.size > info.max_size:
            raise PermanentError(f"too large for the server: {format_size(item.size)} is over its "
                                 f"Tus-Max-Size of {format_size(info.max_size)}")
        whole = 0  # only an empty file is created whole (see the module docstring)
        return Capabilities(part_size=self.part_size, min_part=1, max_part=5 * 1024**3, max_parts=2**31,
                            concurrency=1, verifies=info.verifies, single_request_max=whole,
                            part_checksum=info.checksum is not None)

    def batch_limit(self) -> BatchLimit:
        return NO_BATCH

    def _creation_headers(self, item: UploadItem) -> dict[str, str]:
        filetype = mimetypes.guess_type(posixpath.basename(item.remote_name))[0] or "application/octet-stream"
        pairs = {"filename": item.remote_name, "filetype": filetype, **self.metadata}
        return {"Upload-Length": str(item.size), "Upload-Metadata": encode_metadata(pairs)}

    def _create(self, item: UploadItem, *, body: bytes | None = None, md5_hex: str | None = None) -> TusSession:
        headers = self._creation_headers(item)
        kw: dict[str, Any] = {}
        if body is not None:
            headers["Content-Type"] = OCTET_STREAM
            algorithm = self.info().checksum
            if algorithm is not None:
                headers["Upload-Checksum"] = checksum_header(algorithm, body, md5_hex=md5_hex)
            kw["data"] = body
        resp = self.request("POST", self.url, headers=headers, **kw)
        raise_for_status(resp, what="POST", on_upload=False)
        location = resp.headers.get("Location")
        if not location:
            raise PermanentError(f"the server made an upload without a Location (HTTP {resp.status_code})")
        session = TusSession(self, item, url=urljoin(self.url, location))
        session.note(resp, sent_to=len(body) if body is not None else 0)
        return session

    def create(self, item: UploadItem) -> TusSession:
        return self._create(item)

    def resume(self, item: UploadItem, handle: str | None) -> TusSession:
        if handle is None:
            return NotStarted()  # type: ignore[return-value]  # tus knows no upload keys
        return TusSession(self, item, url=handle)

    def upload_whole(self, item: UploadItem, body: BinaryIO, md5_hex: str) -> RemoteFile:
        """An empty file: finished by its creation."""
        data = body.read(item.size) if item.size else None
        session = self._create(item, body=data, md5_hex=md5_hex)
        try:
            return session.complete([], md5_hex)
        except (ChecksumMismatch, TransientError):
            session.abort()  # the next try makes a new upload: leave no half one behind
            raise

    def close(self) -> None:
        with self._lock:
            for http in self._sessions:
                http.close()
            self._sessions.clear()


PROTOCOL = ProtocolEntry("tus", Settings, TusBackend.from_settings)


class TusSession:
    """One upload on the server: an offset that grows in order. ``committed`` turns the
    server's offset into the plan's whole parts below it."""

    checksum = None  # the whole file is MD5's (tus verifies sizes, or each part's checksum)

    def __init__(self, backend: TusBackend, item: UploadItem, *, url: str):
        self._backend = backend
        self._item = item
        self.handle: str | None = url
        self._offset: int | None = None
        """bytes the server holds, as far as we know (None: not asked yet)"""
        self._expires: float | None = None

    def note(self, resp: requests.Response, *, sent_to: int) -> None:
        """What an answer to POST or PATCH tells: the offset, and when the upload expires."""
        value = resp.headers.get("Upload-Offset")
        self._offset = int(value) if value and value.isdigit() else sent_to
        self._expires = _expires(resp) or self._expires

    def _check_expiry(self) -> None:
        if self._expires is not None and self._backend.clock() > self._expires:
            raise SessionGone("upload expired (its Upload-Expires has passed)")

    def refresh(self) -> tuple[int, int | None]:
        """(offset, length) from ``HEAD``."""
        self._check_expiry()
        resp = self._backend.request("HEAD", self.handle)
        raise_for_status(resp, what="HEAD", on_upload=True)
        self._offset = _offset(resp, "HEAD")
        self._expires = _expires(resp) or self._expires
        length = resp.headers.get("Upload-Length")
        return self._offset, int(length) if length and length.isdigit() else None

    def committed(self) -> dict[int, PartReceipt]:
        offset, length = self.refresh()
        size, part_size = self._item.size, self._item.part_size
        if length is not None and length != size:
            raise SessionGone(f"the upload on the server is {length} bytes long, the file {size}")
        held = min(offset, size)
        whole = held // part_size if part_size else 0
        receipts = {n: PartReceipt(number=n, size=part_size) for n in range(1, whole + 1)}
        if held == size and part_size and size % part_size:
            receipts[whole + 1] = PartReceipt(number=whole + 1, size=size - whole * part_size)
        if size == 0 and held == 0:
            receipts[1] = PartReceipt(number=1, size=0)
        return receipts

    def send_part(self, part: Part) -> PartReceipt:
        self._check_expiry()
        start, end = part.offset, part.offset + part.size
        known = self._offset or 0
        whole = part.body.getvalue() if part.md5 is not None and hasattr(part.body, "getvalue") else None
        if known > start:
            # The server holds the start of this part (a part cut short earlier): send the rest.
            skip = min(known, end) - start
            while skip:
                skip -= len(part.body.read(min(skip, STREAM_BLOCK)))
            start = min(known, end)
            if start == end:
                return PartReceipt(number=part.number, size=part.size)
        headers = {"Upload-Offset": str(start), "Content-Type": OCTET_STREAM}
        algorithm = self._backend.info().checksum
        if algorithm is not None:
            if whole is None:  # the engine reads parts into memory when it was asked for checksums
                raise PermanentError("a part checksum was wanted but the part is not in memory")
            sent = memoryview(whole)[start - part.offset:]
            md5_hex = part.md5 if start == part.offset else None
            headers["Upload-Checksum"] = checksum_header(algorithm, sent, md5_hex=md5_hex)
        body = SizedStream(part.body, end - start) if whole is not None else _ReadAhead(part.body, end - start)
        try:
            resp = self._backend.request("PATCH", self.handle, data=body, headers=headers)
        finally:
            if isinstance(body, _ReadAhead):
                body.close()  # the helper has finished with the file (and the MD5) before the engine goes on
        if resp.status_code == 409:
            offset, _ = self.refresh()
            raise OffsetMismatch(offset, start)
        raise_for_status(resp, what=f"PATCH at {start}", on_upload=True)
        self.note(resp, sent_to=end)
        if self._offset != end:
            raise OffsetMismatch(self._offset, end)
        return PartReceipt(number=part.number, size=part.size)

    def complete(self, parts: Sequence[PartReceipt], md5_hex: str) -> RemoteFile:
        """tus has no completion call: the server must hold every byte, and then the
        target's ``verify`` policy says what else is checked."""
        offset, length = self.refresh()
        size = self._item.size
        if offset != size or (length is not None and length != size):
            raise TransientError(f"the server holds {offset} of {size} bytes at completion", reason="protocol")
        info = self._backend.info()
        verified = info.verifies
        if self._backend.verify == "read_back":
            self._read_back(md5_hex)
            verified = "read-back"
        return RemoteFile(name=self._item.remote_name, size=size,
                          md5=md5_hex if verified == "read-back" else None,
                          location=self.handle, verified=verified)

    def _read_back(self, md5_hex: str) -> None:
        """GET the finished upload and compare its MD5 with the local file's."""
        resp = self._backend.request("GET", self.handle, stream=True)
        try:
            if resp.status_code in (404, 410, 500):
                # HEAD said every byte is there, yet the server cannot give them back: an
                # object store that lost the upload's parts (@tus/s3-store after its store
                # restarted answers 500), or a server that serves no GET. Not a copy to
                # trust: this upload is dropped and the file sent again.
                raise ChecksumMismatch(f"read back failed: the server cannot give the finished upload back "
                                       f"(GET: HTTP {resp.status_code}: {_detail(resp)}); verify: read_back "
                                       "needs a server that serves finished uploads")
            raise_for_status(resp, what="GET", on_upload=True)
            digest = hashlib.md5()
            got = 0
            try:
                for block in resp.iter_content(STREAM_BLOCK):
                    digest.update(block)
                    got += len(block)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                raise TransientError(f"GET failed: {exc}", reason="connection") from exc
        finally:
            resp.close()
        if got != self._item.size or digest.hexdigest() != md5_hex:
            raise ChecksumMismatch(f"read back {got} bytes with MD5 {digest.hexdigest()}, "
                                   f"expected {self._item.size} bytes with MD5 {md5_hex}")

    def abort(self) -> None:
        try:
            if "termination" not in self._backend.info().extensions:
                return  # the server expires it
            self._backend.request("DELETE", self.handle)
        except (TransientError, PermanentError):
            pass  # best effort
