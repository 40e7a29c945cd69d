"""`syncd status` as a user who cannot write the journal's folder (another user, or a
read-only mount, as here): a WAL journal's reader needs the `-shm` file, which only a
writable folder lets it make."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from syncd.journal import Fingerprint, Journal, JournalError


@pytest.fixture
def read_only_view(tmp_path):
    """(the journal's folder, the same folder mounted read-only)"""
    folder, view = tmp_path / "state", tmp_path / "view"
    folder.mkdir()
    view.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only bind mount needs root")
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        assert not os.access(view, os.W_OK)
        yield folder, view
    finally:
        subprocess.run(["umount", str(view)], check=True)


def _files(journal: Journal) -> list[str]:
    return sorted(r.relpath for r in journal.due(watches=["w"], order="oldest"))


def test_a_journal_no_daemon_has_open_is_read_from_a_folder_the_reader_cannot_write(read_only_view):
    folder, view = read_only_view
    writer = Journal(folder / "journal.db")
    writer.mark_settled("w", "a.bin", Fingerprint(1, 2, 3, 4))
    writer.close()  # the last connection: every commit is in the file, no -wal or -shm left
    assert sorted(p.name for p in folder.iterdir()) == ["journal.db"]
    reader = Journal(view / "journal.db", readonly=True)
    try:
        assert _files(reader) == ["a.bin"]
    finally:
        reader.close()


def test_a_journal_a_daemon_has_open_is_read_with_its_latest_commits(read_only_view):
    folder, view = read_only_view
    writer = Journal(folder / "journal.db")
    try:
        writer.mark_settled("w", "a.bin", Fingerprint(1, 2, 3, 4))
        reader = Journal(view / "journal.db", readonly=True)
        try:
            assert _files(reader) == ["a.bin"]
            writer.mark_settled("w", "b.bin", Fingerprint(1, 3, 3, 4))  # in the -wal file only
            assert _files(reader) == ["a.bin", "b.bin"]
        finally:
            reader.close()
    finally:
        writer.close()


def test_a_crashed_daemons_wal_without_its_shm_gets_a_clear_error(read_only_view):
    folder, view = read_only_view
    writer = Journal(folder / "journal.db")
    writer.close()
    (folder / "journal.db-wal").write_bytes(b"")  # left by a crash; its -shm lost
    with pytest.raises(JournalError, match=r"journal\.db: cannot open journal: .*run this as the daemon's user"):
        Journal(Path(view / "journal.db"), readonly=True)
