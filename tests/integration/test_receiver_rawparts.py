"""Raw part bodies (``application/offset+octet-stream``), their advertisement, and the exact
reading of a form's file part whose length the Content-Range announces."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import requests

from syncd.server import EmbeddedReceiver, ServerHooks
from tests.support.receiver import (
    AUTH,
    RAW,
    TIMEOUT,
    complete,
    get,
    md5_hex,
    put_part,
    put_raw,
    running,
    stored_files,
)

DATA = os.urandom(300_000)


def test_every_json_answer_advertises_raw_parts(server: EmbeddedReceiver) -> None:
    doc = put_part(server.url, DATA[:1000], start=0, total=len(DATA))
    answers = [
        doc,
        get(doc.json()["url"]),
        put_part(doc.json()["url"], DATA[:10], start=5, total=len(DATA)),  # 400
        get(server.url + "11111111-1111-4111-8111-111111111111/"),  # 404
        requests.get(server.url + "x/", timeout=TIMEOUT),  # 401
        requests.get(server.url.replace("chunked_upload/", "healthz"), timeout=TIMEOUT),
    ]
    assert [a.status_code for a in answers] == [200, 200, 400, 404, 401, 200]
    assert all(a.headers.get("Syncd-Raw-Parts") == "1" for a in answers)


def test_raw_parts_after_a_form_first_part(server: EmbeddedReceiver, root: Path) -> None:
    first = put_part(server.url, DATA[:100_000], start=0, total=len(DATA), filename="raw/f.bin").json()
    url = first["url"]
    second = put_raw(url, DATA[100_000:250_000], start=100_000, length=150_000, total=len(DATA))
    assert second.status_code == 200, second.text
    assert second.json()["offset"] == 250_000
    chunks = (DATA[i : i + 7000] for i in range(250_000, len(DATA), 7000))  # chunked transfer encoding
    third = put_raw(url, chunks, start=250_000, length=50_000, total=len(DATA))
    assert third.status_code == 200, third.text
    done = complete(url, md5_hex(DATA))
    assert done.status_code == 200, done.text
    assert stored_files(root) == {"raw/f.bin": DATA}


@pytest.mark.parametrize("sent", [0, 1, 99_999, 100_001, 150_000])
def test_a_raw_part_of_another_length_is_refused_and_leaves_the_session(
    server: EmbeddedReceiver, root: Path, sent: int
) -> None:
    doc = put_part(server.url, DATA[:100_000], start=0, total=len(DATA)).json()
    answer = put_raw(doc["url"], DATA[100_000 : 100_000 + sent], start=100_000, length=100_000, total=len(DATA))
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("File size doesn't match headers")
    assert get(doc["url"]).json()["offset"] == 100_000
    assert (root / ".incoming" / f"{doc['id']}.part").stat().st_size == 100_000


def test_a_raw_part_at_the_wrong_offset(server: EmbeddedReceiver) -> None:
    doc = put_part(server.url, DATA[:100_000], start=0, total=len(DATA)).json()
    answer = put_raw(doc["url"], DATA[:1000], start=0, length=1000, total=len(DATA))
    assert answer.status_code == 400
    assert answer.json()["expected_offset"] == 100_000


def test_a_raw_first_part_is_refused(server: EmbeddedReceiver, root: Path) -> None:
    answer = put_raw(server.url, DATA, start=0, length=len(DATA), total=len(DATA))
    assert answer.status_code == 400
    assert answer.json()["detail"] == f"{RAW} is for later parts: send the first part as a form"
    assert stored_files(root) == {}


def test_a_stalled_raw_part_is_408_and_cut_back(root: Path) -> None:
    with running(root, hooks=ServerHooks(body_timeout=0.3)) as server:
        doc = put_part(server.url, DATA[:100_000], start=0, total=len(DATA)).json()
        path = doc["url"].split(str(server.port), 1)[1]
        head = (
            f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
            f"Content-Type: {RAW}\r\nContent-Range: bytes 100000-199999/{len(DATA)}\r\n"
            "Content-Length: 100000\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
            sock.sendall(head + DATA[100_000:150_000])  # and then nothing
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
        assert b"Request body stalled" in reply
        assert get(doc["url"]).json()["offset"] == 100_000


@pytest.mark.parametrize(
    ("data", "announced"),
    [
        (b"x" * 997 + b"\r\n", 1000),  # short by one; the part's last two bytes are a CRLF
        (b"x" * 998, 1000),  # short by two: the CRLF before the boundary must not pass for data
        (b"x" * 997, 1000),
        (b"x" * 1001, 1000),
        (b"x" * 1002, 1000),
        (b"\r\n", 3),
        (b"", 2),
        (b"", 1),
    ],
)
def test_a_form_part_of_another_length_than_announced_is_refused(
    server: EmbeddedReceiver, data: bytes, announced: int
) -> None:
    doc = put_part(server.url, DATA[:1000], start=0, total=len(DATA)).json()
    answer = put_part(
        doc["url"], data, start=1000, total=len(DATA), content_range=f"bytes 1000-{999 + announced}/{len(DATA)}"
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["detail"].startswith("File size doesn't match headers")
    assert get(doc["url"]).json()["offset"] == 1000


@pytest.mark.parametrize(
    "tail",
    [b"\r\n", b"\r\n--", b"\r\n--boundary", b"--", b"\r", b"\n", b"x"],
)
def test_form_parts_ending_in_boundary_like_bytes_are_kept_whole(
    server: EmbeddedReceiver, root: Path, tail: bytes
) -> None:
    head = os.urandom(3000) + tail
    data = head + os.urandom(2000) + tail
    first = put_part(server.url, data[:1000], start=0, total=len(data)).json()
    for start, end in ((1000, len(head)), (len(head), len(data))):
        answer = put_part(first["url"], data[start:end], start=start, total=len(data))
        assert answer.status_code == 200, answer.text
    assert complete(first["url"], md5_hex(data)).status_code == 200
    assert stored_files(root) == {"f.bin": data}
