"""``plainhttp``: kept-alive http.client connections for small POSTs, against real sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from syncd.upload.base import TransientError
from syncd.upload.plainhttp import PlainConnections

OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"ok": true}'


def _read_request(conn: socket.socket) -> bytes | None:
    """One request (headers and a Content-Length body), or None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += conn.recv(65536)
    return head


@contextlib.contextmanager
def server(handle: Callable[[socket.socket, list[bytes]], None]) -> Iterator[tuple[str, list[bytes], list[int]]]:
    """A loopback server running ``handle(conn, heads)`` per connection; yields its URL, the
    request heads seen, and a list that counts connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    heads: list[bytes] = []
    connections: list[int] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(1)
            thread = threading.Thread(target=_serve, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    def _serve(conn: socket.socket) -> None:
        with conn:
            with contextlib.suppress(OSError):
                handle(conn, heads)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/chunked_upload/", heads, connections
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for thread in threads:
            thread.join(5)


def keep_alive(conn: socket.socket, heads: list[bytes]) -> None:
    while (head := _read_request(conn)) is not None:
        heads.append(head)
        conn.sendall(OK)


def one_then_close(conn: socket.socket, heads: list[bytes]) -> None:
    """Answers one request as if the connection stayed open, then closes it (an idle
    timeout, a restart): the client must not reuse it."""
    if (head := _read_request(conn)) is not None:
        heads.append(head)
        conn.sendall(OK)


def test_requests_share_one_kept_alive_connection_per_thread() -> None:
    with server(keep_alive) as (url, heads, connections):
        plain = PlainConnections(url, connect_timeout=5, read_timeout=5)
        try:
            for i in range(5):
                answer = plain.post(b"x" * i, {"Content-Type": "application/octet-stream"})
                assert (answer.status, answer.data) == (200, b'{"ok": true}')
                assert answer.headers.get("content-type") == "application/json"
            other = threading.Thread(target=plain.post, args=(b"y", {}))
            other.start()
            other.join(10)
        finally:
            plain.close()
    assert len(heads) == 6 and heads[0].startswith(b"POST /chunked_upload/ HTTP/1.1")
    assert len(connections) == 2  # one for this thread, one for the other


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed() -> None:
    with server(one_then_close) as (url, heads, connections):
        plain = PlainConnections(url, connect_timeout=5, read_timeout=5)
        try:
            for _ in range(3):
                assert plain.post(b"data", {}).status == 200
                time.sleep(0.05)  # the server's close arrives before the next request
        finally:
            plain.close()
    assert len(heads) == 3 and len(connections) == 3


def test_a_refused_connection_is_transient() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
    plain = PlainConnections(f"http://127.0.0.1:{port}/", connect_timeout=5, read_timeout=5)
    with pytest.raises(TransientError) as caught:
        plain.post(b"data", {})
    assert caught.value.reason == "connection"
    plain.close()


def test_no_answer_within_the_read_timeout_is_transient_and_the_connection_dropped() -> None:
    def silent(conn: socket.socket, heads: list[bytes]) -> None:
        _read_request(conn)
        time.sleep(1.0)

    with server(silent) as (url, _heads, _connections):
        plain = PlainConnections(url, connect_timeout=5, read_timeout=0.2)
        started = time.monotonic()
        with pytest.raises(TransientError) as caught:
            plain.post(b"data", {})
        assert caught.value.reason == "timeout" and time.monotonic() - started < 1.0
        assert plain._local.conn.sock is None
        plain.close()


def test_a_connection_cut_before_the_answer_is_transient() -> None:
    def hang_up(conn: socket.socket, heads: list[bytes]) -> None:
        _read_request(conn)

    with server(hang_up) as (url, _heads, _connections):
        plain = PlainConnections(url, connect_timeout=5, read_timeout=5)
        with pytest.raises(TransientError, match="RemoteDisconnected") as caught:
            plain.post(b"data", {})
        assert caught.value.reason == "connection"
        plain.close()


def test_only_plain_http_urls() -> None:
    with pytest.raises(ValueError):
        PlainConnections("https://127.0.0.1/", connect_timeout=1, read_timeout=1)
