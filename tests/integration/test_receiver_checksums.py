"""SHA-256 sessions: ``Syncd-Checksum: sha256`` on a first part makes the session verified
with SHA-256 (completed with ``sha256`` instead of ``md5``); everything else stays MD5."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from syncd.server import EmbeddedReceiver
from tests.support.receiver import (
    AUTH,
    TIMEOUT,
    complete,
    get,
    incoming,
    md5_hex,
    post_whole,
    put_part,
    put_raw,
    running,
    stored_files,
)

DATA = os.urandom(300_000)
SHA256 = {**AUTH, "Syncd-Checksum": "sha256"}
KEY = "sha-256-client-upload-0001"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def first_part(url: str, data: bytes = DATA[:100_000], *, total: int = len(DATA), **kwargs: Any) -> requests.Response:
    kwargs.setdefault("headers", SHA256)
    return put_part(url, data, start=0, total=total, **kwargs)


def complete_with(url: str, encoding: str, **fields: str) -> requests.Response:
    """A completion with ``fields`` as JSON, urlencoded or multipart/form-data."""
    if encoding == "json":
        return requests.post(url, json=fields, headers=AUTH, timeout=TIMEOUT)
    if encoding == "urlencoded":
        return requests.post(url, data=fields, headers=AUTH, timeout=TIMEOUT)
    files = {name: (None, value) for name, value in fields.items()}
    return requests.post(url, files=files, headers=AUTH, timeout=TIMEOUT)


def open_sha256_session(url: str, data: bytes = DATA, *, filename: str = "f.bin") -> dict[str, Any]:
    """A SHA-256 session with all of ``data`` received: a form first part, a raw part, a form part."""
    first = first_part(url, data[:100_000], total=len(data), filename=filename)
    assert first.status_code == 200, first.text
    doc = first.json()
    raw = put_raw(doc["url"], data[100_000:250_000], start=100_000, total=len(data))
    assert raw.status_code == 200, raw.text
    last = put_part(doc["url"], data[250_000:], start=250_000, total=len(data))
    assert last.status_code == 200, last.text
    return last.json()


@pytest.mark.parametrize("encoding", ["json", "urlencoded", "multipart"])
def test_a_sha256_session_completes_with_its_sha256(
    server: EmbeddedReceiver, root: Path, encoding: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    doc = open_sha256_session(server.url, filename="dir/f.bin")
    assert (doc["checksum"], doc["offset"], doc["status"]) == ("sha256", len(DATA), 1)
    done = complete_with(doc["url"], encoding, sha256=sha256_hex(DATA))
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["checksum"], body["sha256"], body["status"], body["path"]) == (
        "sha256", sha256_hex(DATA), 2, "dir/f.bin",
    )  # fmt: skip
    assert "md5" not in body
    assert get(doc["url"]).json() == body
    assert stored_files(root) == {"dir/f.bin": DATA}
    assert any(f"sha256 {sha256_hex(DATA)}" in r.getMessage() for r in caplog.records if "stored" in r.getMessage())


@pytest.mark.parametrize("value", ["SHA256", "sha256 ", "Sha256"])
def test_the_header_value_is_case_insensitive(server: EmbeddedReceiver, value: str) -> None:
    answer = first_part(server.url, DATA, headers={**AUTH, "Syncd-Checksum": value})
    assert answer.status_code == 200, answer.text
    assert answer.json()["checksum"] == "sha256"
    assert complete_with(answer.json()["url"], "json", sha256=sha256_hex(DATA)).status_code == 200


def test_later_parts_ignore_the_header(server: EmbeddedReceiver, root: Path) -> None:
    doc = first_part(server.url).json()
    raw = put_raw(doc["url"], DATA[100_000:200_000], start=100_000, total=len(DATA), **{"Syncd-Checksum": "crc32"})
    assert raw.status_code == 200, raw.text
    md5_asked = {**AUTH, "Syncd-Checksum": "md5"}
    form = put_part(doc["url"], DATA[200_000:], start=200_000, total=len(DATA), headers=md5_asked)
    assert (form.status_code, form.json()["checksum"]) == (200, "sha256")
    assert complete_with(doc["url"], "json", sha256=sha256_hex(DATA)).status_code == 200
    assert stored_files(root) == {"f.bin": DATA}


@pytest.mark.parametrize("encoding", ["json", "urlencoded", "multipart"])
def test_a_sha256_session_is_not_completed_by_md5(server: EmbeddedReceiver, root: Path, encoding: str) -> None:
    doc = open_sha256_session(server.url)
    answer = complete_with(doc["url"], encoding, md5=md5_hex(DATA))
    assert answer.status_code == 400
    assert answer.json() == {"detail": "Checksum of type 'sha256' is required"}
    assert get(doc["url"]).json()["status"] == 1
    assert stored_files(root) == {}


def test_a_wrong_sha256_is_refused_and_the_session_stays_open(server: EmbeddedReceiver, root: Path) -> None:
    doc = open_sha256_session(server.url)
    for wrong in (sha256_hex(DATA[:-1]), md5_hex(DATA), "not hex"):
        answer = complete_with(doc["url"], "json", sha256=wrong)
        assert answer.status_code == 400
        assert answer.json() == {"detail": "checksum does not match"}
    assert get(doc["url"]).json()["status"] == 1
    assert stored_files(root) == {}
    done = complete_with(doc["url"], "json", sha256=sha256_hex(DATA).upper())
    assert done.status_code == 200, done.text
    assert stored_files(root) == {"f.bin": DATA}
    # a retried completion is compared with the stored digest
    again = complete_with(doc["url"], "json", sha256=sha256_hex(DATA))
    assert (again.status_code, again.json()) == (200, done.json())
    late = complete_with(doc["url"], "json", sha256=sha256_hex(b"other"))
    assert (late.status_code, late.json()) == (400, {"detail": "checksum does not match"})


@pytest.mark.parametrize("headers", [AUTH, {**AUTH, "Syncd-Checksum": "md5"}, {**AUTH, "Syncd-Checksum": "MD5 "}])
def test_an_md5_session_still_needs_its_md5(server: EmbeddedReceiver, root: Path, headers: dict[str, str]) -> None:
    doc = first_part(server.url, DATA, headers=headers).json()
    assert doc["checksum"] == "md5"
    answer = complete_with(doc["url"], "json", sha256=sha256_hex(DATA))
    assert (answer.status_code, answer.json()) == (400, {"detail": "Checksum of type 'md5' is required"})
    done = complete(doc["url"], md5_hex(DATA))
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["checksum"], body["md5"]) == ("md5", md5_hex(DATA))
    assert "sha256" not in body
    assert stored_files(root) == {"f.bin": DATA}


@pytest.mark.parametrize("value", ["sha1", "SHA-256", "crc32c", "", "md5, sha256", "x" * 60])
def test_an_unsupported_algorithm_is_refused_before_anything_is_made(
    server: EmbeddedReceiver, root: Path, value: str
) -> None:
    answer = first_part(server.url, headers={**AUTH, "Syncd-Checksum": value})
    assert answer.status_code == 400
    shown = value.strip() if len(value) <= 40 else value[:40] + "..."
    assert answer.json() == {"detail": f"Unsupported checksum {shown!r}: this server takes md5 or sha256"}
    assert incoming(root) == []
    assert stored_files(root) == {}


def test_a_repeated_header_is_refused(server: EmbeddedReceiver, root: Path) -> None:
    """Two values are one list (``sha256, sha256``) to HTTP: not an algorithm."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="filename"\r\n\r\nf.bin\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n\r\n' + DATA[:10] + b"\r\n--b--\r\n"
    )
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        conn.putrequest("PUT", "/chunked_upload/")
        for name, value in [
            *AUTH.items(),
            ("Syncd-Checksum", "sha256"),
            ("Syncd-Checksum", "sha256"),
            ("Content-Range", f"bytes 0-9/{len(DATA)}"),
            ("Content-Type", "multipart/form-data; boundary=b"),
            ("Content-Length", str(len(body))),
        ]:
            conn.putheader(name, value)
        conn.endheaders(body)
        answer = conn.getresponse()
        status, doc = answer.status, json.loads(answer.read())
    finally:
        conn.close()
    assert status == 400
    assert doc["detail"] == "Unsupported checksum 'sha256, sha256': this server takes md5 or sha256"
    assert incoming(root) == []


def test_every_json_answer_offers_sha256(server: EmbeddedReceiver) -> None:
    doc = first_part(server.url, headers=AUTH)
    answers = [
        doc,
        first_part(server.url),
        get(doc.json()["url"]),
        put_part(doc.json()["url"], DATA[:10], start=5, total=len(DATA)),  # 400
        first_part(server.url, headers={**AUTH, "Syncd-Checksum": "sha1"}),  # 400
        complete_with(doc.json()["url"], "json"),  # 400
        get(server.url + "11111111-1111-4111-8111-111111111111/"),  # 404
        requests.get(server.url + "x/", timeout=TIMEOUT),  # 401
        requests.get(server.url.replace("chunked_upload/", "healthz"), timeout=TIMEOUT),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 400, 400, 400, 404, 401, 200]
    assert all(a.headers.get("Syncd-Checksum") == "sha256" for a in answers)


def test_a_sha256_session_resumes_after_a_restart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    root = tmp_path / "root"
    with running(root) as first:
        doc = first_part(first.url).json()
        assert put_raw(doc["url"], DATA[100_000:150_000], start=100_000, total=len(DATA)).status_code == 200
    with running(root) as second:
        url = f"{second.url}{doc['id']}/"
        resumed = get(url).json()
        assert (resumed["offset"], resumed["checksum"], resumed["status"]) == (150_000, "sha256", 1)
        assert put_raw(url, DATA[150_000:], start=150_000, total=len(DATA)).status_code == 200
        wrong = complete_with(url, "json", sha256=sha256_hex(DATA[:-1] + b"x"))
        assert (wrong.status_code, wrong.json()) == (400, {"detail": "checksum does not match"})
        assert complete_with(url, "json", md5=md5_hex(DATA)).status_code == 400
        done = complete_with(url, "json", sha256=sha256_hex(DATA))
        assert done.status_code == 200, done.text
    with running(root) as third:
        after = get(f"{third.url}{doc['id']}/").json()
        assert (after["status"], after["checksum"], after["sha256"]) == (2, "sha256", sha256_hex(DATA))
    assert stored_files(root) == {"f.bin": DATA}
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilt" in r.getMessage()]
    assert len(rebuilt) == 1 and "rebuilt SHA-256 state" in rebuilt[0]


def test_a_restart_between_last_part_and_completion(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root) as first:
        doc = first_part(first.url, DATA).json()
    with running(root) as second:
        url = f"{second.url}{doc['id']}/"
        assert complete_with(url, "json", sha256=md5_hex(DATA)).status_code == 400
        assert complete_with(url, "json", sha256=sha256_hex(DATA)).status_code == 200
    assert stored_files(root) == {"f.bin": DATA}


@pytest.mark.parametrize(("first", "repeat"), [("sha256", "md5"), ("md5", "sha256")])
def test_a_repeated_keyed_first_part_with_another_algorithm_is_refused(
    server: EmbeddedReceiver, root: Path, first: str, repeat: str
) -> None:
    doc = first_part(server.url, headers={**AUTH, "Upload-Key": KEY, "Syncd-Checksum": first}).json()
    answer = first_part(server.url, headers={**AUTH, "Upload-Key": KEY, "Syncd-Checksum": repeat})
    assert answer.status_code == 400
    assert answer.json() == {"detail": f"Upload-Key {KEY!r} names an upload checked with {first}, not {repeat}"}
    assert get(doc["url"]).json()["offset"] == 100_000
    same = first_part(server.url, headers={**AUTH, "Upload-Key": KEY, "Syncd-Checksum": first})
    assert (same.status_code, same.json()["detail"], same.json()["id"]) == (400, "Offsets do not match", doc["id"])


def test_a_repeated_keyed_first_part_of_a_completed_sha256_session(server: EmbeddedReceiver, root: Path) -> None:
    keyed = {**SHA256, "Upload-Key": KEY}
    doc = first_part(server.url, DATA, headers=keyed).json()
    done = complete_with(doc["url"], "json", sha256=sha256_hex(DATA)).json()
    assert first_part(server.url, DATA, headers=keyed).json() == done
    other = first_part(server.url, DATA, headers={**AUTH, "Upload-Key": KEY})
    assert other.status_code == 400
    assert other.json()["detail"] == f"Upload-Key {KEY!r} names an upload checked with sha256, not md5"
    # whole files are MD5: a whole file with the key of a SHA-256 session is another upload
    whole = post_whole(server.url, DATA, filename="f.bin", md5=md5_hex(DATA), headers={"Upload-Key": KEY})
    assert (whole.status_code, whole.json()["detail"]) == (400, other.json()["detail"])
    assert stored_files(root) == {"f.bin": DATA}


def test_same_content_already_under_the_name_is_reused_for_sha256(
    server: EmbeddedReceiver, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    for _ in range(2):
        doc = open_sha256_session(server.url)
        done = complete_with(doc["url"], "multipart", sha256=sha256_hex(DATA))
        assert done.status_code == 200, done.text
        assert done.json()["path"] == "f.bin"  # identical content: idempotent
    assert stored_files(root) == {"f.bin": DATA}
    assert sum("identical file was already there" in r.getMessage() for r in caplog.records) == 1
    # same size, other content: not the same file
    other = os.urandom(len(DATA))
    doc = open_sha256_session(server.url, other)
    assert complete_with(doc["url"], "json", sha256=sha256_hex(other)).json()["path"] == "f (1).bin"
    assert stored_files(root) == {"f.bin": DATA, "f (1).bin": other}
