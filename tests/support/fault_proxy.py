"""A fault-injecting HTTP reverse proxy on 127.0.0.1, for tests.

It sits between a client (the daemon) and a real server and, request by request, either
forwards or misbehaves, as its rules say::

    proxy = FaultProxy(upstream_url, seed=7, rules=[
        Rule(Respond(503), probability=0.30),
        Rule(Reset(), probability=0.05),              # cut at a random point of the body
        Rule(Respond(429, retry_after=1), probability=0.05),
        Rule(Respond(413), match=Match(filename="huge"), times=1),
        Rule(Forward(bandwidth=2 * MiB)),             # everything else, at 2 MiB/s
    ]).start()
    ...
    proxy.set_rules([Rule(Reset(upstream=False))])    # "the server is down"
    ...
    proxy.stop()

For each request one number is drawn from a ``random.Random(seed)``; the matching rules
(in order, skipping those whose ``times`` are used up) each own a band of
``probability`` of it, so ``probability`` is the share of matching requests a rule gets.
A request no rule takes is forwarded untouched. With the same seed and the same order
of requests the same requests fail.

Bodies are streamed in both directions (a part can be 50 MiB); only the first
``PEEK`` bytes of a request are looked at, to learn the upload's ``filename`` form field,
except for a batch of small files (``Syncd-Batch: 1``, at most ``BATCH_PEEK`` bytes), whose
whole body is read first to learn every file it carries (``filenames``).
The answer that creates a session (``{"url": ..., "filename": ...}``) teaches the proxy
the session's path, so later requests to that session carry the filename too.

``proxy.seen`` lists every request: monotonic start and end, method, path,
Content-Range, filename, outcome, bytes received from the client and sent upstream.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from tests.support.proxy_thread import ProxyThread

MiB = 1024 * 1024
PEEK = 2048
BATCH_PEEK = 64 * MiB
CHUNK = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade"}
_FILENAME_FIELD = re.compile(rb'name="filename"\r\n(?:[^\r\n]+\r\n)*\r\n([^\r]*)\r\n')
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def _parse_range(value: str | None) -> tuple[int, int, int] | None:
    m = _RANGE.fullmatch(value or "")
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


# --- what a rule does ----------------------------------------------------------------------

@dataclass(frozen=True)
class Forward:
    """Pass the request on, after ``delay`` seconds, its body at most ``bandwidth`` bytes/s
    (shared by every request this action handles: one slow link)."""

    delay: float = 0.0
    bandwidth: float | None = None


@dataclass(frozen=True)
class Respond:
    """Answer ``status`` with ``{"detail": detail}`` (and ``Retry-After``), after reading the
    body. With ``forward`` the request first goes to the server, which acts on it, and the
    server's answer is replaced: a lost answer."""

    status: int
    detail: str | None = None
    retry_after: float | None = None
    forward: bool = False


@dataclass(frozen=True)
class Reset:
    """Reset the client's connection (TCP RST) once ``after_bytes`` of its body went to the
    server (``None``: a random point of the body). A request with no more body than that
    is forwarded whole and the connection reset before the answer (a lost answer). With
    ``upstream=False`` nothing reaches the server: it looks down."""

    after_bytes: int | None = 0
    upstream: bool = True


@dataclass(frozen=True)
class Stall:
    """Read the body, then answer nothing until the client gives up (or ``max_seconds``)."""

    max_seconds: float = 60.0


Action = Forward | Respond | Reset | Stall


@dataclass(frozen=True)
class RequestInfo:
    method: str
    path: str
    content_range: str | None
    content_length: int | None
    filename: str | None
    query: str = ""
    """the raw query string (S3 names parts and uploads there: ``partNumber=2&uploadId=...``)"""
    headers: dict[str, str] = field(default_factory=dict)
    """the request's headers, names in lower case"""
    upload_offset: int | None = None
    """the tus ``Upload-Offset`` header, if any"""
    filenames: tuple[str, ...] = ()
    """every file a batch carries (the first is ``filename``)"""

    @property
    def range(self) -> tuple[int, int, int] | None:
        """(start, end inclusive, total) of the Content-Range, if any."""
        return _parse_range(self.content_range)


@dataclass(frozen=True)
class Match:
    """Which requests a rule applies to; every given criterion must hold."""

    method: str | None = None
    """"PUT", or several: "PUT|POST\""""
    path: str | None = None
    """a regular expression searched in the path"""
    filename: str | None = None
    """a regular expression searched in the upload's filename, or in each file of a batch
    (unknown: no match)"""
    when: Callable[[RequestInfo], bool] | None = None

    def __call__(self, info: RequestInfo) -> bool:
        if self.method is not None and info.method not in self.method.split("|"):
            return False
        if self.path is not None and not re.search(self.path, info.path):
            return False
        if self.filename is not None and not any(re.search(self.filename, name)
                                                 for name in info.filenames or filter(None, [info.filename])):
            return False
        return self.when is None or bool(self.when(info))


@dataclass(eq=False)
class Rule:
    action: Action
    match: Match = Match()
    probability: float = 1.0
    times: int | None = None
    """how often the rule may fire; None: no limit"""
    fired: int = field(default=0, init=False)

    @property
    def spent(self) -> bool:
        return self.times is not None and self.fired >= self.times


@dataclass
class Seen:
    """One request, as the proxy saw it."""

    n: int
    started: float
    method: str
    path: str
    content_range: str | None
    content_length: int | None
    filename: str | None
    upload_offset: int | None = None
    """the tus ``Upload-Offset`` header, if any"""
    query: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    filenames: tuple[str, ...] = ()
    """every file a batch carries (the first is ``filename``)"""
    action: str = "forward"
    """the action that handled it ("forward", "respond", "reset", "stall"), or "upstream-down"
    when the server could not be reached"""
    outcome: str = ""
    """the status the client got ("200", "503"...), "reset", "stalled", or "client-gone" (the
    client went away before its body was in)"""
    status: int | None = None
    upstream_status: int | None = None
    retry_after: float | None = None
    received: int = 0
    """body bytes read from the client"""
    forwarded: int = 0
    """body bytes sent to the server"""
    ended: float = 0.0

    @property
    def range(self) -> tuple[int, int, int] | None:
        return _parse_range(self.content_range)

    @property
    def names(self) -> tuple[str, ...]:
        """The files the request carries: a batch's, or its one ``filename`` (if known)."""
        return self.filenames or ((self.filename,) if self.filename is not None else ())

    @property
    def key(self) -> tuple:
        """What identifies "the same request" across its retries."""
        return self.method, self.filenames or self.filename or self.path, self.content_range

    @property
    def failed(self) -> bool:
        """The client did not get the server's own answer."""
        return self.action != "forward" or self.outcome == "client-gone"


class _Cut(Exception):
    """Raised inside the upstream body to cut it."""


class _ClientGone(Exception):
    pass


class _Bucket:
    """Paces bytes to ``rate`` per second, shared by every request that draws from it."""

    def __init__(self, rate: float):
        self.rate = rate
        self.free_at = time.monotonic()

    async def take(self, n: int) -> None:
        now = time.monotonic()
        self.free_at = max(self.free_at, now) + n / self.rate
        await asyncio.sleep(max(0.0, self.free_at - now - n / self.rate))


class _Body:
    """The client's request body: a peeked prefix, then the rest of the stream."""

    def __init__(self, request: web.BaseRequest, seen: Seen):
        self.request = request
        self.seen = seen
        self.prefix = b""
        self.present = False
        self.gone = False

    async def peek(self, most: int = PEEK) -> bytes:
        want = min(most, self.seen.content_length if self.seen.content_length is not None else most)
        while len(self.prefix) < want:
            block = await self._read(want - len(self.prefix))
            if not block:
                break
            self.prefix += block
        return self.prefix

    async def _read(self, n: int) -> bytes:
        try:
            block = await self.request.content.read(n)
        except (aiohttp.ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
            self.gone = True
            raise _ClientGone(str(exc)) from None
        self.seen.received += len(block)
        return block

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        if self.prefix:
            prefix, self.prefix = self.prefix, b""
            yield prefix
        while True:
            block = await self._read(size)
            if not block:
                if self.seen.content_length is not None and self.seen.received < self.seen.content_length:
                    self.gone = True
                    raise _ClientGone("body ended early")
                return
            yield block

    async def drain(self) -> None:
        async for _ in self.chunks():
            pass


# --- the proxy ------------------------------------------------------------------------------

class FaultProxy(ProxyThread):
    name = "fault proxy"

    def __init__(self, upstream: str, *, seed: int = 0, rules: Sequence[Rule] = (),
                 upstream_down: str = "502"):
        """``upstream``: the server's base URL (any path is ignored); ``upstream_down``: what
        the client gets when the server cannot be reached, ``"502"`` or ``"reset"``."""
        super().__init__()
        parts = urlsplit(upstream)
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.upstream_netloc = parts.netloc
        self.upstream_down = upstream_down
        self.rng = random.Random(seed)
        self._rules: list[Rule] = list(rules)
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        self._sessions: dict[str, str] = {}  # session path -> filename
        self._buckets: dict[int, _Bucket] = {}

    # --- control, from the test's thread ------------------------------------------------

    def url_for(self, url: str) -> str:
        """``url`` (on the upstream server) as reached through the proxy."""
        return url.replace(f"//{self.upstream_netloc}", f"//127.0.0.1:{self.port}", 1)

    def set_rules(self, rules: Sequence[Rule]) -> None:
        with self._lock:
            self._rules = list(rules)

    @property
    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def requests(self, *, filename: str | None = None, method: str | None = None) -> list[Seen]:
        with self._lock:
            seen = list(self.seen)
        return [s for s in seen if (filename is None or filename in s.names)
                and (method is None or s.method == method)]

    @property
    def bytes_received(self) -> int:
        with self._lock:
            return sum(s.received for s in self.seen)

    # --- the event loop thread ------------------------------------------------------------

    def _client_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=120),
            auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))

    def _server(self) -> web.Server:
        return web.Server(self._handle, access_log=None, handler_cancellation=False)

    def _choose(self, info: RequestInfo) -> Rule | None:
        draw = self.rng.random()
        band = 0.0
        with self._lock:
            for rule in self._rules:
                if rule.spent or not rule.match(info):
                    continue
                band += rule.probability
                if draw < band:
                    rule.fired += 1
                    return rule
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        length = request.content_length
        offset = request.headers.get("Upload-Offset", "")
        seen = Seen(n=0, started=time.monotonic(), method=request.method, path=request.path,
                    content_range=request.headers.get("Content-Range"), content_length=length,
                    filename=self._sessions.get(request.path), query=request.query_string,
                    headers={k.lower(): v for k, v in request.headers.items()},
                    upload_offset=int(offset) if offset.isdigit() else None)
        with self._lock:
            seen.n = len(self.seen)
            self.seen.append(seen)
        if request.headers.get("Expect", "").lower() == "100-continue":
            # what a server says before the body comes (botocore waits 1 s for it otherwise)
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = _Body(request, seen)
        body.present = request.body_exists
        try:
            if body.present:
                batch = seen.headers.get("syncd-batch") == "1"
                names = [m.decode("utf-8", "replace") for m in
                         _FILENAME_FIELD.findall(await body.peek(BATCH_PEEK if batch else PEEK))]
                if batch:
                    seen.filenames = tuple(names)
                if names and seen.filename is None:
                    seen.filename = names[0]
            info = RequestInfo(seen.method, seen.path, seen.content_range, length, seen.filename, seen.query,
                               seen.headers, upload_offset=seen.upload_offset, filenames=seen.filenames)
            rule = self._choose(info)
            action = rule.action if rule is not None else Forward()
            seen.action = type(action).__name__.lower()
            if isinstance(action, Forward):
                return await self._forward(request, body, seen, action)
            if isinstance(action, Respond):
                return await self._respond(request, body, seen, action)
            if isinstance(action, Reset):
                return await self._reset(request, body, seen, action)
            return await self._stall(request, body, seen, action)
        except _ClientGone:
            seen.outcome = "client-gone"
            return self._dead(request)
        finally:
            seen.ended = time.monotonic()

    # --- actions --------------------------------------------------------------------------

    def _bucket(self, action: Forward) -> _Bucket | None:
        if action.bandwidth is None:
            return None
        return self._buckets.setdefault(id(action), _Bucket(action.bandwidth))

    async def _upstream(self, request: web.BaseRequest, body: _Body, seen: Seen, *,
                        bucket: _Bucket | None = None, cut_after: int | None = None
                        ) -> tuple[int, list[tuple[str, str]], bytes] | None:
        """Send the request on. Returns the server's answer, or None if the body was cut."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "expect"]
        cut = False

        async def stream() -> AsyncIterator[bytes]:
            nonlocal cut
            size = CHUNK if bucket is None else max(1024, min(CHUNK, int(bucket.rate / 20)))
            async for block in body.chunks(size):
                if cut_after is not None and seen.forwarded + len(block) > cut_after:
                    block = block[:cut_after - seen.forwarded]
                    if block:
                        yield block
                        seen.forwarded += len(block)
                    cut = True
                    raise _Cut()
                if bucket is not None:
                    await bucket.take(len(block))
                yield block
                seen.forwarded += len(block)

        data = stream() if body.present else None
        try:
            async with self._client.request(request.method, self.upstream + request.path_qs,
                                            headers=headers, data=data, allow_redirects=False) as up:
                payload = await up.read()
                # a HEAD's Content-Length is the size of what a GET would return: keep it
                answer = (up.status, [(k, v) for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP
                                      and (k.lower() != "content-length" or request.method == "HEAD")], payload)
        except _ClientGone:
            raise
        except (aiohttp.ClientError, OSError, _Cut, TimeoutError) as exc:
            if cut:
                return None
            if body.gone:
                raise _ClientGone(str(exc)) from None
            raise _UpstreamError(str(exc)) from None
        if cut:  # the server answered before the whole body arrived
            return None
        seen.upstream_status = answer[0]
        self._learn(answer[2])
        return answer

    def _learn(self, payload: bytes) -> None:
        """Remember which filename a newly created session belongs to."""
        try:
            doc = json.loads(payload)
        except ValueError:
            return
        if isinstance(doc, dict) and isinstance(doc.get("url"), str) and isinstance(doc.get("filename"), str):
            self._sessions.setdefault(urlsplit(doc["url"]).path, doc["filename"])

    async def _forward(self, request: web.BaseRequest, body: _Body, seen: Seen, action: Forward):
        if action.delay:
            await self._sleep(action.delay)
        try:
            answer = await self._upstream(request, body, seen, bucket=self._bucket(action))
        except _UpstreamError:
            return await self._upstream_down(request, body, seen)
        assert answer is not None
        status, headers, payload = answer
        seen.status = status
        seen.outcome = str(status)
        return web.Response(status=status, headers=headers, body=payload)

    async def _upstream_down(self, request: web.BaseRequest, body: _Body, seen: Seen):
        seen.action = "upstream-down"  # what the client gets is the proxy's, not the server's
        if self.upstream_down == "reset":
            seen.outcome = "reset"
            return self._dead(request)
        seen.status = 502
        seen.outcome = "502"
        return web.json_response({"detail": "fault proxy: upstream unreachable"}, status=502)

    async def _respond(self, request: web.BaseRequest, body: _Body, seen: Seen, action: Respond):
        if action.forward:
            try:
                await self._upstream(request, body, seen)
            except _UpstreamError:
                pass
        else:
            await body.drain()
        headers = {}
        if action.retry_after is not None:
            headers["Retry-After"] = f"{action.retry_after:g}"
            seen.retry_after = action.retry_after
        seen.status = action.status
        seen.outcome = str(action.status)
        detail = action.detail or f"fault proxy: injected HTTP {action.status}"
        return web.json_response({"detail": detail}, status=action.status, headers=headers)

    async def _reset(self, request: web.BaseRequest, body: _Body, seen: Seen, action: Reset):
        if action.upstream:
            after = action.after_bytes
            if after is None:
                after = self.rng.randrange(max(1, seen.content_length or 1))
            try:
                await self._upstream(request, body, seen, cut_after=after)
            except _UpstreamError:
                pass
        seen.outcome = "reset"
        return self._dead(request)

    async def _stall(self, request: web.BaseRequest, body: _Body, seen: Seen, action: Stall):
        await body.drain()
        deadline = time.monotonic() + action.max_seconds
        transport = request.transport
        while time.monotonic() < deadline and transport is not None and not transport.is_closing():
            if await self._sleep(0.05):
                break
        seen.outcome = "stalled"
        return self._dead(request)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return True at once when the proxy stops."""
        assert self._stop is not None
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
            return True
        except TimeoutError:
            return False

    @staticmethod
    def _dead(request: web.BaseRequest) -> web.StreamResponse:
        """Reset the client's connection; the returned answer is never sent."""
        transport = request.transport
        if transport is not None and not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            transport.abort()
        raise asyncio.CancelledError  # aiohttp drops a request whose handler was cancelled


class _UpstreamError(Exception):
    pass


# --- reading the log ------------------------------------------------------------------------

def retry_runs(seen: Sequence[Seen]) -> list[list[Seen]]:
    """Consecutive tries of one request, each run starting after a success: the tries
    whose gaps a backoff policy decides. A run of one is a request that worked first time."""
    runs: dict[tuple, list[Seen]] = {}
    out: list[list[Seen]] = []
    for s in sorted(seen, key=lambda s: s.started):
        run = runs.get(s.key)
        if run is None or not run[-1].failed:
            run = []
            out.append(run)
            runs[s.key] = run
        run.append(s)
    return out
