import errno
import os

import pytest

from syncd import pipeline
from syncd.pipeline import move_no_clobber


def test_moves_keeping_the_name(tmp_path):
    source = tmp_path / "in" / "a.bin"
    source.parent.mkdir()
    source.write_bytes(b"one")
    final = move_no_clobber(source, tmp_path / "done" / "x" / "a.bin")
    assert final == tmp_path / "done" / "x" / "a.bin"
    assert final.read_bytes() == b"one" and not source.exists()


def test_never_overwrites(tmp_path):
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "a.bin").write_bytes(b"first")
    (tmp_path / "done" / "a (1).bin").write_bytes(b"second")
    source = tmp_path / "a.bin"
    source.write_bytes(b"third")
    final = move_no_clobber(source, tmp_path / "done" / "a.bin")
    assert final.name == "a (2).bin" and final.read_bytes() == b"third"
    assert (tmp_path / "done" / "a.bin").read_bytes() == b"first"
    assert (tmp_path / "done" / "a (1).bin").read_bytes() == b"second"


def other_filesystem(monkeypatch, source) -> None:
    """``source`` cannot be linked anywhere, as from another file system (EXDEV)."""
    real_link = os.link

    def link(src, dst, *a, **kw):
        if os.fspath(src) == os.fspath(source):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *a, **kw)

    monkeypatch.setattr(pipeline.os, "link", link)


def test_across_filesystems_copies_then_links(tmp_path, monkeypatch):
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "a.bin").write_bytes(b"taken")
    other_filesystem(monkeypatch, source)
    final = move_no_clobber(source, tmp_path / "done" / "a.bin")
    assert final.name == "a (1).bin" and final.read_bytes() == b"data"
    assert not source.exists()
    assert sorted(p.name for p in (tmp_path / "done").iterdir()) == ["a (1).bin", "a.bin"]


def test_other_errors_leave_the_source(tmp_path, monkeypatch):
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")

    def link(*_a, **_kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(pipeline.os, "link", link)
    with pytest.raises(PermissionError):
        move_no_clobber(source, tmp_path / "done" / "a.bin")
    assert source.read_bytes() == b"data"


@pytest.fixture
def durability(monkeypatch):
    """What ``move_no_clobber`` made durable, and when the source went, in order."""
    steps: list[tuple[str, str]] = []
    real_unlink = pipeline.Path.unlink

    monkeypatch.setattr(pipeline, "fsync_file", lambda path: steps.append(("fsync file", path.name)))
    monkeypatch.setattr(pipeline, "fsync_dir", lambda path: steps.append(("fsync dir", path.name)))
    monkeypatch.setattr("syncd.durable.fsync_dir", lambda path: steps.append(("fsync dir", path.name)))

    def unlink(self, *args, **kwargs):
        steps.append(("unlink", self.name))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(pipeline.Path, "unlink", unlink)
    return steps


def test_new_folders_and_the_new_name_are_durable_before_the_source_goes(tmp_path, durability):
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")
    (tmp_path / "done").mkdir()
    move_no_clobber(source, tmp_path / "done" / "x" / "y" / "a.bin")
    # each new folder's name in its parent, then the file's name in its folder, then the source
    assert durability == [("fsync dir", "done"), ("fsync dir", "x"), ("fsync dir", "y"), ("unlink", "a.bin")]


def test_a_copy_across_filesystems_is_durable_before_the_source_goes(tmp_path, monkeypatch, durability):
    source = tmp_path / "a.bin"
    source.write_bytes(b"data")
    (tmp_path / "done").mkdir()
    other_filesystem(monkeypatch, source)
    final = move_no_clobber(source, tmp_path / "done" / "a.bin")
    assert final.read_bytes() == b"data"
    staged = f".a.bin.syncd-{os.getpid()}.partial"
    assert durability == [("fsync file", staged), ("fsync dir", "done"), ("unlink", "a.bin"), ("unlink", staged)]
