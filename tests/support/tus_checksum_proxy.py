"""A small HTTP proxy in front of @tus/server that adds the tus checksum extension, and that
can damage a request body on its way.

Neither @tus/server nor tusd offers the checksum extension, so this proxy **stands in for a
server that does**: it advertises ``checksum`` and ``Tus-Checksum-Algorithm`` on OPTIONS,
checks every ``Upload-Checksum`` of a PATCH (or of a POST with a body) against the body it
received, answers 460 on a mismatch without passing the body on, and forwards everything
else untouched. It never forwards a body it has not checked.

``corrupt(times)`` flips one byte of the next ``times`` bodies (PATCH, or POST with a
body) as they arrive, before the checksum check: what a damaged link does. With
``offer_checksum=False`` the proxy offers nothing and checks nothing, so a damaged body
reaches the server, which stores it: what only a read-back can catch.

Bodies are read whole (test parts are small).
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.proxy_thread import ProxyThread

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "transfer-encoding", "upgrade", "content-length"}


@dataclass
class ChecksumLog:
    checksums: list[str | None] = field(default_factory=list)
    """the ``Upload-Checksum`` of every PATCH / POST with a body, in order (None: none sent)"""
    mismatches: int = 0
    """bodies answered with 460"""
    corrupted: int = 0


class TusChecksumProxy(ProxyThread):
    name = "checksum proxy"

    def __init__(self, upstream: str, *, algorithms: Sequence[str] = ("md5", "sha1"), offer_checksum: bool = True):
        super().__init__()
        self.upstream = upstream.split("/files")[0].rstrip("/")
        self.algorithms = tuple(algorithms)
        self.offer_checksum = offer_checksum
        self.log = ChecksumLog()
        self._corrupt_left = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files"

    def corrupt(self, times: int | None) -> None:
        """Damage the next ``times`` bodies (None: every body from now on; 0: none)."""
        with self._lock:
            self._corrupt_left = -1 if times is None else times

    def _take_corruption(self) -> bool:
        with self._lock:
            if self._corrupt_left == 0:
                return False
            if self._corrupt_left > 0:
                self._corrupt_left -= 1
            return True

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        carries_bytes = request.method == "PATCH" or (request.method == "POST" and body)
        if carries_bytes:
            claimed = request.headers.get("Upload-Checksum")
            self.log.checksums.append(claimed)
            if body and self._take_corruption():
                body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.log.corrupted += 1
            if self.offer_checksum and claimed is not None:
                algorithm, _, value = claimed.partition(" ")
                if algorithm not in self.algorithms:
                    return web.Response(status=400, text=f"unsupported checksum algorithm {algorithm!r}")
                if base64.b64encode(hashlib.new(algorithm, body).digest()).decode() != value.strip():
                    self.log.mismatches += 1
                    return web.Response(status=460, reason="Checksum Mismatch", text="Checksum Mismatch",
                                        headers={"Tus-Resumable": "1.0.0"})
            if not self.offer_checksum:
                headers.pop("Upload-Checksum", None)
        async with self._client.request(request.method, self.upstream + request.path_qs, headers=headers,
                                        data=body if body else None, allow_redirects=False) as up:
            payload = await up.read()
            out = {k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.method == "OPTIONS" and self.offer_checksum:
            out["Tus-Extension"] = ",".join(filter(None, [out.get("Tus-Extension", ""), "checksum"]))
            out["Tus-Checksum-Algorithm"] = ",".join(self.algorithms)
        return web.Response(status=up.status, headers=out, body=payload)
