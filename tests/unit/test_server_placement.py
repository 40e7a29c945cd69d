from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.server.placement import PlacementError, Upload, place
from syncd.server.safefs import UnsafePath

SESSION = "0b0e9e45-2f0c-4a47-9c1f-6a0c1d1b2f3e"


class Fixture:
    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.incoming = self.root / ".incoming"
        self.incoming.mkdir(parents=True)
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        self.incoming_fd = os.open(self.incoming, os.O_RDONLY | os.O_DIRECTORY)

    def close(self) -> None:
        os.close(self.root_fd)
        os.close(self.incoming_fd)

    def upload(self, relpath: str, data: bytes) -> Upload:
        (self.incoming / f"{SESSION}.part").write_bytes(data)
        return Upload(
            incoming_fd=self.incoming_fd,
            part_name=f"{SESSION}.part",
            session_id=SESSION,
            relpath=relpath,
            digest=hashlib.md5(data).hexdigest(),
            size=len(data),
        )


@pytest.fixture
def fx(tmp_path: Path) -> Iterator[Fixture]:
    fixture = Fixture(tmp_path)
    yield fixture
    fixture.close()


def test_stores_under_its_name_making_folders(fx: Fixture) -> None:
    placed = place(fx.root_fd, fx.upload("a/b/c.bin", b"data"), on_conflict="rename")
    assert (placed.path, placed.reused) == ("a/b/c.bin", False)
    assert (fx.root / "a/b/c.bin").read_bytes() == b"data"


def test_rename_picks_the_next_free_numbered_name(fx: Fixture) -> None:
    (fx.root / "clip.mp4").write_bytes(b"other")
    (fx.root / "clip (1).mp4").write_bytes(b"another")
    placed = place(fx.root_fd, fx.upload("clip.mp4", b"new"), on_conflict="rename")
    assert placed.path == "clip (2).mp4"
    assert (fx.root / "clip (2).mp4").read_bytes() == b"new"
    assert (fx.root / "clip.mp4").read_bytes() == b"other"


def test_rename_of_a_name_without_extension_and_a_dotfile(fx: Fixture) -> None:
    (fx.root / "README").write_bytes(b"x")
    (fx.root / ".env").write_bytes(b"x")
    assert place(fx.root_fd, fx.upload("README", b"y"), on_conflict="rename").path == "README (1)"
    assert place(fx.root_fd, fx.upload(".env", b"z"), on_conflict="rename").path == ".env (1)"


def test_rename_keeps_a_long_name_within_255_bytes(fx: Fixture) -> None:
    leaf = "é" * 125 + ".mp4"  # 254 bytes
    (fx.root / leaf).write_bytes(b"x")
    placed = place(fx.root_fd, fx.upload(leaf, b"y"), on_conflict="rename")
    assert placed.path.endswith(" (1).mp4")
    assert len(placed.path.encode()) <= 255
    assert (fx.root / placed.path).read_bytes() == b"y"


def test_same_content_under_the_name_is_an_idempotent_success(fx: Fixture) -> None:
    (fx.root / "same.bin").write_bytes(b"payload")
    for policy in ("rename", "overwrite", "fail"):
        placed = place(fx.root_fd, fx.upload("same.bin", b"payload"), on_conflict=policy)
        assert (placed.path, placed.reused) == ("same.bin", True)
    assert sorted(p.name for p in fx.root.iterdir()) == [".incoming", "same.bin"]


def test_same_size_different_content_is_a_conflict(fx: Fixture) -> None:
    (fx.root / "f.bin").write_bytes(b"AAAA")
    with pytest.raises(PlacementError, match="already exists"):
        place(fx.root_fd, fx.upload("f.bin", b"BBBB"), on_conflict="fail")
    assert (fx.root / "f.bin").read_bytes() == b"AAAA"


def test_overwrite_replaces_atomically(fx: Fixture) -> None:
    (fx.root / "f.bin").write_bytes(b"old")
    placed = place(fx.root_fd, fx.upload("f.bin", b"new content"), on_conflict="overwrite")
    assert (placed.path, placed.reused) == ("f.bin", False)
    assert (fx.root / "f.bin").read_bytes() == b"new content"
    assert [p.name for p in fx.root.iterdir() if p.name.startswith(".syncd-")] == []


def test_overwrite_onto_a_folder_is_refused(fx: Fixture) -> None:
    (fx.root / "d" / "inner").mkdir(parents=True)
    with pytest.raises(PlacementError, match="is a folder"):
        place(fx.root_fd, fx.upload("d", b"x"), on_conflict="overwrite")
    assert [p.name for p in fx.root.iterdir() if p.name.startswith(".syncd-")] == []


def test_completing_again_after_a_crash_finds_its_own_link(fx: Fixture) -> None:
    (fx.root / "f.bin").write_bytes(b"different")
    upload = fx.upload("f.bin", b"mine")
    first = place(fx.root_fd, upload, on_conflict="rename")
    # The crash: the session was not recorded complete, the data is still in .incoming.
    again = place(fx.root_fd, upload, on_conflict="rename")
    assert first.path == again.path == "f (1).bin"
    assert sorted(p.name for p in fx.root.iterdir()) == [".incoming", "f (1).bin", "f.bin"]


def test_a_symlinked_folder_is_never_followed(fx: Fixture) -> None:
    (fx.root / "evil").symlink_to(fx.outside)
    with pytest.raises(UnsafePath, match="'evil' is a symlink"):
        place(fx.root_fd, fx.upload("evil/x.bin", b"x"), on_conflict="rename")
    assert list(fx.outside.iterdir()) == []


def test_a_deeper_symlinked_folder_is_never_followed(fx: Fixture) -> None:
    (fx.root / "a" / "b").mkdir(parents=True)
    (fx.root / "a" / "b" / "c").symlink_to(fx.outside)
    with pytest.raises(UnsafePath, match="'a/b/c' is a symlink"):
        place(fx.root_fd, fx.upload("a/b/c/x.bin", b"x"), on_conflict="overwrite")
    assert list(fx.outside.iterdir()) == []


def test_a_file_in_place_of_a_folder_is_refused(fx: Fixture) -> None:
    (fx.root / "a").write_bytes(b"x")
    with pytest.raises(UnsafePath, match="'a' is a symlink or not a folder"):
        place(fx.root_fd, fx.upload("a/b.bin", b"x"), on_conflict="rename")


@pytest.mark.parametrize("policy", ["rename", "overwrite"])
def test_a_symlink_at_the_name_is_not_written_through(fx: Fixture, policy: str) -> None:
    target = fx.outside / "target"
    target.write_bytes(b"secret")
    (fx.root / "link.bin").symlink_to(target)
    placed = place(fx.root_fd, fx.upload("link.bin", b"secret"), on_conflict=policy)
    assert not placed.reused  # same content behind the link does not count
    assert target.read_bytes() == b"secret"
    assert (fx.root / placed.path).is_file() and not (fx.root / placed.path).is_symlink()
    if policy == "rename":
        assert placed.path == "link (1).bin" and (fx.root / "link.bin").is_symlink()
    else:
        assert placed.path == "link.bin"


def test_every_folder_it_makes_is_durable_in_its_parent(fx: Fixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name is durable only when every folder on its way is: each new folder's parent is
    fsynced once it holds it (and the file's own folder once it holds the file)."""
    synced: list[tuple[int, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    (fx.root / "a").mkdir()  # already there: not this upload's to make durable
    place(fx.root_fd, fx.upload("a/b/c/f.bin", b"data"), on_conflict="rename")

    def ident(path: Path) -> tuple[int, int]:
        st = os.stat(path)
        return st.st_dev, st.st_ino

    assert ident(fx.root / "a") in synced  # holds the new b
    assert ident(fx.root / "a" / "b") in synced  # holds the new c
    assert ident(fx.root / "a" / "b" / "c") in synced  # holds the file
    assert ident(fx.root) not in synced  # nothing new in it
    assert (fx.root / "a" / "b" / "c" / "f.bin").read_bytes() == b"data"
