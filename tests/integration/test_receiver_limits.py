"""413 (too large), 507 (disk too full, before and while writing), 408 (stalled body)."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests

from syncd.server import ServerHooks
from tests.support.receiver import (
    AUTH,
    TIMEOUT,
    FreeSpace,
    complete,
    get,
    incoming,
    md5_hex,
    post_whole,
    put_part,
    running,
    stored_files,
)


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Sends ``head`` (and ``body``), then reads until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + body)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_too_large_is_decided_from_the_header_alone(tmp_path: Path) -> None:
    with running(tmp_path / "root", max_size=1000) as server:
        reply = raw_request(
            server.port,
            b"PUT /chunked_upload/ HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Range: bytes 0-99/1001\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 5000000000\r\n\r\n",  # and not one byte of it
        )
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert reply.endswith(b'{"detail": "Size of file exceeds the limit (1000 bytes)", "max_size": 1000}')
    assert incoming(tmp_path / "root") == []


def test_too_large_while_a_big_body_is_on_its_way(tmp_path: Path) -> None:
    """A client that sends the whole body anyway still reads the 413."""
    body = os.urandom(8 << 20)
    with running(tmp_path / "root", max_size=1 << 20) as server:
        answer = put_part(server.url, body, start=0, total=len(body))
        assert answer.status_code == 413
        assert put_part(server.url, body[:1000], start=0, total=1 << 20).status_code == 200  # at the limit


def test_whole_post_over_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root, max_size=1000) as server:
        just_over = post_whole(server.url, os.urandom(1001), filename="a", md5="0" * 32)
        assert just_over.status_code == 413
        assert just_over.json()["detail"] == "Size of file exceeds the limit (1000 bytes)"
        far_over = post_whole(server.url, os.urandom(200_000), filename="b", md5="0" * 32)
        assert far_over.status_code == 413
        data = os.urandom(1000)
        assert post_whole(server.url, data, filename="c", md5=md5_hex(data)).status_code == 200
    assert stored_files(root) == {"c": data}
    assert len(incoming(root)) == 1  # the completed session's record only


def test_no_size_limit(tmp_path: Path) -> None:
    with running(tmp_path / "root", max_size=None) as server:
        answer = put_part(server.url, b"x", start=0, total=50 * 1024**4)  # 50 TiB announced
        assert answer.status_code == 507  # refused for space, not for size


def test_insufficient_storage_at_creation(tmp_path: Path) -> None:
    root = tmp_path / "root"
    hooks = ServerHooks(free_bytes=FreeSpace(10_000))
    with running(root, min_free=1_000, hooks=hooks) as server:
        answer = put_part(server.url, b"x" * 100, start=0, total=9_001)
        assert answer.status_code == 507
        assert answer.json()["detail"].startswith("Insufficient storage")
        assert incoming(root) == []
        whole = post_whole(server.url, b"x" * 9_500, filename="w", md5=md5_hex(b"x" * 9_500))
        assert whole.status_code == 507
        assert put_part(server.url, b"x" * 100, start=0, total=9_000).status_code == 200


def test_open_sessions_reserve_what_they_have_yet_to_receive(tmp_path: Path) -> None:
    hooks = ServerHooks(free_bytes=FreeSpace(10_000))
    with running(tmp_path / "root", min_free=1_000, hooks=hooks) as server:
        first = put_part(server.url, b"a" * 1_000, start=0, total=6_000).json()  # 5 000 to come
        assert put_part(server.url, b"b", start=0, total=4_001).status_code == 507
        assert put_part(server.url, b"b", start=0, total=4_000).status_code == 200  # 3 999 to come
        assert put_part(server.url, b"c", start=0, total=2).status_code == 507
        requests.delete(first["url"], headers=AUTH, timeout=TIMEOUT)
        assert put_part(server.url, b"c", start=0, total=2).status_code == 200


class FillingDisk:
    """``pwritev`` that fails with ENOSPC while ``full``."""

    def __init__(self) -> None:
        self.full = False

    def __call__(self, fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        if self.full:
            # A real disk may take part of the batch first; so does this one.
            os.pwrite(fd, bytes(buffers[0][:10]), pos)
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.pwritev(fd, buffers, pos)


def test_disk_full_mid_part_keeps_the_data_so_far(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = os.urandom(3 << 20)
    disk = FillingDisk()
    with running(root, hooks=ServerHooks(pwritev=disk)) as server:
        doc = put_part(server.url, data[: 1 << 20], start=0, total=len(data)).json()
        disk.full = True
        answer = put_part(doc["url"], data[1 << 20 :], start=1 << 20, total=len(data))
        assert answer.status_code == 507
        assert "the first 1048576 bytes are kept" in answer.json()["detail"]
        assert get(doc["url"]).json()["offset"] == 1 << 20
        assert (root / ".incoming" / f"{doc['id']}.part").stat().st_size == 1 << 20
        disk.full = False  # space freed: the client resumes
        assert put_part(doc["url"], data[1 << 20 :], start=1 << 20, total=len(data)).status_code == 200
        assert complete(doc["url"], md5_hex(data)).status_code == 200
    assert stored_files(root) == {"f.bin": data}


def test_disk_full_on_the_first_part_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    disk = FillingDisk()
    disk.full = True
    with running(root, hooks=ServerHooks(pwritev=disk)) as server:
        assert put_part(server.url, b"x" * 5000, start=0, total=5000).status_code == 507
    assert incoming(root) == []


def test_a_stalled_body_is_answered_408_and_the_part_dropped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root, hooks=ServerHooks(body_timeout=0.3)) as server:
        doc = put_part(server.url, b"a" * 1000, start=0, total=3000).json()
        path = doc["url"].split(str(server.port), 1)[1]
        started = time.monotonic()
        reply = raw_request(
            server.port,
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Range: bytes 1000-1999/3000\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1200\r\n\r\n",
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + b"b" * 300,
        )
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert b"Request body stalled" in reply
        assert time.monotonic() - started < 3
        assert get(doc["url"]).json()["offset"] == 1000
        assert (root / ".incoming" / f"{doc['id']}.part").stat().st_size == 1000


def test_a_body_stalled_between_parts_is_answered_408(tmp_path: Path) -> None:
    with running(tmp_path / "root", hooks=ServerHooks(body_timeout=0.3)) as server:
        doc = put_part(server.url, b"a" * 1000, start=0, total=3000).json()
        path = doc["url"].split(str(server.port), 1)[1]
        reply = raw_request(
            server.port,
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Range: bytes 1000-1999/3000\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1200\r\n\r\n",
            b'--b\r\nContent-Disposition: form-data; name="filename"\r\n\r\nf.bin\r\n',
        )
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert put_part(doc["url"], b"b" * 1000, start=1000, total=3000).status_code == 200


def test_a_stalled_small_whole_post_is_answered_408_and_stores_nothing(tmp_path: Path) -> None:
    """A body small enough to be read whole before it is split (``memoryform``) stalls too."""
    root = tmp_path / "root"
    with running(root, hooks=ServerHooks(body_timeout=0.3)) as server:
        started = time.monotonic()
        reply = raw_request(
            server.port,
            f"POST /chunked_upload/ HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1200\r\n\r\n",
            b'--b\r\nContent-Disposition: form-data; name="filename"\r\n\r\nf.bin\r\n--b\r\n'
            b'Content-Disposition: form-data; name="file"; filename="f.bin"\r\n\r\n' + b"b" * 300,
        )
        assert reply.startswith(b"HTTP/1.1 408 ")
        assert b"Request body stalled" in reply
        assert time.monotonic() - started < 3
    assert stored_files(root) == {} and incoming(root) == []


@pytest.mark.parametrize("cut_at", [0, 150, 700])
def test_a_client_hanging_up_mid_part_loses_only_that_part(tmp_path: Path, cut_at: int) -> None:
    root = tmp_path / "root"
    with running(root) as server:
        doc = put_part(server.url, b"a" * 1000, start=0, total=3000).json()
        path = doc["url"].split(str(server.port), 1)[1]
        body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + b"b" * 1000
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
                + b"Content-Range: bytes 1000-1999/3000\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 1200\r\n\r\n" + body[:cut_at]
            )
        assert get(doc["url"]).json()["offset"] == 1000
        assert put_part(doc["url"], b"b" * 1000, start=1000, total=3000).json()["offset"] == 2000
