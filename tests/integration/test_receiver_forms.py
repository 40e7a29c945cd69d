"""Form bodies over loopback: part headers (strictly parsed), and the two ways a whole-file
POST is stored (in memory up to ``SMALL_FILE``, streamed above)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import requests
from requests_toolbelt import MultipartEncoder

from syncd.server import ServerHooks
from syncd.server.handlers import SMALL_FILE
from syncd.server.memoryform import MEMORY_FORM_MAX
from tests.support.receiver import (
    AUTH,
    TIMEOUT,
    get,
    incoming,
    md5_hex,
    post_whole,
    running,
    stored_files,
)


def raw_post(url: str, parts: Sequence[tuple[bytes, bytes]], *, boundary: bytes = b"b0undary") -> requests.Response:
    """A form body written by hand: each part is (header lines, content)."""
    body = b"".join(b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + data + b"\r\n" for head, data in parts)
    body += b"--" + boundary + b"--\r\n"
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
    return requests.post(url, data=body, headers=headers, timeout=TIMEOUT)


def whole_parts(data: bytes, file_head: bytes, *, filename: str = "f.bin", big: bool = False
                ) -> list[tuple[bytes, bytes]]:
    """The parts of a whole-file POST; ``big`` adds a field that makes the body too large to be
    split in memory (``memoryform``), so aiohttp's part reader reads it."""
    pad = [(b'Content-Disposition: form-data; name="pad"', b"p" * (MEMORY_FORM_MAX + 1))] if big else []
    return [
        *pad,
        (b'Content-Disposition: form-data; name="filename"', filename.encode()),
        (b'Content-Disposition: form-data; name="md5"', md5_hex(data).encode()),
        (file_head, data),
    ]


@pytest.mark.parametrize("size", [0, 1, SMALL_FILE - 1, SMALL_FILE, SMALL_FILE + 1, 3 * SMALL_FILE + 17])
def test_whole_posts_either_side_of_the_in_memory_size(tmp_path: Path, size: int) -> None:
    root = tmp_path / "root"
    data = os.urandom(size)
    with running(root) as server:
        answer = post_whole(server.url, data, filename="d/f.bin", md5=md5_hex(data))
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert (doc["status"], doc["size"], doc["md5"], doc["path"]) == (2, size, md5_hex(data), "d/f.bin")
        assert get(doc["url"]).json()["status"] == 2
    assert stored_files(root) == {"d/f.bin": data}
    # the record only, no data left behind: a line of the completed-records log for a file
    # taken in memory, a record file for one streamed to disk
    if size <= SMALL_FILE:
        assert incoming(root) == ["completed-1.log"]
        assert json.loads((root / ".incoming" / "completed-1.log").read_text())["id"] == doc["id"]
    else:
        assert incoming(root) == [f"{doc['id']}.json"]


def test_a_whole_post_is_still_known_after_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root) as server:
        doc = post_whole(server.url, b"abc", filename="a", md5=md5_hex(b"abc")).json()
    with running(root) as server:
        again = get(f"{server.url}{doc['id']}/")
        assert again.status_code == 200 and again.json()["status"] == 2
    assert stored_files(root) == {"a": b"abc"}


def test_fields_after_the_file_part(tmp_path: Path) -> None:
    root = tmp_path / "root"
    data = b"x" * 5000
    encoder = MultipartEncoder(fields=[("file", ("blob", data)), ("md5", md5_hex(data)), ("filename", "late.bin")])
    with running(root) as server:
        answer = requests.post(
            server.url, data=encoder, headers={**AUTH, "Content-Type": encoder.content_type}, timeout=TIMEOUT
        )
        assert answer.status_code == 200, answer.text
    assert stored_files(root) == {"late.bin": data}


@pytest.mark.parametrize(
    ("md5", "detail"),
    [(None, "Checksum of type 'md5' is required"), ("0" * 32, "checksum does not match")],
)
def test_a_small_whole_post_that_fails_its_checksum_leaves_nothing(
    tmp_path: Path, md5: str | None, detail: str
) -> None:
    root = tmp_path / "root"
    with running(root) as server:
        answer = post_whole(server.url, b"abc", filename="a", md5=md5)
        assert answer.status_code == 400 and answer.json() == {"detail": detail}
    assert stored_files(root) == {} and incoming(root) == []


def test_a_small_whole_post_refused_by_the_conflict_policy_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root, on_conflict="fail") as server:
        assert post_whole(server.url, b"one", filename="a", md5=md5_hex(b"one")).status_code == 200
        before = incoming(root)
        answer = post_whole(server.url, b"two", filename="a", md5=md5_hex(b"two"))
        assert answer.status_code == 409
        assert incoming(root) == before
    assert stored_files(root) == {"a": b"one"}


class FullDisk:
    def __call__(self, fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        os.pwrite(fd, bytes(buffers[0][:10]), pos)
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("size", [100, 3 * SMALL_FILE])
def test_disk_full_during_a_whole_post_leaves_nothing(tmp_path: Path, size: int) -> None:
    root = tmp_path / "root"
    with running(root, hooks=ServerHooks(pwritev=FullDisk())) as server:
        data = os.urandom(size)
        answer = post_whole(server.url, data, filename="a", md5=md5_hex(data))
        assert answer.status_code == 507 and answer.json()["detail"].startswith("Insufficient storage")
    assert stored_files(root) == {} and incoming(root) == []


@pytest.mark.parametrize(
    "file_head",
    [
        'Content-Disposition: form-data; name="file"; filename="a b ä 日本.bin"'.encode(),
        b'Content-Disposition: form-data; name="file"; filename="q\\"uote.bin"',
        b"Content-Disposition: form-data; name=\"file\"; filename=\"x\"; filename*=UTF-8''%C3%A4%20b.bin",
        b"Content-Disposition: form-data; name=file\r\nContent-Type: application/octet-stream",
        b'content-disposition: FORM-DATA; NAME="file"',
    ],
)
@pytest.mark.parametrize("big", [False, True], ids=["in-memory", "streamed"])
def test_file_part_header_shapes_clients_send(tmp_path: Path, file_head: bytes, big: bool) -> None:
    root = tmp_path / "root"
    with running(root) as server:
        answer = raw_post(server.url, whole_parts(b"data", file_head, big=big))
        assert answer.status_code == 200, answer.text
    assert stored_files(root) == {"f.bin": b"data"}


@pytest.mark.parametrize(
    "file_head",
    [
        b'Content-Disposition: form-data; name="file',
        b'Content-Disposition: form-data; name="file"; filename="a" trailing',
        b'Content-Disposition: form-data; name="file"; name="other"',
        b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''%FF",
        b'Content-Disposition: attachment; name="file"',
        b'Content-Disposition: form-data; filename="no-name.bin"',
        b"Content-Type: application/octet-stream",  # no Content-Disposition at all
    ],
)
@pytest.mark.parametrize("big", [False, True], ids=["in-memory", "streamed"])
def test_malformed_part_headers_are_400_and_store_nothing(
    tmp_path: Path, file_head: bytes, big: bool, recwarn: pytest.WarningsRecorder
) -> None:
    root = tmp_path / "root"
    with running(root) as server:
        answer = raw_post(server.url, whole_parts(b"data", file_head, big=big))
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"].startswith("Malformed multipart/form-data body")
    assert stored_files(root) == {} and incoming(root) == []
    # the 400 is the one report: aiohttp's own parser does not warn about it on stderr too
    assert [str(w.message) for w in recwarn if "ContentDisposition" in type(w.message).__name__] == []


@pytest.mark.parametrize("big", [False, True], ids=["in-memory", "streamed"])
def test_a_nested_multipart_part_is_400(tmp_path: Path, big: bool) -> None:
    root = tmp_path / "root"
    parts = whole_parts(b"data", b'Content-Disposition: form-data; name="file"\r\n'
                                 b"Content-Type: multipart/mixed; boundary=inner", big=big)
    with running(root) as server:
        answer = raw_post(server.url, parts)
        assert answer.status_code == 400 and "nested multipart" in answer.json()["detail"]
    assert stored_files(root) == {}


@pytest.mark.parametrize("big", [False, True], ids=["in-memory", "streamed"])
def test_a_body_without_its_closing_boundary_is_400(tmp_path: Path, big: bool) -> None:
    root = tmp_path / "root"
    body = b"".join(b"--b0undary\r\n" + head + b"\r\n\r\n" + data + b"\r\n"
                    for head, data in whole_parts(b"data", b'Content-Disposition: form-data; name="file"', big=big))
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b0undary"}
    with running(root) as server:
        answer = requests.post(server.url, data=body, headers=headers, timeout=TIMEOUT)
        assert answer.status_code == 400, answer.text
    assert stored_files(root) == {} and incoming(root) == []


def test_a_malformed_charset_on_a_text_field_is_400(tmp_path: Path) -> None:
    root = tmp_path / "root"
    parts = whole_parts(b"data", b'Content-Disposition: form-data; name="file"')
    parts[0] = (b'Content-Disposition: form-data; name="filename"\r\nContent-Type: text/plain; charset', b"f")
    with running(root) as server:
        assert raw_post(server.url, parts).status_code == 400
    assert stored_files(root) == {}


def test_a_latin1_text_field(tmp_path: Path) -> None:
    root = tmp_path / "root"
    parts = whole_parts(b"data", b'Content-Disposition: form-data; name="file"')
    parts[0] = (
        b'Content-Disposition: form-data; name="filename"\r\nContent-Type: text/plain; charset=iso-8859-1',
        "ä.bin".encode("latin-1"),
    )
    with running(root) as server:
        assert raw_post(server.url, parts).status_code == 200
    assert stored_files(root) == {"ä.bin": b"data"}


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary", "form-data"])
def test_a_malformed_request_content_type_is_400(tmp_path: Path, content_type: str) -> None:
    with running(tmp_path / "root") as server:
        answer = requests.post(
            server.url, data=b"--b--\r\n", headers={**AUTH, "Content-Type": content_type}, timeout=TIMEOUT
        )
        assert answer.status_code == 400


def test_an_unquoted_boundary_with_separators_is_still_read(tmp_path: Path) -> None:
    """Only the media type of the request is looked at; aiohttp reads the boundary."""
    root = tmp_path / "root"
    with running(root) as server:
        parts = whole_parts(b"data", b'Content-Disposition: form-data; name="file"')
        assert raw_post(server.url, parts, boundary=b"a:b=c/d").status_code == 200
    assert stored_files(root) == {"f.bin": b"data"}
