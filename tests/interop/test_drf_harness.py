"""What the real drf-chunked-upload (0.6) server answers: the behaviour syncd's client handles.

Every status code and JSON body here is asserted exactly, so an upgrade that changes the
protocol fails loudly. Uploads go through ``tests/support/synapse_client.py`` (what
synapse-sdk sends) or raw ``requests`` calls where a test needs one precise request.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.support.drf import COMPLETE, UPLOADING, DrfServer
from tests.support.synapse_client import upload_file

pytestmark = pytest.mark.interop

MiB = 1024 * 1024
SESSION_KEYS = {
    "id",
    "url",
    "file",
    "filename",
    "offset",
    "created_at",
    "status",
    "completed_at",
    "user",
}


def unique(name: str) -> str:
    return f"{uuid.uuid4().hex[:8]}-{name}"


def make_file(tmp_path: Path, size: int, name: str = "data.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(random.Random(size).randbytes(size))
    return path


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def put_part(
    server: DrfServer,
    url: str,
    data: bytes,
    start: int,
    total: int,
    filename: str,
    *,
    content_range: str | None = None,
    token: str | None = None,
) -> requests.Response:
    if content_range is None:
        content_range = f"bytes {start}-{start + len(data) - 1}/{total}"
    return requests.put(
        url,
        data={"filename": filename},
        files={"file": (filename, data)},
        headers={**server.headers(token), "Content-Range": content_range},
        timeout=30,
    )


def complete(server: DrfServer, url: str, md5_hex: str, **kw) -> requests.Response:
    return requests.post(url, json={"md5": md5_hex}, headers=server.headers(**kw), timeout=30)


# --------------------------------------------------------------------------- happy paths


def test_put_response_shape(drf_server: DrfServer) -> None:
    name = unique("shape.bin")
    r = put_part(drf_server, drf_server.url, b"abc", 0, 6, name)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    body = r.json()
    assert set(body) == SESSION_KEYS
    upload_id = body["id"]
    assert str(uuid.UUID(upload_id)) == upload_id
    assert body["url"] == drf_server.session_url(upload_id)  # absolute, trailing slash
    assert body["filename"] == name
    assert body["offset"] == 3
    assert body["status"] == UPLOADING
    assert body["completed_at"] is None
    assert isinstance(body["user"], int)
    # MEDIA_URL + drf's upload_to "chunked_uploads/%Y/%m/%d/<id>.part" (server local time)
    assert re.fullmatch(
        re.escape(drf_server.base_url)
        + rf"/media/chunked_uploads/\d{{4}}/\d\d/\d\d/{upload_id}\.part",
        body["file"],
    ), body["file"]

    r = put_part(drf_server, body["url"], b"def", 3, 6, name)
    assert r.status_code == 200
    assert r.json() == {**body, "offset": 6}

    r = complete(drf_server, body["url"], md5(b"abcdef"))
    assert r.status_code == 200
    done = r.json()
    assert set(done) == SESSION_KEYS
    assert done["status"] == COMPLETE
    assert done["offset"] == 6
    assert done["completed_at"] is not None
    assert done["file"] == body["file"][: -len(".part")] + ".done"
    assert drf_server.completed()[name] == md5(b"abcdef")


@pytest.mark.parametrize(
    "size",
    [1, MiB - 1, MiB, MiB + 1, 2 * MiB + 1],
    ids=["1B", "part-1", "part", "part+1", "2part+1"],
)
def test_synapse_client_round_trip(drf_server: DrfServer, tmp_path: Path, size: int) -> None:
    path = make_file(tmp_path, size)
    name = unique(f"{size}.bin")
    result = upload_file(
        drf_server.url, path, token=drf_server.token, filename=name, chunk_size=MiB
    )
    assert set(result) == SESSION_KEYS
    assert result["status"] == COMPLETE
    assert result["offset"] == size
    assert result["filename"] == name
    assert drf_server.completed()[name] == md5(path.read_bytes())
    assert len(drf_server.completed_sessions(name)) == 1


@pytest.mark.slow
def test_synapse_client_50mib_parts(drf_server: DrfServer, tmp_path: Path) -> None:
    """The SDK's default 50 MiB part passes waitress and Django limits (50 MiB + 1 B)."""
    size = 50 * MiB + 1
    path = make_file(tmp_path, size)
    name = unique("50MiB+1.bin")
    result = upload_file(drf_server.url, path, token=drf_server.token, filename=name)
    assert result["status"] == COMPLETE
    assert result["offset"] == size
    assert drf_server.completed()[name] == md5(path.read_bytes())


def test_unicode_and_spaces_in_name(drf_server: DrfServer, tmp_path: Path) -> None:
    name = unique("résumé 日本語  two spaces (1).bin")
    path = make_file(tmp_path, 1000)
    result = upload_file(
        drf_server.url, path, token=drf_server.token, filename=name, chunk_size=300
    )
    assert result["filename"] == name
    assert drf_server.completed()[name] == md5(path.read_bytes())


@pytest.mark.parametrize("name", ["a/b/{tag}-c.bin", "../../{tag}-escape.bin", "/abs/{tag}.bin"])
def test_names_with_slashes_are_stored_verbatim(
    drf_server: DrfServer, tmp_path: Path, name: str
) -> None:
    """drf keeps `filename` as an opaque string; the stored file is named by the session id."""
    name = name.format(tag=uuid.uuid4().hex[:8])
    path = make_file(tmp_path, 10)
    result = upload_file(drf_server.url, path, token=drf_server.token, filename=name)
    assert result["filename"] == name
    assert drf_server.completed()[name] == md5(path.read_bytes())
    stored = drf_server.session(result["id"]).path
    assert stored is not None
    assert stored.name == f"{result['id']}.done"
    assert stored.resolve().is_relative_to((drf_server.media_root / "chunked_uploads").resolve())


def test_get_session_returns_offset_for_resume(drf_server: DrfServer) -> None:
    name = unique("resume.bin")
    data = b"0123456789"
    first = put_part(drf_server, drf_server.url, data[:4], 0, 10, name).json()
    r = requests.get(first["url"], headers=drf_server.headers(), timeout=30)
    assert r.status_code == 200
    assert r.json() == first  # same shape as the PUT answer; offset 4, status 1
    assert r.json()["offset"] == 4
    assert put_part(drf_server, first["url"], data[4:], 4, 10, name).status_code == 200
    assert complete(drf_server, first["url"], md5(data)).status_code == 200
    assert drf_server.completed()[name] == md5(data)


def test_whole_file_post(drf_server: DrfServer) -> None:
    name = unique("whole.bin")
    data = b"whole file in one request"
    r = requests.post(
        drf_server.url,
        data={"filename": name, "md5": md5(data)},
        files={"file": (name, data)},
        headers=drf_server.headers(),
        timeout=30,
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == SESSION_KEYS
    assert body["status"] == COMPLETE
    assert body["offset"] == len(data)
    assert drf_server.completed()[name] == md5(data)


def test_whole_file_post_wrong_md5_leaves_an_incomplete_session(drf_server: DrfServer) -> None:
    name = unique("whole-bad.bin")
    r = requests.post(
        drf_server.url,
        data={"filename": name, "md5": "0" * 32},
        files={"file": (name, b"xyz")},
        headers=drf_server.headers(),
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json() == {"detail": "checksum does not match"}
    # The row is created before the checksum check and is not removed.
    leftovers = [s for s in drf_server.sessions() if s.filename == name]
    assert [(s.status, s.offset) for s in leftovers] == [(UPLOADING, 3)]


# --------------------------------------------------------------------------- empty files


def test_empty_file_cannot_be_uploaded(drf_server: DrfServer, tmp_path: Path) -> None:
    """drf-chunked-upload 0.6 has no way to store an empty file."""
    name = unique("empty.bin")
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")

    # synapse-sdk sends no PUT at all, only the md5 POST to the list url.
    with pytest.raises(requests.HTTPError) as err:
        upload_file(drf_server.url, path, token=drf_server.token, filename=name)
    assert err.value.response.status_code == 400
    assert err.value.response.json() == {"detail": "No chunk file was submitted"}

    # Whole-file POST with an empty file part: the serializer's FileField refuses it.
    r = requests.post(
        drf_server.url,
        data={"filename": name, "md5": md5(b"")},
        files={"file": (name, b"")},
        headers=drf_server.headers(),
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json() == {"detail": {"file": ["The submitted file is empty."]}}

    # PUT with an empty part: every Content-Range is refused one way or another.
    r = put_part(drf_server, drf_server.url, b"", 0, 0, name, content_range="bytes 0--1/0")
    assert (r.status_code, r.json()) == (400, {"detail": "Error in request headers"})
    r = put_part(drf_server, drf_server.url, b"", 0, 0, name, content_range="bytes 0-0/0")
    assert (r.status_code, r.json()) == (
        400,
        {"detail": "File size doesn't match headers: file size is 0 but 1 reported"},
    )
    r = put_part(drf_server, drf_server.url, b"", 0, 0, name, content_range="bytes 1-0/0")
    assert (r.status_code, r.json()) == (
        400,
        {"detail": {"file": ["The submitted file is empty."]}},
    )
    assert [s for s in drf_server.sessions() if s.filename == name] == []


# --------------------------------------------------------------------------- offsets


def test_offset_mismatch_answer(drf_server: DrfServer) -> None:
    name = unique("offsets.bin")
    data = b"abcdefghij"
    session = put_part(drf_server, drf_server.url, data[:4], 0, 10, name).json()
    url = session["url"]

    r = put_part(drf_server, url, data[6:], 6, 10, name)  # a gap
    assert r.status_code == 400
    assert r.json() == {
        "detail": "Offsets do not match",
        "expected_offset": 4,
        "provided_offset": 6,
    }

    r = put_part(drf_server, url, data[:4], 0, 10, name)  # resend of an acknowledged part
    assert r.status_code == 400
    assert r.json() == {
        "detail": "Offsets do not match",
        "expected_offset": 4,
        "provided_offset": 0,
    }

    # Nothing was appended by the refused parts: realign and finish.
    assert requests.get(url, headers=drf_server.headers(), timeout=30).json()["offset"] == 4
    assert put_part(drf_server, url, data[4:], 4, 10, name).status_code == 200
    assert complete(drf_server, url, md5(data)).status_code == 200
    assert drf_server.completed()[name] == md5(data)


def test_first_put_ignores_start_and_total_is_not_tracked(drf_server: DrfServer) -> None:
    """The session-creating PUT never checks its start; no PUT is checked against earlier totals."""
    name = unique("loose.bin")
    r = put_part(drf_server, drf_server.url, b"abc", 5, 10, name)
    assert r.status_code == 200
    assert r.json()["offset"] == 3  # stored at 0, whatever the Content-Range said
    r = put_part(drf_server, r.json()["url"], b"de", 3, 50, name)  # another total: accepted
    assert r.status_code == 200
    assert r.json()["offset"] == 5
    assert complete(drf_server, r.json()["url"], md5(b"abcde")).status_code == 200


def test_request_validation_errors(drf_server: DrfServer) -> None:
    name = unique("invalid.bin")
    url = put_part(drf_server, drf_server.url, b"abc", 0, 6, name).json()["url"]
    cases = [
        (dict(content_range=""), "Error in request headers"),
        (
            dict(content_range="bytes 3-4/6"),
            "File size doesn't match headers: file size is 3 but 2 reported",
        ),
        (dict(content_range="bytes 3-7/6"), "End of chunk exceeds reported total (6 bytes)"),
        (dict(content_range="bytes 6-8/6"), "End of chunk exceeds reported total (6 bytes)"),
    ]
    for kwargs, detail in cases:
        r = put_part(drf_server, url, b"def", 3, 6, name, **kwargs)
        assert (r.status_code, r.json()) == (400, {"detail": detail}), kwargs

    r = requests.put(
        drf_server.url,
        data={"filename": name},
        headers={**drf_server.headers(), "Content-Range": "bytes 0-2/3"},
        timeout=30,
    )
    assert (r.status_code, r.json()) == (400, {"detail": "No chunk file was submitted"})
    r = requests.put(
        drf_server.url,
        files={"file": ("x", b"abc")},
        headers={**drf_server.headers(), "Content-Range": "bytes 0-2/3"},
        timeout=30,
    )
    assert (r.status_code, r.json()) == (400, {"detail": {"filename": ["This field is required."]}})
    r = put_part(drf_server, drf_server.url, b"abc", 0, 3, "n" * 256)
    assert (r.status_code, r.json()) == (
        400,
        {"detail": {"filename": ["Ensure this field has no more than 255 characters."]}},
    )
    longest = unique("n") + "n" * 245
    assert len(longest) == 255
    assert put_part(drf_server, drf_server.url, b"abc", 0, 3, longest).status_code == 200


# --------------------------------------------------------------------------- completion


def test_completion_with_wrong_md5(drf_server: DrfServer) -> None:
    name = unique("md5.bin")
    url = put_part(drf_server, drf_server.url, b"abc", 0, 3, name).json()["url"]

    r = complete(drf_server, url, "0" * 32)
    assert (r.status_code, r.json()) == (400, {"detail": "checksum does not match"})
    assert drf_server.session(url.rstrip("/").rsplit("/", 1)[1]).status == UPLOADING

    r = requests.post(url, json={}, headers=drf_server.headers(), timeout=30)
    assert (r.status_code, r.json()) == (400, {"detail": "Checksum of type 'md5' is required"})

    # Form-encoded md5 works as well as the SDK's JSON body.
    r = requests.post(url, data={"md5": md5(b"abc")}, headers=drf_server.headers(), timeout=30)
    assert r.status_code == 200
    assert r.json()["status"] == COMPLETE
    assert drf_server.completed()[name] == md5(b"abc")


def test_completed_session_refuses_everything_but_get(drf_server: DrfServer) -> None:
    """A repeated completion (e.g. its answer was lost) is a 400, not a 200."""
    name = unique("twice.bin")
    url = put_part(drf_server, drf_server.url, b"abc", 0, 3, name).json()["url"]
    assert complete(drf_server, url, md5(b"abc")).status_code == 200
    already = {"detail": 'Upload has already been marked as "complete"'}
    r = complete(drf_server, url, md5(b"abc"))
    assert (r.status_code, r.json()) == (400, already)
    r = put_part(drf_server, url, b"d", 3, 4, name)
    assert (r.status_code, r.json()) == (400, already)
    r = requests.get(url, headers=drf_server.headers(), timeout=30)
    assert r.status_code == 200
    assert r.json()["status"] == COMPLETE
    assert len(drf_server.completed_sessions(name)) == 1


# --------------------------------------------------------------------------- errors


def test_wrong_or_missing_token_is_401(drf_server: DrfServer, tmp_path: Path) -> None:
    invalid = {"detail": "Invalid token."}
    missing = {"detail": "Authentication credentials were not provided."}
    for method in ("get", "put", "post"):
        r = requests.request(
            method, drf_server.url, headers=drf_server.headers("0" * 40), timeout=30
        )
        assert (r.status_code, r.json()) == (401, invalid), method
        assert r.headers["WWW-Authenticate"] == "Token"
    r = requests.get(drf_server.url, timeout=30)
    assert (r.status_code, r.json()) == (401, missing)
    for header in (
        {"Authorization": f"Bearer {drf_server.token}"},
        # synapse-sdk's `access_token=` header: plain DRF TokenAuthentication ignores it.
        {"Synapse-Access-Token": f"Token {drf_server.token}"},
    ):
        r = requests.get(drf_server.url, headers=header, timeout=30)
        assert (r.status_code, r.json()) == (401, missing), header

    path = make_file(tmp_path, 10)
    with pytest.raises(requests.HTTPError) as err:
        upload_file(drf_server.url, path, token="0" * 40, filename=unique("x"))
    assert err.value.response.status_code == 401
    assert "Invalid token." in str(err.value)


def test_unknown_session_is_404(drf_server: DrfServer) -> None:
    not_found = {"detail": "No ChunkedUpload matches the given query."}
    url = drf_server.session_url(uuid.uuid4())
    for r in (
        requests.get(url, headers=drf_server.headers(), timeout=30),
        put_part(drf_server, url, b"abc", 0, 3, unique("404")),
        complete(drf_server, url, md5(b"abc")),
    ):
        assert (r.status_code, r.json()) == (404, not_found), r.request.method

    # Request validation runs before the lookup: a bad part to an unknown session is a 400.
    r = put_part(drf_server, url, b"abc", 0, 3, unique("404"), content_range="bytes 0-1/3")
    assert r.status_code == 400

    # Another user's session looks exactly like a missing one.
    own = put_part(drf_server, drf_server.url, b"abc", 0, 3, unique("mine")).json()["url"]
    r = requests.get(own, headers=drf_server.headers(drf_server.other_token), timeout=30)
    assert (r.status_code, r.json()) == (404, not_found)

    # Not a UUID, or no trailing slash: Django's own HTML 404, not JSON.
    for bad in (f"{drf_server.url}not-a-uuid/", own.rstrip("/")):
        r = requests.get(bad, headers=drf_server.headers(), timeout=30)
        assert r.status_code == 404
        assert r.headers["Content-Type"].startswith("text/html")


def test_delete_and_patch_are_405(drf_server: DrfServer) -> None:
    own = put_part(drf_server, drf_server.url, b"abc", 0, 3, unique("del")).json()["url"]
    for url in (own, drf_server.url):
        for method in ("DELETE", "PATCH"):
            r = requests.request(method, url, headers=drf_server.headers(), timeout=30)
            assert (r.status_code, r.json()) == (
                405,
                {"detail": f'Method "{method}" not allowed.'},
            )
            assert r.headers["Allow"] == "GET, POST, PUT, HEAD, OPTIONS"
    assert requests.get(own, headers=drf_server.headers(), timeout=30).status_code == 200


def test_expired_session_is_410_and_size_limit_is_400() -> None:
    """Own server: sessions expire after 0.5 s, totals above 64 B are refused."""
    with DrfServer.start(expiration_seconds=0.5, max_bytes=64) as server:
        r = put_part(server, server.url, b"x" * 10, 0, 65, "big")
        assert (r.status_code, r.json()) == (
            400,
            {"detail": "Size of file exceeds the limit (64 bytes)"},
        )

        url = put_part(server, server.url, b"abc", 0, 6, "old").json()["url"]
        time.sleep(0.7)
        gone = {"detail": "Upload has expired"}
        r = put_part(server, url, b"def", 3, 6, "old")
        assert (r.status_code, r.json()) == (410, gone)
        r = put_part(server, url, b"d", 0, 6, "old")  # expiry is checked before offsets
        assert (r.status_code, r.json()) == (410, gone)
        r = complete(server, url, md5(b"abc"))
        assert (r.status_code, r.json()) == (410, gone)
        # GET does not check expiry: a resuming client sees status 1 and its offset.
        r = requests.get(url, headers=server.headers(), timeout=30)
        assert r.status_code == 200
        assert (r.json()["status"], r.json()["offset"]) == (UPLOADING, 3)


def test_session_survives_a_server_restart(tmp_path: Path) -> None:
    """Own server: stop_process() refuses connections, start_process() serves the same data."""
    with DrfServer.start() as server:
        data = b"0123456789"
        name = unique("restart.bin")
        url = put_part(server, server.url, data[:4], 0, 10, name).json()["url"]
        server.stop_process()
        with pytest.raises(requests.ConnectionError):
            requests.get(url, headers=server.headers(), timeout=5)
        server.start_process()
        r = requests.get(url, headers=server.headers(), timeout=30)
        assert (r.status_code, r.json()["offset"]) == (200, 4)
        assert put_part(server, url, data[4:], 4, 10, name).status_code == 200
        assert complete(server, url, md5(data)).status_code == 200
        assert server.completed() == {name: md5(data)}
