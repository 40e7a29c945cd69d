"""File names: hostile ones are refused, symlinks are never followed, conflicts follow the policy."""

from __future__ import annotations

import os
import socket
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.server import EmbeddedReceiver, ReceiverSettings, ReceiverStartError
from tests.support.receiver import (
    complete,
    incoming,
    md5_hex,
    post_whole,
    put_part,
    running,
    stored_files,
    upload_in_parts,
)

DATA = b"payload-" * 100


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "filename is empty"),
        ("/etc/cron.d/evil", "absolute path"),
        ("../outside.txt", "'..' segment"),
        ("a/../../outside.txt", "'..' segment"),
        ("a\\..\\b", "backslash"),
        ("bad\0name", "NUL"),
        ("bad\nname", "control character"),
        ("\u202egnp.exe", "invisible format character (U+202E RIGHT-TO-LEFT OVERRIDE)"),
        ("in\u200dvoice.pdf", "invisible format character (U+200D ZERO WIDTH JOINER)"),
        ("\u3164", "invisible character (U+3164 HANGUL FILLER)"),
        ("dir/", "ends with /"),
        ("x" * 256, "longer than 255 bytes"),
        (".incoming/11111111-1111-4111-8111-111111111111.part", "reserved"),
    ],
)
def test_hostile_names_are_refused_with_the_reason(tmp_path: Path, name: str, reason: str) -> None:
    root = tmp_path / "root"
    with running(root) as server:
        chunked = put_part(server.url, DATA, start=0, total=len(DATA), filename=name)
        assert chunked.status_code == 400
        assert chunked.json()["detail"].startswith("Invalid filename: ")
        assert reason in chunked.json()["detail"]
        whole = post_whole(server.url, DATA, filename=name, md5=md5_hex(DATA))
        assert whole.status_code == 400 and reason in whole.json()["detail"]
    assert incoming(root) == [] and stored_files(root) == {}


_PIECES = st.sampled_from(
    ["..", ".", "/", "//", "\\", "a", "b.txt", " ", "\t", "\x7f", "~", ".incoming", "é", "\u202e", "\u2067", "\u200b"]
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.lists(_PIECES, min_size=1, max_size=8).map("".join) | st.text(min_size=1, max_size=30))
def test_generated_names_never_escape_the_root(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    top = tmp_path_factory.mktemp("names")
    root = top / "deep" / "root"
    (top / "outside").mkdir()
    (top / "deep" / "sibling").mkdir(parents=True)
    with running(root) as server:
        # surrogates cannot even be sent as UTF-8; their refusal is unit-tested
        encodable = name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        answer = post_whole(server.url, DATA, filename=encodable, md5=md5_hex(DATA))
        assert answer.status_code in (200, 400), answer.text
    outside_root = [p.relative_to(top).as_posix() for p in top.rglob("*") if not p.is_relative_to(root)]
    assert sorted(outside_root) == ["deep", "deep/sibling", "outside"]
    assert not any(p.is_symlink() for p in root.rglob("*"))
    if answer.status_code == 200:
        stored = answer.json()["path"]
        assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in stored)
        assert (root / stored).resolve().is_relative_to(root.resolve())
        assert stored_files(root) == {stored: DATA}
    else:
        assert stored_files(root) == {}


def test_a_symlinked_folder_is_refused_at_creation(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "evil").symlink_to(outside)
    with running(root) as server:
        answer = put_part(server.url, DATA, start=0, total=len(DATA), filename="evil/x.bin")
        assert answer.status_code == 409
        assert answer.json()["detail"] == "cannot store 'evil/x.bin': 'evil' is a symlink or not a folder"
    assert list(outside.iterdir()) == []


def test_a_symlink_planted_during_the_upload_is_refused_at_completion(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    with running(root) as server:
        doc = put_part(server.url, DATA, start=0, total=len(DATA), filename="a/b/x.bin").json()
        (root / "a").mkdir()
        (root / "a" / "b").symlink_to(outside)
        answer = complete(doc["url"], md5_hex(DATA))
        assert answer.status_code == 409
        assert "'a/b' is a symlink" in answer.json()["detail"]
        (root / "a" / "b").unlink()
        assert complete(doc["url"], md5_hex(DATA)).json()["path"] == "a/b/x.bin"  # data kept meanwhile
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize(("policy", "stored_as"), [("rename", "link (1).bin"), ("overwrite", "link.bin")])
def test_a_symlink_at_the_name_is_never_written_through(tmp_path: Path, policy: str, stored_as: str) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (outside / "target").write_bytes(b"precious")
    (root / "link.bin").symlink_to(outside / "target")
    with running(root, on_conflict=policy) as server:
        doc = upload_in_parts(server.url, DATA, part=300, filename="link.bin")
    assert doc["path"] == stored_as
    assert (outside / "target").read_bytes() == b"precious"
    assert (root / stored_as).read_bytes() == DATA and not (root / stored_as).is_symlink()


def test_conflict_rename(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "clip.mp4").write_bytes(b"older")
    with running(root) as server:
        assert upload_in_parts(server.url, DATA, part=500, filename="d/clip.mp4")["path"] == "d/clip (1).mp4"
        other = DATA + b"!"
        assert upload_in_parts(server.url, other, part=500, filename="d/clip.mp4")["path"] == "d/clip (2).mp4"
    assert stored_files(root) == {"d/clip.mp4": b"older", "d/clip (1).mp4": DATA, "d/clip (2).mp4": DATA + b"!"}


def test_conflict_overwrite(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").write_bytes(b"older")
    with running(root, on_conflict="overwrite") as server:
        assert upload_in_parts(server.url, DATA, part=500, filename="f.bin")["path"] == "f.bin"
    assert stored_files(root) == {"f.bin": DATA}


def test_conflict_fail(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f.bin").write_bytes(b"older")
    with running(root, on_conflict="fail") as server:
        doc = put_part(server.url, DATA, start=0, total=len(DATA)).json()
        answer = complete(doc["url"], md5_hex(DATA))
        assert answer.status_code == 409
        assert answer.json() == {"detail": "cannot store 'f.bin': 'f.bin' already exists"}
    assert stored_files(root) == {"f.bin": b"older"}


@pytest.mark.parametrize("policy", ["rename", "overwrite", "fail"])
def test_same_name_same_content_is_an_idempotent_success(tmp_path: Path, policy: str) -> None:
    root = tmp_path / "root"
    with running(root, on_conflict=policy) as server:
        first = upload_in_parts(server.url, DATA, part=500, filename="x/same.bin")
        again = upload_in_parts(server.url, DATA, part=500, filename="x/same.bin")
        whole = post_whole(server.url, DATA, filename="x/same.bin", md5=md5_hex(DATA))
    assert first["path"] == again["path"] == whole.json()["path"] == "x/same.bin"
    assert stored_files(root) == {"x/same.bin": DATA}


def test_nested_names_make_their_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with running(root) as server:
        doc = upload_in_parts(server.url, DATA, part=500, filename="2024/05/cam 1/clip.mp4")
    assert doc["path"] == "2024/05/cam 1/clip.mp4"
    assert stored_files(root) == {"2024/05/cam 1/clip.mp4": DATA}


def test_a_symlinked_incoming_folder_stops_the_start(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / ".incoming").symlink_to(elsewhere)
    receiver = EmbeddedReceiver(ReceiverSettings(root=root, port=0))
    with pytest.raises(ReceiverStartError, match="'.incoming' is a symlink"):
        receiver.start()
    assert list(elsewhere.iterdir()) == []


def test_a_root_that_is_a_file_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("")
    with pytest.raises(ReceiverStartError, match="cannot start the receiver"):
        EmbeddedReceiver(ReceiverSettings(root=tmp_path / "root", port=0)).start()


def test_a_port_in_use_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        receiver = EmbeddedReceiver(ReceiverSettings(root=tmp_path / "root", port=port))
        with pytest.raises(ReceiverStartError, match=f"127.0.0.1:{port}.*in use"):
            receiver.start()
    assert receiver.port is None
    os.listdir(tmp_path / "root")  # the root was prepared before binding; nothing else ran
