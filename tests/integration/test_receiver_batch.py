"""Batches (``Syncd-Batch: 1``): many small whole files in one ``POST chunked_upload/``, each
answered as its own whole-file POST would be, all durable before the one answer."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata

from syncd.server import EmbeddedReceiver, ServerHooks
from tests.support.receiver import (
    AUTH,
    TIMEOUT,
    FreeSpace,
    get,
    incoming,
    md5_hex,
    post_whole,
    put_part,
    running,
    stored_files,
    upload_in_parts,
)

MiB = 1 << 20
KEYS = [f"batch-key-{n:04d}-abcdefgh" for n in range(80)]


def item(filename: str, data: bytes, *, key: str | None = None, md5: str | None = None) -> dict[str, Any]:
    """One file of a batch: its fields (``md5`` defaults to the data's) and its data."""
    fields = {"filename": filename, "md5": md5_hex(data) if md5 is None else md5}
    if key is not None:
        fields["key"] = key
    return {**fields, "data": data}


def post_batch(
    url: str, files: Sequence[dict[str, Any]], *, headers: dict[str, str] | None = None
) -> requests.Response:
    """The batch as syncd's client sends it: each file's fields, then its ``file`` part."""
    fields: list[tuple[str, Any]] = []
    for file in files:
        fields += [(name, value) for name, value in file.items() if name != "data"]
        if "data" in file:
            fields.append(("file", ("blob", file["data"])))
    body, content_type = encode_multipart_formdata(fields)
    return requests.post(
        url,
        data=body,
        headers={**AUTH, "Syncd-Batch": "1", "Content-Type": content_type, **(headers or {})},
        timeout=TIMEOUT,
    )


def entries(answer: requests.Response) -> list[dict[str, Any]]:
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert list(doc) == ["files"]
    return doc["files"]


def statuses(answer: requests.Response) -> list[int]:
    return [entry["http_status"] for entry in entries(answer)]


def records(root: Path) -> list[dict[str, Any]]:
    """The completed sessions' records the receiver keeps (record files and log lines)."""
    where = root / ".incoming"
    found = [json.loads(p.read_bytes()) for p in where.glob("*.json")]
    found += [json.loads(line) for p in where.glob("completed-*.log") for line in p.read_bytes().splitlines()]
    return found


def nothing_stored(root: Path) -> bool:
    return stored_files(root) == {} and records(root) == [] and not any(n.endswith(".part") for n in incoming(root))


FILES = [
    item("a.txt", b"alpha " * 700, key=KEYS[0]),
    item("sub/dir/b.bin", os.urandom(100_000), key=KEYS[1]),
    item("empty.txt", b"", key=KEYS[2]),
    item("whole-mib.bin", os.urandom(MiB), key=KEYS[3]),  # SMALL_FILE exactly: still in a batch
    item("c.bin", os.urandom(4096)),  # no key
]


def test_a_batch_stores_every_file_byte_for_byte_in_order(
    server: EmbeddedReceiver, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="syncd.server")
    answer = post_batch(server.url, FILES)
    assert answer.headers["Syncd-Batch"] == "64" and answer.headers["Syncd-Raw-Parts"] == "1"
    got = entries(answer)
    assert [e["filename"] for e in got] == [f["filename"] for f in FILES]
    for entry, file in zip(got, FILES):
        assert entry["http_status"] == 200 and entry["status"] == 2
        assert (entry["path"], entry["md5"], entry["size"]) == (file["filename"], file["md5"], len(file["data"]))
        assert entry["url"] == f"{server.url}{entry['id']}/"
        assert entry.get("upload_key") == file.get("key")
        assert get(entry["url"]).json()["path"] == file["filename"]  # a session like any other
    assert stored_files(root) == {f["filename"]: f["data"] for f in FILES}
    assert not any(name.endswith(".part") for name in incoming(root))
    assert sorted(r["id"] for r in records(root)) == sorted(e["id"] for e in got)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stored ")]
    assert sorted(line.split(":")[0] for line in logged) == sorted(f"stored {f['filename']}" for f in FILES)


def test_every_json_answer_advertises_batches(server: EmbeddedReceiver) -> None:
    answers = [
        post_whole(server.url, b"x", filename="x.txt", md5=md5_hex(b"x")),
        post_batch(server.url, [item("y.txt", b"y")]),
        post_batch(server.url, [{"filename": "z.txt", "data": b"z"}]),  # 400
        get(server.url + "11111111-1111-4111-8111-111111111111/"),  # 404
        requests.get(server.url + "x/", timeout=TIMEOUT),  # 401
        requests.get(server.url.replace("chunked_upload/", "healthz"), timeout=TIMEOUT),
    ]
    assert [a.status_code for a in answers] == [200, 200, 400, 404, 401, 200]
    assert all(a.headers.get("Syncd-Batch") == "64" for a in answers)


def test_a_repeated_batch_stores_nothing_new_and_answers_the_same_files(root: Path) -> None:
    keyed = [f for f in FILES if "key" in f]
    with running(root) as server:
        first = entries(post_batch(server.url, keyed))
        again = entries(post_batch(server.url, keyed))
        assert again == first
    with running(root) as restarted:  # the keys are kept with the completed records
        after = entries(post_batch(restarted.url, keyed))
        assert [(e["id"], e["path"], e["status"]) for e in after] == [(e["id"], e["path"], 2) for e in first]
        found = requests.get(restarted.url, headers={**AUTH, "Upload-Key": KEYS[1]}, timeout=TIMEOUT)
        assert found.json()["id"] == first[1]["id"]
    assert stored_files(root) == {f["filename"]: f["data"] for f in keyed}
    assert len(records(root)) == len(keyed)


def test_a_key_sent_with_another_file_is_refused_for_that_file_only(server: EmbeddedReceiver, root: Path) -> None:
    entries(post_batch(server.url, FILES[:2]))
    changed = item("a.txt", b"other content", key=KEYS[0])
    answer = post_batch(server.url, [changed, FILES[1], item("new.txt", b"new")])
    got = entries(answer)
    assert statuses(answer) == [400, 200, 200]
    assert got[0]["detail"].startswith(f"Upload-Key {KEYS[0]!r} names an upload of")
    assert got[0]["filename"] == "a.txt"
    assert stored_files(root) == {"a.txt": FILES[0]["data"], "sub/dir/b.bin": FILES[1]["data"], "new.txt": b"new"}


def test_a_wrong_md5_refuses_that_file_and_stores_the_others(server: EmbeddedReceiver, root: Path) -> None:
    files = [item("ok1.txt", b"one"), item("dir/bad.txt", b"bad", md5="0" * 32), item("ok2.txt", b"two")]
    answer = post_batch(server.url, files)
    assert statuses(answer) == [200, 400, 200]
    assert entries(answer)[1] == {"http_status": 400, "detail": "checksum does not match", "filename": "dir/bad.txt"}
    assert stored_files(root) == {"ok1.txt": b"one", "ok2.txt": b"two"}
    assert not any(name.endswith(".part") for name in incoming(root))


def test_a_file_over_the_max_size_is_413_and_the_others_are_stored(root: Path) -> None:
    with running(root, max_size=10_000) as server:
        answer = post_batch(server.url, [item("big.bin", b"b" * 10_001), item("fits.bin", b"f" * 10_000)])
    assert statuses(answer) == [413, 200]
    assert entries(answer)[0] == {
        "http_status": 413,
        "detail": "Size of file exceeds the limit (10000 bytes)",
        "max_size": 10_000,
        "filename": "big.bin",
    }
    assert stored_files(root) == {"fits.bin": b"f" * 10_000}


def test_a_name_conflict_with_on_conflict_fail_is_409_for_that_file(root: Path) -> None:
    with running(root, on_conflict="fail") as server:
        assert post_whole(server.url, b"old", filename="taken.txt", md5=md5_hex(b"old")).status_code == 200
        files = [item("taken.txt", b"new"), item("free.txt", b"free"), item("free.txt", b"again")]
        answer = post_batch(server.url, files)
    assert statuses(answer) == [409, 200, 409]
    assert entries(answer)[0]["detail"] == "cannot store 'taken.txt': 'taken.txt' already exists"
    assert stored_files(root) == {"taken.txt": b"old", "free.txt": b"free"}


def test_same_names_in_one_batch_are_renamed_and_a_bad_name_is_400(server: EmbeddedReceiver, root: Path) -> None:
    answer = post_batch(server.url, [item("x.txt", b"1"), item("x.txt", b"2"), item("../up.txt", b"3")])
    assert statuses(answer) == [200, 200, 400]
    assert [e.get("path") for e in entries(answer)] == ["x.txt", "x (1).txt", None]
    assert entries(answer)[2]["detail"].startswith("Invalid filename")
    assert stored_files(root) == {"x.txt": b"1", "x (1).txt": b"2"}


def test_a_key_naming_an_open_session_is_400_for_that_file(server: EmbeddedReceiver, root: Path) -> None:
    opened = put_part(server.url, b"p" * 100, start=0, total=300, headers={**AUTH, "Upload-Key": KEYS[5]})
    assert opened.status_code == 200, opened.text
    answer = post_batch(server.url, [item("f.bin", b"p" * 300, key=KEYS[5]), item("g.bin", b"g")])
    assert statuses(answer) == [400, 200]
    assert "still open for parts (100 of 300 bytes)" in entries(answer)[0]["detail"]
    assert get(opened.json()["url"]).json()["offset"] == 100  # the open session is untouched
    assert stored_files(root) == {"g.bin": b"g"}


def body_with_fields(*parts: tuple[str, Any]) -> list[dict[str, Any]]:
    """A batch body built from raw (name, value) parts, for the malformed ones."""
    return [{name: value} if name != "file" else {"data": value} for name, value in parts]


@pytest.mark.parametrize(
    ("files", "detail"),
    [
        pytest.param(
            [item("a", b"a", key=KEYS[0]), item("b", b"b", key=KEYS[0])],
            f"Files 1 and 2 of the batch have the same key {KEYS[0]!r}",
            id="same-key-twice",
        ),
        pytest.param(
            [item(f"f{n}", b"x") for n in range(65)], "A batch carries at most 64 files", id="65-files"
        ),
        pytest.param(
            [item("a", b"a"), *body_with_fields(("filename", "b"), ("file", b"b"))],
            "File 2 of the batch has no md5 field before it",
            id="no-md5",
        ),
        pytest.param(
            body_with_fields(("md5", md5_hex(b"a")), ("file", b"a")),
            "File 1 of the batch has no filename field before it",
            id="no-filename",
        ),
        pytest.param(
            [item("a", b"a"), *body_with_fields(("file", b"b"), ("filename", "b"), ("md5", md5_hex(b"b")))],
            "File 2 of the batch has no filename field before it",
            id="fields-after-the-file",
        ),
        pytest.param(
            [item("a", b"a"), item("big", b"\0" * (2 * MiB))], "a file in a batch is at most 1 MiB", id="2-MiB"
        ),
        pytest.param(
            [item("a", b"a", key="short")],
            "File 1 of the batch: Upload-Key 'short' is not 16..128 characters from A-Z a-z 0-9 _ -",
            id="malformed-key",
        ),
        pytest.param(
            body_with_fields(("filename", "a"), ("md5", md5_hex(b""))), "No chunk file was submitted", id="no-file"
        ),
    ],
)
def test_a_malformed_batch_is_refused_whole(
    server: EmbeddedReceiver, root: Path, files: list[dict[str, Any]], detail: str
) -> None:
    answer = post_batch(server.url, files)
    assert (answer.status_code, answer.json()) == (400, {"detail": detail})
    assert nothing_stored(root)


def test_a_batch_of_more_bytes_than_it_may_hold_is_413_whole(server: EmbeddedReceiver, root: Path) -> None:
    """Its files are in memory until stored: a batch carries at most 16 MiB of them."""
    files = [item(f"f{i}", bytes([i]) * MiB) for i in range(17)]
    answer = post_batch(server.url, files)
    assert (answer.status_code, answer.json()) == (413, {"detail": "A batch carries at most 16 MiB of files"})
    assert nothing_stored(root)
    assert statuses(post_batch(server.url, files[:16])) == [200] * 16  # exactly 16 MiB is fine


def test_a_batch_that_is_not_a_form_is_refused(server: EmbeddedReceiver, root: Path) -> None:
    answer = requests.post(
        server.url, json={"files": []}, headers={**AUTH, "Syncd-Batch": "1"}, timeout=TIMEOUT
    )
    assert (answer.status_code, answer.json()) == (400, {"detail": "Syncd-Batch: 1 needs a multipart/form-data body"})
    assert nothing_stored(root)


def test_a_batch_needs_the_token(server: EmbeddedReceiver, root: Path) -> None:
    answer = post_batch(server.url, [item("a", b"a")], headers={"Authorization": "Token wrong"})
    assert answer.status_code == 401
    assert nothing_stored(root)


def test_a_batch_that_does_not_fit_the_disk_is_507_whole(root: Path) -> None:
    with running(root, min_free=0, hooks=ServerHooks(free_bytes=FreeSpace(10_000))) as server:
        answer = post_batch(server.url, [item("a", b"a" * 6_000), item("b", b"b" * 6_000)])
        assert answer.status_code == 507
        assert entries(post_batch(server.url, [item("a", b"a" * 6_000)]))[0]["http_status"] == 200
    assert stored_files(root) == {"a": b"a" * 6_000}


class FullFor:
    """``pwritev`` that fails with ENOSPC for data that starts with ``marker``."""

    def __init__(self, marker: bytes) -> None:
        self.marker = marker

    def __call__(self, fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        if bytes(buffers[0][: len(self.marker)]) == self.marker:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.pwritev(fd, buffers, pos)


def test_a_disk_full_while_storing_one_file_is_507_for_it_only(root: Path) -> None:
    with running(root, hooks=ServerHooks(pwritev=FullFor(b"FULL"))) as server:
        answer = post_batch(server.url, [item("a", b"a"), item("b", b"FULL b"), item("c", b"c")])
    assert statuses(answer) == [200, 507, 200]
    assert entries(answer)[1]["detail"] == "Insufficient storage: the disk filled up while storing the file"
    assert stored_files(root) == {"a": b"a", "c": b"c"}
    assert not any(name.endswith(".part") for name in incoming(root))


def test_a_folder_that_cannot_be_synced_fails_its_files_only(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver fsyncs each folder once; where that fails, its files are not 200 (they
    stay where they are, and a repeat finds them there)."""
    real_fsync, synced_dirs = os.fsync, []
    bad = os.path.realpath(root) + "/bad"

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(target):
            synced_dirs.append(target)
            if target == bad:
                raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    files = [item("bad/one", b"1", key=KEYS[0]), item("good/two", b"2"), item("bad/three", b"3"), item("good/4", b"4")]
    with running(root) as server:
        monkeypatch.setattr(os, "fsync", fsync)
        answer = post_batch(server.url, files)
        assert statuses(answer) == [500, 200, 500, 200]
        assert "its folder could not be synced to disk" in entries(answer)[0]["detail"]
        top = os.path.realpath(root)
        assert sorted(d for d in synced_dirs if d != top) == [bad, top + "/good"]  # once each
        assert synced_dirs.count(top) == 2  # once for each folder made in it
        monkeypatch.setattr(os, "fsync", real_fsync)
        again = post_batch(server.url, files[:1])
        assert statuses(again) == [200]
        assert entries(again)[0]["path"] == "bad/one"  # the file already there, not "one (1)"
    assert stored_files(root) == {"bad/one": b"1", "good/two": b"2", "bad/three": b"3", "good/4": b"4"}
    assert not any(name.endswith(".part") for name in incoming(root))


def test_batches_with_the_same_keys_at_once_store_each_file_once(server: EmbeddedReceiver, root: Path) -> None:
    """Each batch takes its keys' locks in sorted order, whatever order it sends them in."""
    files = [item(f"k{n}.bin", os.urandom(2000), key=KEYS[n]) for n in range(6)]
    orders = [files, files[::-1], files[3:] + files[:3], files[::2] + files[1::2]]
    answers: list[requests.Response] = []
    threads = [threading.Thread(target=lambda o=o: answers.append(post_batch(server.url, o))) for o in orders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
    assert len(answers) == len(orders)
    ids = {e["filename"]: e["id"] for e in entries(answers[0])}
    for answer in answers:
        assert all(e["http_status"] == 200 and e["id"] == ids[e["filename"]] for e in entries(answer))
    assert stored_files(root) == {f["filename"]: f["data"] for f in files}
    assert len(records(root)) == len(files)


def test_whole_file_posts_and_chunked_uploads_are_unchanged(server: EmbeddedReceiver, root: Path) -> None:
    plain = post_whole(server.url, b"plain", filename="plain.txt", md5=md5_hex(b"plain"))
    keyed = post_whole(
        server.url, b"keyed", filename="keyed.txt", md5=md5_hex(b"keyed"), headers={"Upload-Key": KEYS[9]}
    )
    not_a_batch = post_whole(  # only "1" asks for a batch
        server.url, b"zero", filename="zero.txt", md5=md5_hex(b"zero"), headers={"Syncd-Batch": "0"}
    )
    for answer, name in [(plain, "plain.txt"), (keyed, "keyed.txt"), (not_a_batch, "zero.txt")]:
        assert answer.status_code == 200, answer.text
        assert "files" not in answer.json() and answer.json()["path"] == name
    big = os.urandom(2 * MiB + 5)
    assert upload_in_parts(server.url, big, part=MiB, filename="parts/big.bin")["path"] == "parts/big.bin"
    assert stored_files(root) == {
        "plain.txt": b"plain", "keyed.txt": b"keyed", "zero.txt": b"zero", "parts/big.bin": big
    }


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.sampled_from([0, 1, 7, 4096, 70_000, 300_000]) | st.integers(0, 9000), min_size=1, max_size=12),
    folders=st.integers(1, 3),
)
def test_any_batch_of_small_files_is_stored_as_sent(
    server: EmbeddedReceiver, root: Path, sizes: list[int], folders: int
) -> None:
    prefix = f"ex-{len(list(root.glob('ex-*')))}"
    files = [item(f"{prefix}/d{n % folders}/f{n}.bin", os.urandom(size)) for n, size in enumerate(sizes)]
    answer = post_batch(server.url, files)
    assert statuses(answer) == [200] * len(files)
    assert [e["path"] for e in entries(answer)] == [f["filename"] for f in files]
    stored = {name: data for name, data in stored_files(root).items() if name.startswith(prefix + "/")}
    assert stored == {f["filename"]: f["data"] for f in files}
