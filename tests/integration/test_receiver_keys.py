"""``Upload-Key``: a client-named session answers a repeated request instead of opening a
second one (the client crashed after the receiver acted, before it recorded the answer)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import pytest
import requests
from requests_toolbelt import MultipartEncoder

from syncd.server import EmbeddedReceiver, ServerHooks
from tests.support.receiver import (
    AUTH,
    TIMEOUT,
    FakeClock,
    complete,
    get,
    md5_hex,
    post_whole,
    put_part,
    running,
    stored_files,
)

DATA = os.urandom(3000)
KEY = "k3y-0f-a-cl13nt_upload-0001"
KEYED = {**AUTH, "Upload-Key": KEY}


def first_part(url: str, data: bytes = DATA[:1000], *, total: int = len(DATA), **kwargs) -> requests.Response:
    return put_part(url, data, start=0, total=total, headers=KEYED, **kwargs)


def sessions(root: Path) -> list[dict]:
    """The session records the receiver keeps under .incoming: record files, and the lines of
    the completed-records logs (whole files stored by one request), by id."""
    incoming = root / ".incoming"
    records = [json.loads(p.read_bytes()) for p in incoming.glob("*.json")]
    records += [json.loads(line) for p in incoming.glob("completed-*.log") for line in p.read_bytes().splitlines()]
    return sorted(records, key=lambda r: r["id"])


def test_a_keyed_first_part_opens_a_session_that_keeps_the_key(server: EmbeddedReceiver, root: Path) -> None:
    answer = first_part(server.url)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert (doc["offset"], doc["url"]) == (1000, f"{server.url}{doc['id']}/")
    assert [(s["id"], s["upload_key"]) for s in sessions(root)] == [(doc["id"], KEY)]


def test_a_repeated_first_part_of_an_open_session_answers_its_offset_and_address(
    server: EmbeddedReceiver, root: Path
) -> None:
    doc = first_part(server.url).json()
    again = first_part(server.url)
    assert again.status_code == 400
    assert again.json() == {
        "detail": "Offsets do not match",
        "expected_offset": 1000,
        "provided_offset": 0,
        "id": doc["id"],
        "url": doc["url"],
    }
    assert len(sessions(root)) == 1
    # The client goes on from there, at the address it learnt.
    assert put_part(doc["url"], DATA[1000:], start=1000, total=3000).status_code == 200
    assert complete(doc["url"], md5_hex(DATA)).status_code == 200
    assert stored_files(root) == {"f.bin": DATA}


def test_a_repeated_first_part_that_fits_is_taken_like_a_put_to_the_session(
    server: EmbeddedReceiver, root: Path
) -> None:
    """An empty file's session stays at offset 0: its first part fits again."""
    doc = first_part(server.url, b"", total=0, content_range="bytes */0").json()
    again = first_part(server.url, b"", total=0, content_range="bytes */0")
    assert again.status_code == 200, again.text
    assert (again.json()["id"], again.json()["url"], again.json()["offset"]) == (doc["id"], doc["url"], 0)
    assert len(sessions(root)) == 1


def test_a_repeated_first_part_of_a_completed_session_answers_it(server: EmbeddedReceiver, root: Path) -> None:
    doc = first_part(server.url, DATA).json()
    assert complete(doc["url"], md5_hex(DATA)).status_code == 200
    again = first_part(server.url, DATA)
    assert again.status_code == 200, again.text
    body = again.json()
    assert (body["id"], body["url"], body["status"], body["offset"], body["path"]) == (
        doc["id"], doc["url"], 2, 3000, "f.bin",
    )  # fmt: skip
    assert len(sessions(root)) == 1
    assert stored_files(root) == {"f.bin": DATA}
    assert get(server.url.replace("chunked_upload/", "healthz")).json()["open_sessions"] == 0


def test_a_repeated_whole_file_post_answers_the_stored_file_and_stores_nothing(
    server: EmbeddedReceiver, root: Path
) -> None:
    first = post_whole(server.url, DATA, filename="dir/w.bin", md5=md5_hex(DATA), headers=KEYED)
    assert first.status_code == 200, first.text
    (root / "dir" / "w.bin").unlink()  # had the repeat stored anything, it would be back
    again = post_whole(server.url, DATA, filename="dir/w.bin", md5=md5_hex(DATA), headers=KEYED)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert stored_files(root) == {}
    assert len(sessions(root)) == 1


def test_a_repeated_big_whole_file_post_answers_the_stored_file(server: EmbeddedReceiver, root: Path) -> None:
    """Past the in-memory size a whole file is streamed; its key is kept all the same."""
    data = os.urandom(3 << 20)
    first = post_whole(server.url, data, filename="big.bin", md5=md5_hex(data), headers=KEYED)
    assert first.status_code == 200, first.text
    again = post_whole(server.url, data, filename="big.bin", md5=md5_hex(data), headers=KEYED)
    assert (again.status_code, again.json()) == (200, first.json())
    assert stored_files(root) == {"big.bin": data}
    assert len(sessions(root)) == 1


def test_without_a_key_a_repeated_post_is_a_second_upload(server: EmbeddedReceiver, root: Path) -> None:
    """Unchanged for clients that send no key (drf-chunked-upload ignores the header)."""
    first = post_whole(server.url, DATA, filename="w.bin", md5=md5_hex(DATA))
    second = post_whole(server.url, DATA, filename="w.bin", md5=md5_hex(DATA))
    assert first.json()["id"] != second.json()["id"]
    assert len(sessions(root)) == 2


@pytest.mark.parametrize(
    ("filename", "total", "detail"),
    [
        ("other.bin", 3000, "names an upload of 'f.bin', not 'other.bin'"),
        ("f.bin", 4000, "names an upload of 3000 bytes, not 4000"),
    ],
)
def test_a_key_for_another_file_is_refused(
    server: EmbeddedReceiver, root: Path, filename: str, total: int, detail: str
) -> None:
    doc = first_part(server.url).json()
    answer = first_part(server.url, total=total, filename=filename)
    assert answer.status_code == 400
    assert answer.json()["detail"] == f"Upload-Key {KEY!r} {detail}"
    assert "url" not in answer.json()
    assert [s["id"] for s in sessions(root)] == [doc["id"]]
    assert get(doc["url"]).json()["offset"] == 1000


@pytest.mark.parametrize(
    ("data", "filename", "md5", "detail"),
    [
        (DATA, "other.bin", md5_hex(DATA), "names an upload of 'w.bin', not 'other.bin'"),
        (DATA[:2999], "w.bin", md5_hex(DATA[:2999]), "names an upload of 3000 bytes, not 2999"),
        (DATA + b"x", "w.bin", md5_hex(DATA + b"x"), "names an upload of 3000 bytes, not 3001"),
        (bytes(3000), "w.bin", md5_hex(bytes(3000)), f"names an upload with another md5 ({md5_hex(DATA)})"),
    ],
)
def test_a_whole_file_key_for_another_file_is_refused(
    server: EmbeddedReceiver, root: Path, data: bytes, filename: str, md5: str, detail: str
) -> None:
    assert post_whole(server.url, DATA, filename="w.bin", md5=md5_hex(DATA), headers=KEYED).status_code == 200
    answer = post_whole(server.url, data, filename=filename, md5=md5, headers=KEYED)
    assert answer.status_code == 400
    assert answer.json()["detail"] == f"Upload-Key {KEY!r} {detail}"
    assert stored_files(root) == {"w.bin": DATA}


def test_a_whole_file_with_the_key_of_an_open_session_is_refused(server: EmbeddedReceiver, root: Path) -> None:
    first_part(server.url)
    answer = post_whole(server.url, DATA, filename="f.bin", md5=md5_hex(DATA), headers=KEYED)
    assert answer.status_code == 400
    assert "still open for parts (1000 of 3000 bytes)" in answer.json()["detail"]
    assert stored_files(root) == {}


def test_a_keyed_first_part_names_its_file_before_its_data(server: EmbeddedReceiver, root: Path) -> None:
    encoder = MultipartEncoder(fields=[("file", ("blob", DATA, "application/octet-stream")), ("filename", "f.bin")])
    answer = requests.put(
        server.url,
        data=encoder,
        headers={**KEYED, "Content-Type": encoder.content_type, "Content-Range": "bytes 0-2999/3000"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400
    assert answer.json()["detail"] == "With Upload-Key, the filename field must come before the file part"
    assert sessions(root) == []


@pytest.mark.parametrize(
    "key",
    ["short", "x" * 129, "has space in the key!", "dots.are.not.allowed", "ünïcödé-key-0000000"],
)
def test_malformed_keys_are_refused(server: EmbeddedReceiver, root: Path, key: str) -> None:
    answer = put_part(server.url, DATA, start=0, total=3000, headers={**AUTH, "Upload-Key": key})
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("Upload-Key ")
    assert "is not 16..128 characters" in answer.json()["detail"]
    whole = post_whole(server.url, DATA, filename="w", md5=md5_hex(DATA), headers={"Upload-Key": key})
    assert whole.status_code == 400
    assert sessions(root) == [] and stored_files(root) == {}


def test_keys_survive_a_restart(root: Path) -> None:
    with running(root) as first:
        opened = first_part(first.url).json()
        whole = post_whole(
            first.url, DATA, filename="w.bin", md5=md5_hex(DATA), headers={"Upload-Key": "whole-file-key-0000001"}
        ).json()
    with running(root) as second:
        again = first_part(second.url)
        assert again.status_code == 400
        assert (again.json()["id"], again.json()["url"]) == (opened["id"], f"{second.url}{opened['id']}/")
        repeat = post_whole(
            second.url, DATA, filename="w.bin", md5=md5_hex(DATA), headers={"Upload-Key": "whole-file-key-0000001"}
        )
        assert repeat.status_code == 200
        assert (repeat.json()["id"], repeat.json()["path"]) == (whole["id"], "w.bin")
        url = again.json()["url"]
        assert put_part(url, DATA[1000:], start=1000, total=3000).status_code == 200
        assert complete(url, md5_hex(DATA)).status_code == 200
    with running(root) as third:
        after = first_part(third.url)
        assert after.status_code == 200, after.text
        assert (after.json()["id"], after.json()["status"]) == (opened["id"], 2)
    assert stored_files(root) == {"f.bin": DATA, "w.bin": DATA}
    assert len(sessions(root)) == 2


def test_a_key_expires_with_its_session(root: Path) -> None:
    clock = FakeClock()
    with running(root, expire=100, hooks=ServerHooks(clock=clock)) as server:
        old = first_part(server.url).json()
        clock.advance(101)
        new = first_part(server.url)
        assert new.status_code == 200, new.text
        assert new.json()["id"] != old["id"] and new.json()["offset"] == 1000
        assert get(old["url"]).status_code == 410
    with running(root, expire=100, hooks=ServerHooks(clock=clock)) as server:
        again = first_part(server.url)  # after a restart the key still names the new session
        assert (again.status_code, again.json()["id"]) == (400, new.json()["id"])


def test_two_requests_with_one_key_never_make_two_sessions(server: EmbeddedReceiver, root: Path) -> None:
    """The second waits for the first (slowed down mid-body) and then joins its session."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="filename"\r\n\r\nf.bin\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + DATA[:1000] + b"\r\n--b--\r\n"
    )
    head = (
        f"PUT /chunked_upload/ HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
        f"Upload-Key: {KEY}\r\nContent-Range: bytes 0-999/3000\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
        slow.sendall(head + body[:500])
        results: list[requests.Response] = []
        racer = threading.Thread(target=lambda: results.append(first_part(server.url)))
        racer.start()
        slow.sendall(body[500:])
        reply = b""
        while chunk := slow.recv(65536):
            reply += chunk
        racer.join(TIMEOUT)
    status = int(reply.split(b" ", 2)[1])
    doc = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    # Whichever came first made the session; the other joined it (and learnt its address).
    assert sorted([status, results[0].status_code]) == [200, 400]
    assert doc["id"] == results[0].json()["id"]
    assert len(sessions(root)) == 1


def test_a_session_is_found_by_its_key(server: EmbeddedReceiver) -> None:
    """How a client whose first part's answer was lost learns the session's address."""
    doc = first_part(server.url).json()
    found = requests.get(server.url, headers=KEYED, timeout=TIMEOUT)
    assert found.status_code == 200, found.text
    assert (found.json()["url"], found.json()["offset"], found.json()["upload_key"]) == (doc["url"], 1000, KEY)
    unknown = requests.get(server.url, headers={**AUTH, "Upload-Key": "n0-such-upload-key-00000"}, timeout=TIMEOUT)
    assert unknown.status_code == 404 and "n0-such-upload-key-00000" in unknown.json()["detail"]
    bare = requests.get(server.url, headers=AUTH, timeout=TIMEOUT)
    assert bare.status_code == 400 and "Upload-Key" in bare.json()["detail"]
