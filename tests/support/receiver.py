"""Helpers shared by the receiver's integration tests (this module holds no tests).

Every test talks HTTP over loopback to a real receiver (``EmbeddedReceiver`` on port 0).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from syncd.server import EmbeddedReceiver, ReceiverSettings, ServerHooks

TOKEN = "receiver-test-token-7f3a"
AUTH = {"Authorization": f"Token {TOKEN}"}
TIMEOUT = 30


@contextmanager
def running(root: Path, *, hooks: ServerHooks | None = None, **settings: Any) -> Iterator[EmbeddedReceiver]:
    settings.setdefault("token", TOKEN)
    with EmbeddedReceiver(ReceiverSettings(root=root, port=0, **settings), hooks=hooks) as receiver:
        yield receiver


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def random_file(path: Path, size: int) -> str:
    """Writes ``size`` random bytes in blocks; returns their MD5."""
    digest = hashlib.md5()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 << 20))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def put_part(
    url: str,
    data: bytes,
    *,
    start: int,
    total: int,
    filename: str = "f.bin",
    headers: dict[str, str] | None = None,
    content_range: str | None = None,
    http: Any = requests,
) -> requests.Response:
    """One part the way synapse-sdk sends it (``filename`` field first, then ``file``)."""
    span = content_range or f"bytes {start}-{start + len(data) - 1}/{total}"
    return http.put(
        url,
        files={"file": ("blob", data)},
        data={"filename": filename},
        headers={**(AUTH if headers is None else headers), "Content-Range": span},
        timeout=TIMEOUT,
    )


RAW = "application/offset+octet-stream"


def put_raw(url: str, body: object, *, start: int, total: int, length: int | None = None,
            **headers: str) -> requests.Response:
    """A raw part (syncd's own client after the first part): the bytes are the whole body.
    ``length`` is needed when ``body`` is not bytes (a generator)."""
    length = len(body) if length is None else length  # type: ignore[arg-type]
    return requests.put(
        url,
        data=body,
        headers={**AUTH, "Content-Type": RAW, "Content-Range": f"bytes {start}-{start + length - 1}/{total}",
                 **headers},
        timeout=TIMEOUT,
    )


def post_whole(
    url: str, data: bytes, *, filename: str, md5: str | None = None, headers: dict[str, str] | None = None
) -> requests.Response:
    fields = {"filename": filename}
    if md5 is not None:
        fields["md5"] = md5
    return requests.post(
        url, files={"file": ("x", data)}, data=fields, headers={**AUTH, **(headers or {})}, timeout=TIMEOUT
    )


def complete(url: str, md5: str) -> requests.Response:
    return requests.post(url, json={"md5": md5}, headers=AUTH, timeout=TIMEOUT)


def get(url: str) -> requests.Response:
    return requests.get(url, headers=AUTH, timeout=TIMEOUT)


def upload_in_parts(base_url: str, data: bytes, *, part: int, filename: str) -> dict[str, Any]:
    url, offset = base_url, 0
    while True:
        chunk = data[offset : offset + part]
        answer = put_part(url, chunk, start=offset, total=len(data), filename=filename)
        assert answer.status_code == 200, answer.text
        url, offset = answer.json()["url"], answer.json()["offset"]
        if offset == len(data):
            break
    done = complete(url, md5_hex(data))
    assert done.status_code == 200, done.text
    return done.json()


def stored_files(root: Path) -> dict[str, bytes]:
    """Every regular file under ``root`` but outside ``.incoming``, by relative path."""
    found = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith(".incoming/"):
            found[rel] = path.read_bytes()
    return found


def incoming(root: Path) -> list[str]:
    return sorted(p.name for p in (root / ".incoming").iterdir())


class FakeClock:
    """Wall clock for expiry tests; read from the receiver's thread, moved by the test."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FreeSpace:
    """What the receiver believes is free on its disk."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: Path) -> int:
        return self.free


class RawPart:
    """A part sent by hand over one socket, so a test can pause it mid-body.

    ``send(n)`` sends the next ``n`` bytes of the request (headers first);
    ``finish()`` sends the rest and returns the status and JSON of the answer.
    """

    def __init__(
        self, port: int, path: str, data: bytes, *, start: int, total: int, headers: dict[str, str] | None = None
    ) -> None:
        body = (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + data + b"\r\n--b--\r\n"
        )
        fields = {
            **AUTH,
            **(headers or {}),
            "Host": "x",
            "Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}",
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(len(body)),
            "Connection": "close",
        }
        head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
        self._request = memoryview(head.encode() + body)
        self._sent = 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)

    def send(self, n: int) -> None:
        self.sock.sendall(self._request[self._sent : self._sent + n])
        self._sent += n

    def finish(self) -> tuple[int, dict[str, Any]]:
        self.sock.sendall(self._request[self._sent :])
        reply = b""
        while chunk := self.sock.recv(65536):
            reply += chunk
        self.sock.close()
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(body)

    def close(self) -> None:
        self.sock.close()


def wait_until(condition: Callable[[], bool], *, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:  # queued while the listener closed: look again
        return False
    return False
