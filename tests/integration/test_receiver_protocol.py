"""Every endpoint and every error answer of the chunked upload protocol, over loopback."""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests_toolbelt import MultipartEncoder

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
    running,
    stored_files,
    upload_in_parts,
)

DATA = os.urandom(3000)
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def open_session(server: EmbeddedReceiver, first: bytes = DATA[:1000], *, total: int = len(DATA)) -> dict:
    answer = put_part(server.url, first, start=0, total=total)
    assert answer.status_code == 200, answer.text
    return answer.json()


# -- the happy path, endpoint by endpoint --------------------------------------------------


def test_first_part_creates_a_session(server: EmbeddedReceiver) -> None:
    doc = open_session(server)
    assert UUID_RE.match(doc["id"])
    assert doc["url"] == f"http://127.0.0.1:{server.port}/chunked_upload/{doc['id']}/"
    assert (doc["offset"], doc["total"], doc["filename"], doc["status"]) == (1000, 3000, "f.bin", 1)
    assert ISO_RE.match(doc["created_at"]) and ISO_RE.match(doc["expires_at"])
    assert doc["completed_at"] is None
    assert "md5" not in doc and "path" not in doc


def test_next_parts_then_completion(server: EmbeddedReceiver, root: Path) -> None:
    doc = open_session(server)
    doc = put_part(doc["url"], DATA[1000:2000], start=1000, total=3000).json()
    assert doc["offset"] == 2000
    doc = put_part(doc["url"], DATA[2000:], start=2000, total=3000).json()
    assert doc["offset"] == 3000 and doc["status"] == 1
    done = complete(doc["url"], md5_hex(DATA))
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["status"], body["md5"], body["size"], body["path"]) == (2, md5_hex(DATA), 3000, "f.bin")
    assert ISO_RE.match(body["completed_at"])
    assert stored_files(root) == {"f.bin": DATA}
    assert incoming(root) == [f"{body['id']}.json"]  # data moved into place, record kept


def test_get_returns_the_offset_to_resume_from(server: EmbeddedReceiver) -> None:
    doc = open_session(server)
    again = get(doc["url"])
    assert again.status_code == 200
    assert again.json() == doc


def test_completion_accepts_md5_as_a_form_field(server: EmbeddedReceiver) -> None:
    doc = open_session(server, DATA, total=len(DATA))
    urlencoded = requests.post(doc["url"], data={"md5": md5_hex(DATA)}, headers=AUTH, timeout=TIMEOUT)
    assert urlencoded.status_code == 200, urlencoded.text
    doc2 = open_session(server, DATA, total=len(DATA))
    multipart = requests.post(
        doc2["url"], files={"md5": (None, md5_hex(DATA))}, headers=AUTH, timeout=TIMEOUT
    )
    assert multipart.status_code == 200, multipart.text
    assert multipart.json()["path"] == "f.bin"  # identical content: idempotent


def test_completing_twice_answers_the_same(server: EmbeddedReceiver, root: Path) -> None:
    doc = open_session(server, DATA, total=len(DATA))
    first = complete(doc["url"], md5_hex(DATA)).json()
    second = complete(doc["url"], md5_hex(DATA).upper())
    assert second.status_code == 200 and second.json() == first
    assert get(doc["url"]).json()["status"] == 2
    assert stored_files(root) == {"f.bin": DATA}


def test_whole_file_in_one_post(server: EmbeddedReceiver, root: Path) -> None:
    answer = post_whole(server.url, DATA, filename="dir/whole.bin", md5=md5_hex(DATA))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["status"], body["size"], body["path"], body["offset"]) == (2, 3000, "dir/whole.bin", 3000)
    assert stored_files(root) == {"dir/whole.bin": DATA}
    assert get(body["url"]).json()["status"] == 2


def test_empty_file_in_one_post(server: EmbeddedReceiver, root: Path) -> None:
    answer = post_whole(server.url, b"", filename="empty.txt", md5=md5_hex(b""))
    assert answer.status_code == 200, answer.text
    assert (answer.json()["size"], answer.json()["md5"]) == (0, md5_hex(b""))
    assert stored_files(root) == {"empty.txt": b""}


def test_empty_file_as_a_session(server: EmbeddedReceiver, root: Path) -> None:
    doc = put_part(server.url, b"", start=0, total=0, filename="empty", content_range="bytes */0")
    assert doc.status_code == 200, doc.text
    assert (doc.json()["offset"], doc.json()["total"]) == (0, 0)
    done = complete(doc.json()["url"], md5_hex(b""))
    assert done.status_code == 200, done.text
    assert stored_files(root) == {"empty": b""}


def test_delete_aborts_and_removes_the_data(server: EmbeddedReceiver, root: Path) -> None:
    doc = open_session(server)
    answer = requests.delete(doc["url"], headers=AUTH, timeout=TIMEOUT)
    assert answer.status_code == 204
    assert incoming(root) == []
    assert get(doc["url"]).status_code == 404
    assert put_part(doc["url"], DATA[1000:2000], start=1000, total=3000).status_code == 404


def test_delete_of_a_completed_session_keeps_the_file(server: EmbeddedReceiver, root: Path) -> None:
    doc = open_session(server, DATA, total=len(DATA))
    complete(doc["url"], md5_hex(DATA))
    assert requests.delete(doc["url"], headers=AUTH, timeout=TIMEOUT).status_code == 204
    assert stored_files(root) == {"f.bin": DATA}
    assert incoming(root) == []


def test_one_log_line_per_stored_file(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    with running(root) as server:
        upload_in_parts(server.url, DATA, part=1000, filename="logged/f.bin")
    stored = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stored ")]
    assert len(stored) == 1
    assert re.fullmatch(
        rf"stored logged/f\.bin: 2\.9 KiB, md5 {md5_hex(DATA)}, \d+\.\d\ds, \d+\.\d MiB/s", stored[0]
    ), stored[0]


def test_the_clients_question_what_the_server_takes_is_not_logged_as_a_refusal(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """syncd's client asks with a key-less GET of the collection, once per run: a 400 whose
    headers it reads. Other refusals stay at INFO."""
    caplog.set_level(logging.INFO, logger="syncd.server")
    with running(root) as server:
        probe = requests.get(server.url, headers=AUTH, timeout=TIMEOUT)
        bad = put_part(server.url, DATA, start=5, total=3000)
    assert probe.status_code == 400 and probe.headers["Syncd-Checksum"] == "sha256"
    assert bad.status_code == 400
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("GET ", "PUT "))]
    assert len(logged) == 1 and logged[0].startswith("PUT /chunked_upload/: 400"), logged


def test_healthz(server: EmbeddedReceiver) -> None:
    answer = requests.get(server.url.replace("chunked_upload/", "healthz"), timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "open_sessions": 0}


def test_session_urls_without_the_trailing_slash_work(server: EmbeddedReceiver) -> None:
    doc = open_session(server)
    assert get(doc["url"].rstrip("/")).json()["offset"] == 1000


def test_file_part_before_the_filename_field(server: EmbeddedReceiver, root: Path) -> None:
    """syncd's own client streams with MultipartEncoder; the order is the caller's."""
    encoder = MultipartEncoder(
        fields=[
            ("file", ("blob", io.BytesIO(DATA), "application/octet-stream")),
            ("filename", "late/name.bin"),
        ]
    )
    answer = requests.put(
        server.url,
        data=encoder,
        headers={**AUTH, "Content-Type": encoder.content_type, "Content-Range": "bytes 0-2999/3000"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text
    assert complete(answer.json()["url"], md5_hex(DATA)).json()["path"] == "late/name.bin"
    assert stored_files(root) == {"late/name.bin": DATA}


def test_unknown_form_fields_are_ignored(server: EmbeddedReceiver) -> None:
    answer = requests.put(
        server.url,
        files={"file": ("x", DATA)},
        data={"filename": "f.bin", "comment": "hello", "md5": "ignored here"},
        headers={**AUTH, "Content-Range": "bytes 0-2999/3000"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200, answer.text


def test_base_path(root: Path) -> None:
    with running(root, base_path="/ingest") as server:
        assert server.url == f"http://127.0.0.1:{server.port}/ingest/chunked_upload/"
        doc = upload_in_parts(server.url, DATA, part=1024, filename="b.bin")
        assert doc["url"].startswith(server.url)
        assert requests.get(server.url.replace("chunked_upload/", "healthz"), timeout=TIMEOUT).ok
        outside = requests.put(
            f"http://127.0.0.1:{server.port}/chunked_upload/", headers=AUTH, timeout=TIMEOUT
        )
        assert outside.status_code == 404


def test_forwarded_headers_are_ignored_unless_trusted(root: Path) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "ingest.example.org"}
    with running(root) as server:
        doc = put_part(server.url, DATA, start=0, total=3000, headers={**AUTH, **forwarded}).json()
        assert doc["url"].startswith(f"http://127.0.0.1:{server.port}/chunked_upload/")
    with running(root, trust_forwarded=True) as server:
        doc = put_part(server.url, DATA, start=0, total=3000, headers={**AUTH, **forwarded}).json()
        assert doc["url"] == f"https://ingest.example.org/chunked_upload/{doc['id']}/"
        hostile = {"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "evil/path"}
        doc = put_part(server.url, DATA, start=0, total=3000, headers={**AUTH, **hostile}).json()
        assert doc["url"].startswith(f"http://127.0.0.1:{server.port}/chunked_upload/")


# -- error answers ---------------------------------------------------------------------------


def test_offset_mismatch_names_the_expected_offset(server: EmbeddedReceiver) -> None:
    doc = open_session(server)
    answer = put_part(doc["url"], DATA[500:1500], start=500, total=3000)
    assert answer.status_code == 400
    assert answer.json() == {"detail": "Offsets do not match", "expected_offset": 1000, "provided_offset": 500}
    assert get(doc["url"]).json()["offset"] == 1000


def test_first_part_must_start_at_zero(server: EmbeddedReceiver, root: Path) -> None:
    answer = put_part(server.url, DATA[1000:2000], start=1000, total=3000)
    assert answer.status_code == 400
    assert answer.json()["detail"] == "The first part must start at offset 0"
    assert incoming(root) == []


@pytest.mark.parametrize("sent", [999, 1001])
def test_part_length_must_match_the_range(server: EmbeddedReceiver, root: Path, sent: int) -> None:
    doc = open_session(server)
    answer = put_part(doc["url"], DATA[1000 : 1000 + sent], start=1000, total=3000,
                      content_range="bytes 1000-1999/3000")
    assert answer.status_code == 400
    assert answer.json()["detail"].startswith("File size doesn't match headers")
    assert get(doc["url"]).json()["offset"] == 1000
    assert (root / ".incoming" / f"{doc['id']}.part").stat().st_size == 1000
    # the same part, sent right, still fits
    assert put_part(doc["url"], DATA[1000:2000], start=1000, total=3000).json()["offset"] == 2000


def test_first_part_of_the_wrong_length_leaves_nothing(server: EmbeddedReceiver, root: Path) -> None:
    answer = put_part(server.url, DATA[:10], start=0, total=3000, content_range="bytes 0-99/3000")
    assert answer.status_code == 400
    assert incoming(root) == []


def test_total_may_not_change(server: EmbeddedReceiver) -> None:
    doc = open_session(server)
    answer = put_part(doc["url"], DATA[1000:2000], start=1000, total=4000)
    assert answer.status_code == 400
    assert answer.json() == {"detail": "Total size does not match the session (3000 bytes)", "total": 3000}


def test_completion_before_the_last_byte_is_refused(server: EmbeddedReceiver) -> None:
    doc = open_session(server)
    answer = complete(doc["url"], md5_hex(DATA))
    assert answer.status_code == 400
    assert answer.json() == {
        "detail": "Upload is incomplete: 1000 of 3000 bytes received",
        "offset": 1000,
        "total": 3000,
    }


def test_checksum_mismatch(server: EmbeddedReceiver, root: Path) -> None:
    doc = open_session(server, DATA, total=len(DATA))
    answer = complete(doc["url"], md5_hex(b"something else"))
    assert answer.status_code == 400
    assert answer.json() == {"detail": "checksum does not match"}
    assert stored_files(root) == {}
    assert complete(doc["url"], md5_hex(DATA)).status_code == 200  # the data is still there


def test_completion_without_md5(server: EmbeddedReceiver) -> None:
    doc = open_session(server, DATA, total=len(DATA))
    for kwargs in ({"json": {}}, {"json": {"md5": 5}}, {"data": {}}, {"data": b"junk"}):
        answer = requests.post(doc["url"], headers=AUTH, timeout=TIMEOUT, **kwargs)
        assert answer.status_code == 400
        assert answer.json() == {"detail": "Checksum of type 'md5' is required"}


def test_completion_with_malformed_json(server: EmbeddedReceiver) -> None:
    doc = open_session(server, DATA, total=len(DATA))
    answer = requests.post(
        doc["url"], data=b"{", headers={**AUTH, "Content-Type": "application/json"}, timeout=TIMEOUT
    )
    assert answer.status_code == 400 and answer.json() == {"detail": "Malformed JSON body"}


def test_parts_after_completion_are_refused(server: EmbeddedReceiver) -> None:
    doc = open_session(server, DATA, total=len(DATA))
    complete(doc["url"], md5_hex(DATA))
    answer = put_part(doc["url"], DATA[:10], start=3000, total=3000, content_range="bytes 0-9/3000")
    assert answer.status_code == 400
    assert answer.json() == {"detail": 'Upload has already been marked as "complete"'}
    assert complete(doc["url"], md5_hex(b"other")).json() == {"detail": "checksum does not match"}


@pytest.mark.parametrize(
    "session_id",
    ["00000000-0000-4000-8000-000000000000", "not-a-uuid", "..", "%2e%2e%2fetc", "a%2fb"],
)
def test_unknown_sessions_are_404(server: EmbeddedReceiver, session_id: str) -> None:
    url = f"{server.url}{session_id}/"
    assert get(url).status_code == 404
    assert get(url).json()["detail"] in ("Not found.", "Not Found")
    assert put_part(url, b"x", start=0, total=1).status_code == 404
    assert complete(url, md5_hex(b"x")).status_code == 404
    assert requests.delete(url, headers=AUTH, timeout=TIMEOUT).status_code == 404


@pytest.mark.parametrize(
    ("content_range", "detail"),
    [
        (None, "Error in request headers"),
        ("bytes 0-999", "Error in request headers"),
        ("items 0-999/3000", "Error in request headers"),
        ("bytes 0-3000/3000", "End of chunk exceeds reported total (3000 bytes)"),
    ],
)
def test_bad_content_range(server: EmbeddedReceiver, content_range: str | None, detail: str) -> None:
    headers = dict(AUTH) if content_range is None else {**AUTH, "Content-Range": content_range}
    answer = requests.put(
        server.url, files={"file": ("x", DATA[:1000])}, data={"filename": "f"}, headers=headers, timeout=TIMEOUT
    )
    assert answer.status_code == 400
    assert answer.json() == {"detail": detail}


def test_no_file_part(server: EmbeddedReceiver, root: Path) -> None:
    answer = requests.put(
        server.url,
        files={"other": ("x", b"abc")},
        data={"filename": "f"},
        headers={**AUTH, "Content-Range": "bytes 0-2/3"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400 and answer.json() == {"detail": "No chunk file was submitted"}
    assert incoming(root) == []
    whole = requests.post(server.url, data={"filename": "f", "md5": md5_hex(b"")}, headers=AUTH, timeout=TIMEOUT)
    assert whole.status_code == 400


def test_two_file_parts(server: EmbeddedReceiver) -> None:
    encoder = MultipartEncoder(fields=[("filename", "f"), ("file", ("a", b"abc")), ("file", ("b", b"def"))])
    answer = requests.put(
        server.url,
        data=encoder,
        headers={**AUTH, "Content-Type": encoder.content_type, "Content-Range": "bytes 0-2/6"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400 and answer.json() == {"detail": "More than one file was submitted"}


def test_no_filename_field(server: EmbeddedReceiver, root: Path) -> None:
    answer = requests.put(
        server.url,
        files={"file": ("x.bin", b"abc")},
        headers={**AUTH, "Content-Range": "bytes 0-2/3"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400 and answer.json() == {"detail": "filename: This field is required."}
    assert incoming(root) == []


def test_not_multipart(server: EmbeddedReceiver) -> None:
    answer = requests.put(
        server.url, data=b"raw", headers={**AUTH, "Content-Range": "bytes 0-2/3"}, timeout=TIMEOUT
    )
    assert answer.status_code == 400
    assert answer.json() == {"detail": "No chunk file was submitted"}


def test_encoded_file_parts_are_refused(server: EmbeddedReceiver) -> None:
    body = (
        b"--b\r\nContent-Disposition: form-data; name=\"filename\"\r\n\r\nf\r\n"
        b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nYWJj\r\n--b--\r\n"
    )
    answer = requests.put(
        server.url,
        data=body,
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=b", "Content-Range": "bytes 0-2/3"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400 and "unsupported encoding" in answer.json()["detail"]


def test_whole_post_checksum_mismatch_keeps_nothing(server: EmbeddedReceiver, root: Path) -> None:
    answer = post_whole(server.url, DATA, filename="w.bin", md5=md5_hex(b"x"))
    assert answer.status_code == 400 and answer.json() == {"detail": "checksum does not match"}
    missing = post_whole(server.url, DATA, filename="w.bin")
    assert missing.status_code == 400
    assert missing.json() == {"detail": "Checksum of type 'md5' is required"}
    assert stored_files(root) == {} and incoming(root) == []


def test_whole_post_ignores_content_range(server: EmbeddedReceiver, root: Path) -> None:
    answer = requests.post(
        server.url,
        files={"file": ("x", DATA)},
        data={"filename": "w.bin", "md5": md5_hex(DATA)},
        headers={**AUTH, "Content-Range": "bytes 5-9/10"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 200 and stored_files(root) == {"w.bin": DATA}


def test_wrong_method_on_the_collection(server: EmbeddedReceiver) -> None:
    answer = requests.delete(server.url, headers=AUTH, timeout=TIMEOUT)
    assert answer.status_code == 405
    assert answer.json() == {"detail": "Method Not Allowed"}
    assert set(answer.headers["Allow"].split(",")) == {"GET", "PUT", "POST"}  # GET: a session by its Upload-Key


# -- Content-Range, generated --------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    start=st.integers(0, 5000) | st.just(1000),
    length=st.integers(0, 2100),
    total=st.integers(0, 5000) | st.just(3000),
    sent=st.integers(-2, 2),
)
def test_generated_ranges_on_an_open_session(
    server: EmbeddedReceiver, start: int, length: int, total: int, sent: int
) -> None:
    """Model: only an in-bounds range at the offset, with the session's total and exactly
    as many bytes as it announces, moves the offset; everything else is a 400 that
    leaves the session as it was."""
    doc = open_session(server)
    end = start + length - 1
    body = os.urandom(max(0, length + sent))
    answer = put_part(doc["url"], body, start=start, total=total, content_range=f"bytes {start}-{end}/{total}")
    valid_range = length >= 1 and end < total
    accepted = valid_range and total == 3000 and start == 1000 and sent == 0
    if accepted:
        assert answer.status_code == 200, answer.text
        assert answer.json()["offset"] == 1000 + length
    else:
        assert answer.status_code == 400, answer.text
        assert get(doc["url"]).json()["offset"] == 1000
        detail = answer.json()["detail"]
        if not valid_range:
            assert detail.startswith(("Error in request headers", "End of chunk exceeds"))
        elif total != 3000:
            assert detail.startswith("Total size does not match")
        elif start != 1000:
            assert answer.json()["expected_offset"] == 1000
        else:
            assert detail.startswith("File size doesn't match headers")
    requests.delete(doc["url"], headers=AUTH, timeout=TIMEOUT)
