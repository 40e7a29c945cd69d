from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncd.server.records import COMPLETE, EXPIRED, UPLOADING, SessionRecord, canonical_id
from syncd.server.safefs import UnsafePath
from syncd.server.store import IncomingStore

ID1 = "11111111-1111-4111-8111-111111111111"
ID2 = "22222222-2222-4222-8222-222222222222"


def record(session_id: str = ID1, **changes: object) -> SessionRecord:
    base = SessionRecord(
        id=session_id,
        filename="a/b.bin",
        total=100,
        offset=10,
        state=UPLOADING,
        created_at=1000.0,
        updated_at=1001.0,
    )
    return replace(base, **changes)


@pytest.fixture
def root_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture
def store(root_fd: int) -> Iterator[IncomingStore]:
    s = IncomingStore(root_fd)
    yield s
    s.close()


def test_incoming_is_private(tmp_path: Path, store: IncomingStore) -> None:
    assert stat.S_IMODE((tmp_path / ".incoming").stat().st_mode) == 0o700


def test_a_symlinked_incoming_folder_is_refused(tmp_path: Path, root_fd: int) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".incoming").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="symlink"):
        IncomingStore(root_fd)


def test_records_survive_a_reload(tmp_path: Path, store: IncomingStore) -> None:
    store.create_part(ID1)
    os.truncate(tmp_path / ".incoming" / f"{ID1}.part", 10)
    store.save(record())
    assert store.load() == [record()]
    assert not list((tmp_path / ".incoming").glob("*.tmp"))


def test_upload_keys_survive_a_reload_and_older_records_have_none(tmp_path: Path, store: IncomingStore) -> None:
    keyed = record(ID2, upload_key="a-client-key_0123456789")
    for r in (record(), keyed):
        store.create_part(r.id)
        os.truncate(tmp_path / ".incoming" / f"{r.id}.part", 10)
    store.save(keyed)
    older = {k: v for k, v in json.loads(record().to_json()).items() if k != "upload_key"}
    (tmp_path / ".incoming" / f"{ID1}.json").write_text(json.dumps(older))
    assert sorted(store.load(), key=lambda r: r.id) == [record(), keyed]


def test_data_shorter_than_the_acknowledged_offset_resumes_from_the_data(
    tmp_path: Path, store: IncomingStore
) -> None:
    store.create_part(ID1)
    os.truncate(tmp_path / ".incoming" / f"{ID1}.part", 4)
    store.save(record(offset=10))
    [loaded] = store.load()
    assert loaded.offset == 4
    assert json.loads((tmp_path / ".incoming" / f"{ID1}.json").read_text())["offset"] == 4


def test_longer_data_is_kept_for_the_next_part_to_cut(tmp_path: Path, store: IncomingStore) -> None:
    store.create_part(ID1)
    os.truncate(tmp_path / ".incoming" / f"{ID1}.part", 50)
    store.save(record(offset=10))
    assert store.load()[0].offset == 10


def test_leftovers_no_client_can_reach_are_removed(tmp_path: Path, store: IncomingStore) -> None:
    incoming = tmp_path / ".incoming"
    store.create_part(ID2)  # data whose record was never written
    (incoming / f"{ID1}.json.tmp").write_text("{")  # a record write cut short
    (incoming / "notes.txt").write_text("not ours")
    assert store.load() == []
    assert sorted(p.name for p in incoming.iterdir()) == ["notes.txt"]


def test_a_complete_session_drops_leftover_data(tmp_path: Path, store: IncomingStore) -> None:
    store.create_part(ID1)
    done = record(state=COMPLETE, offset=100, md5="0" * 32, path="a/b.bin")
    store.save(done)
    assert store.load() == [done]
    assert not (tmp_path / ".incoming" / f"{ID1}.part").exists()


def test_tombstones_load_without_data(store: IncomingStore) -> None:
    store.save(record(state=EXPIRED))
    assert store.load() == [record(state=EXPIRED)]


@pytest.mark.parametrize(
    "content",
    [
        b"{",
        b"[]",
        b'{"id": "x"}',
        json.dumps({**json.loads(record().to_json()), "offset": 500}).encode(),
        json.dumps({**json.loads(record().to_json()), "state": "weird"}).encode(),
        json.dumps({**json.loads(record().to_json()), "extra": 1}).encode(),
        json.dumps({**json.loads(record().to_json()), "id": ID2}).encode(),
        json.dumps({**json.loads(record().to_json()), "upload_key": "../../etc"}).encode(),
        json.dumps({**json.loads(record().to_json()), "upload_key": 12345678901234567}).encode(),
    ],
)
def test_unreadable_records_are_ignored(tmp_path: Path, store: IncomingStore, content: bytes) -> None:
    (tmp_path / ".incoming" / f"{ID1}.json").write_bytes(content)
    assert store.load() == []


def test_remove_forgets_data_and_record(tmp_path: Path, store: IncomingStore) -> None:
    store.create_part(ID1)
    store.save(record(offset=0))
    store.remove(ID1)
    assert list((tmp_path / ".incoming").iterdir()) == []


def done(n: int, **changes: object) -> SessionRecord:
    """A completed whole-file session, the n-th."""
    return record(f"{n:08x}-0000-4000-8000-000000000000", state=COMPLETE, total=3, offset=3,
                  md5="0" * 32, path=f"f{n}", **changes)


def logs(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / ".incoming").iterdir())


def test_completed_records_kept_in_a_log_load_again(tmp_path: Path, root_fd: int) -> None:
    first = IncomingStore(root_fd)
    first.append_completed(done(1))
    first.append_completed(done(2))
    first.close()
    assert logs(tmp_path) == ["completed-1.log"]  # no file per record
    again = IncomingStore(root_fd)
    try:
        assert again.load() == [done(1), done(2)]
        again.append_completed(done(3))  # appends go on in a new log
        assert logs(tmp_path) == ["completed-1.log", "completed-2.log"]
    finally:
        again.close()
    third = IncomingStore(root_fd)
    try:
        assert third.load() == [done(1), done(2), done(3)]
    finally:
        third.close()


def test_a_torn_or_foreign_line_in_a_log_is_skipped(tmp_path: Path, root_fd: int, store: IncomingStore,
                                                     caplog) -> None:
    store.append_completed(done(1))
    store.close()
    with open(tmp_path / ".incoming" / "completed-1.log", "ab") as f:
        f.write(record(ID2).to_json() + b"\n")  # not a completed session
        f.write(done(2).to_json()[:20])  # a power cut in the middle of a line
    reopened = IncomingStore(root_fd)
    try:
        assert reopened.load() == [done(1)]
    finally:
        reopened.close()
    assert "line 2 of .incoming/completed-1.log: not a completed session (uploading)" in caplog.text
    assert "line 3 of .incoming/completed-1.log: not JSON" in caplog.text


def test_a_full_log_goes_once_all_its_sessions_are_forgotten(tmp_path: Path, store: IncomingStore,
                                                            monkeypatch) -> None:
    monkeypatch.setattr("syncd.server.store.LOG_RECORDS", 2)
    for n in range(1, 6):
        store.append_completed(done(n))
    assert logs(tmp_path) == ["completed-1.log", "completed-2.log", "completed-3.log"]
    store.remove(done(1).id)
    assert logs(tmp_path) == ["completed-1.log", "completed-2.log", "completed-3.log"]
    store.remove(done(2).id)
    assert logs(tmp_path) == ["completed-2.log", "completed-3.log"]
    store.remove(done(5).id)  # the log being appended to stays, even with none left
    assert logs(tmp_path) == ["completed-2.log", "completed-3.log"]
    store.append_completed(done(6))  # its second line: full now, however many are forgotten
    store.append_completed(done(7))
    assert logs(tmp_path) == ["completed-2.log", "completed-3.log", "completed-4.log"]
    store.remove(done(6).id)
    assert logs(tmp_path) == ["completed-2.log", "completed-4.log"]


def test_after_a_failed_append_the_next_record_goes_to_a_new_log(tmp_path: Path, root_fd: int,
                                                                  store: IncomingStore, monkeypatch) -> None:
    store.append_completed(done(1))
    real_write = os.write

    def short_write(fd: int, data: bytes) -> int:
        return real_write(fd, data[:10])  # the disk filled up mid-line

    monkeypatch.setattr(os, "write", short_write)
    with pytest.raises(OSError, match="only 10 of"):
        store.append_completed(done(2))
    monkeypatch.setattr(os, "write", real_write)
    store.append_completed(done(3))
    assert logs(tmp_path) == ["completed-1.log", "completed-2.log"]
    store.close()
    again = IncomingStore(root_fd)
    try:
        assert again.load() == [done(1), done(3)]  # the torn line costs only its own record
    finally:
        again.close()


def test_a_log_whose_sessions_were_all_forgotten_before_a_restart_goes_after_it(
        tmp_path: Path, root_fd: int) -> None:
    first = IncomingStore(root_fd)
    first.append_completed(done(1))
    first.remove(done(1).id)  # forgotten, but its line is still in the log being appended to
    first.close()
    again = IncomingStore(root_fd)
    try:
        assert again.load() == [done(1)]  # back until the receiver's sweep forgets it again
        again.remove(done(1).id)
        assert logs(tmp_path) == []
    finally:
        again.close()


def test_parts_are_never_opened_through_a_symlink(tmp_path: Path, store: IncomingStore) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    (tmp_path / ".incoming" / f"{ID1}.part").symlink_to(victim)
    with pytest.raises(OSError):
        store.open_part(ID1, write=True)
    with pytest.raises(FileExistsError):
        store.create_part(ID1)
    assert victim.read_bytes() == b"keep"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ID1, ID1),
        (ID1.upper(), ID1),
        (ID1.replace("-", ""), ID1),
        ("../../etc/passwd", None),
        ("", None),
        (ID1 + "/x", None),
    ],
)
def test_only_canonical_uuids_become_file_names(text: str, expected: str | None) -> None:
    assert canonical_id(text) == expected
