"""Sessions over time: receiver restarts, expiry, and requests that race."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from syncd.server import ServerHooks
from tests.support.receiver import (
    AUTH,
    TIMEOUT,
    FakeClock,
    complete,
    get,
    incoming,
    md5_hex,
    put_part,
    running,
    stored_files,
    upload_in_parts,
)

PART = 256 * 1024


def rebuilds(caplog: pytest.LogCaptureFixture) -> int:
    return sum("rebuilt MD5 state" in r.getMessage() for r in caplog.records)


def test_restart_mid_upload_then_resume_by_get(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    root = tmp_path / "root"
    data = os.urandom(5 * PART + 17)
    with running(root) as first:
        doc = put_part(first.url, data[:PART], start=0, total=len(data)).json()
        doc = put_part(doc["url"], data[PART : 2 * PART], start=PART, total=len(data)).json()
        session_id = doc["id"]
    with running(root) as second:  # a new process would get a new port too
        url = f"{second.url}{session_id}/"
        resumed = get(url).json()
        assert (resumed["offset"], resumed["filename"], resumed["status"]) == (2 * PART, "f.bin", 1)
        offset = resumed["offset"]
        while offset < len(data):
            answer = put_part(url, data[offset : offset + PART], start=offset, total=len(data))
            assert answer.status_code == 200, answer.text
            offset = answer.json()["offset"]
        done = complete(url, md5_hex(data))
        assert done.status_code == 200, done.text
    assert stored_files(root) == {"f.bin": data}
    assert rebuilds(caplog) == 1  # once after the restart, never again at completion


def test_md5_is_never_recomputed_without_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    with running(tmp_path / "root") as server:
        upload_in_parts(server.url, os.urandom(4 * PART), part=PART, filename="a.bin")
    assert rebuilds(caplog) == 0


def test_restart_between_last_part_and_completion(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    root = tmp_path / "root"
    data = os.urandom(2 * PART)
    with running(root) as first:
        session_id = put_part(first.url, data, start=0, total=len(data)).json()["id"]
    with running(root) as second:
        done = complete(f"{second.url}{session_id}/", md5_hex(data))
        assert done.status_code == 200, done.text
    assert stored_files(root) == {"f.bin": data}
    assert rebuilds(caplog) == 1


def test_stopping_mid_part_drops_only_that_part(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root) as first:
        doc = put_part(first.url, b"a" * 1000, start=0, total=3000).json()
        path = doc["url"].split(str(first.port), 1)[1]
        sock = socket.create_connection(("127.0.0.1", first.port), timeout=5)
        sock.sendall(
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Range: bytes 1000-1999/3000\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1200\r\n\r\n"
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + b"b" * 400
        )
        time.sleep(0.2)  # the receiver holds the session and waits for the rest
    sock.close()
    with running(root) as second:
        url = f"{second.url}{doc['id']}/"
        assert get(url).json()["offset"] == 1000
        assert put_part(url, b"b" * 2000, start=1000, total=3000).status_code == 200
        assert complete(url, md5_hex(b"a" * 1000 + b"b" * 2000)).status_code == 200


def test_idle_sessions_expire_and_answer_410(tmp_path: Path) -> None:
    root = tmp_path / "root"
    clock = FakeClock()
    with running(root, expire=100, hooks=ServerHooks(clock=clock)) as server:
        doc = put_part(server.url, b"a" * 1000, start=0, total=3000).json()
        clock.advance(60)
        assert put_part(doc["url"], b"b" * 1000, start=1000, total=3000).status_code == 200
        clock.advance(60)  # 120 s since creation, but only 60 s idle
        assert get(doc["url"]).json()["offset"] == 2000
        clock.advance(100)
        expired = {"detail": "Upload has expired"}
        answer = get(doc["url"])
        assert (answer.status_code, answer.json()) == (410, expired)
        assert put_part(doc["url"], b"c" * 1000, start=2000, total=3000).json() == expired
        assert complete(doc["url"], md5_hex(b"x")).status_code == 410
        assert requests.delete(doc["url"], headers=AUTH, timeout=TIMEOUT).status_code == 410
        assert incoming(root) == [f"{doc['id']}.json"]  # the data is gone, the id still answers


def test_expired_sessions_are_swept_without_a_request(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root, expire=0.3) as server:
        doc = put_part(server.url, b"a" * 1000, start=0, total=3000).json()
        done = upload_in_parts(server.url, b"whole", part=100, filename="done.txt")
        deadline = time.monotonic() + 5
        while f"{doc['id']}.part" in incoming(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"{doc['id']}.part" not in incoming(root)
        assert get(doc["url"]).status_code in (410, 404)
        while incoming(root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert incoming(root) == []  # tombstone and completed record dropped later
        assert get(doc["url"]).status_code == 404
        assert get(done["url"]).status_code == 404
    assert stored_files(root) == {"done.txt": b"whole"}


def test_expired_sessions_stay_expired_across_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    clock = FakeClock()
    with running(root, expire=100, hooks=ServerHooks(clock=clock)) as server:
        doc = put_part(server.url, b"a" * 1000, start=0, total=3000).json()
    clock.advance(101)
    with running(root, expire=100, hooks=ServerHooks(clock=clock)) as server:
        assert get(f"{server.url}{doc['id']}/").status_code == 410


def test_requests_on_one_session_never_interleave(tmp_path: Path) -> None:
    """A second copy of a part waits for the first; then it no longer fits."""
    with running(tmp_path / "root") as server:
        doc = put_part(server.url, b"a" * 1000, start=0, total=3000).json()
        path = doc["url"].split(str(server.port), 1)[1]
        body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n'
                + b"b" * 1000 + b"\r\n--b--\r\n")
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Range: bytes 1000-1999/3000\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        )
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
            slow.sendall(head + body[:500])
            time.sleep(0.2)
            results: list[requests.Response] = []
            racer = threading.Thread(
                target=lambda: results.append(put_part(doc["url"], b"c" * 1000, start=1000, total=3000))
            )
            racer.start()
            racer.join(0.5)
            assert racer.is_alive()  # waiting for the session, not writing into it
            slow.sendall(body[500:])
            reply = b""
            while chunk := slow.recv(65536):
                reply += chunk
            racer.join()
        assert reply.startswith(b"HTTP/1.1 200 ") and b'"offset": 2000' in reply
        assert results[0].status_code == 400
        assert results[0].json()["expected_offset"] == 2000
        assert complete(doc["url"], md5_hex(b"a" * 1000 + b"b" * 1000)).status_code == 400  # incomplete
        assert put_part(doc["url"], b"d" * 1000, start=2000, total=3000).status_code == 200
        assert complete(doc["url"], md5_hex(b"a" * 1000 + b"b" * 1000 + b"d" * 1000)).status_code == 200


def test_ten_concurrent_uploads(tmp_path: Path) -> None:
    root = tmp_path / "root"
    files = {f"cam{i}/clip.bin": os.urandom(2 << 20) for i in range(10)}
    with running(root) as server, concurrent.futures.ThreadPoolExecutor(10) as pool:
        jobs = {name: pool.submit(upload_in_parts, server.url, data, part=PART, filename=name)
                for name, data in files.items()}
        answers = {name: job.result() for name, job in jobs.items()}
    assert {a["path"] for a in answers.values()} == set(files)
    assert stored_files(root) == files


def test_concurrent_uploads_to_one_name_never_clobber(tmp_path: Path) -> None:
    root = tmp_path / "root"
    contents = [os.urandom(300_000) for _ in range(10)]
    with running(root) as server, concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda d: upload_in_parts(server.url, d, part=100_000, filename="same.bin"), contents))
    paths = sorted(a["path"] for a in answers)
    assert paths == sorted(["same.bin", *(f"same ({n}).bin" for n in range(1, 10))])
    stored = stored_files(root)
    assert sorted(stored.values()) == sorted(contents)
    assert all(stored[a["path"]] == data for a, data in zip(answers, contents))
