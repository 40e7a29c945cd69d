from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from syncd.watch import PathFilter, scan_tree


def write(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "drop"
    write(root / "b.mov", b"bb")
    write(root / "a.mov", b"a")
    write(root / "sub" / "c.mov")
    write(root / "sub" / "deeper" / "d.mov")
    write(root / "zed" / "e.mov")
    write(root / "x.part")
    write(root / ".hidden")
    write(root / ".git" / "objects" / "f.mov")
    write(root / "_done" / "old.mov")
    return root


def relpaths(root: Path, path_filter: PathFilter | None = None, **kwargs: object) -> list[str]:
    walk = scan_tree(root, path_filter or PathFilter(), **kwargs)  # type: ignore[arg-type]
    return [rel for rel, _ in walk]


def test_walks_in_name_order_files_before_subdirectories(tree: Path) -> None:
    assert relpaths(tree) == [
        "a.mov",
        "b.mov",
        "_done/old.mov",
        "sub/c.mov",
        "sub/deeper/d.mov",
        "zed/e.mov",
    ]


def test_yields_the_lstat_of_each_file(tree: Path) -> None:
    found = dict(scan_tree(tree, PathFilter()))
    assert found["b.mov"].st_size == 2
    assert found["b.mov"].st_ino == os.lstat(tree / "b.mov").st_ino
    assert found["sub/deeper/d.mov"].st_mtime_ns == os.lstat(tree / "sub/deeper/d.mov").st_mtime_ns


def test_applies_the_filter_and_prunes_directories(tree: Path) -> None:
    path_filter = PathFilter(("*.mov",), ("sub/deeper/**",), ignore_dirs=(Path("_done"),))
    assert relpaths(tree, path_filter) == ["a.mov", "b.mov", "sub/c.mov", "zed/e.mov"]


def test_pruned_directories_are_not_even_listed(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path: Path) -> object:
        listed.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    relpaths(tree, PathFilter(ignore_dirs=(Path("_done"),)))
    assert not any(".git" in p or "_done" in p for p in listed)


def test_not_recursive_lists_the_root_only(tree: Path) -> None:
    assert relpaths(tree, recursive=False) == ["a.mov", "b.mov"]
    assert relpaths(tree, recursive=False, start=Path("sub")) == []


def test_start_scans_one_subdirectory(tree: Path) -> None:
    assert relpaths(tree, start=Path("sub")) == ["sub/c.mov", "sub/deeper/d.mov"]
    assert relpaths(tree, start=tree / "sub" / "deeper") == ["sub/deeper/d.mov"]
    assert relpaths(tree, start=Path(".git")) == []
    assert (
        relpaths(tree, start=Path("_done"), path_filter=PathFilter(ignore_dirs=(Path("_done"),)))
        == []
    )


def test_start_outside_the_root_is_refused(tree: Path) -> None:
    with pytest.raises(ValueError, match="not inside"):
        relpaths(tree, start=tree.parent)
    with pytest.raises(ValueError, match="not inside"):
        relpaths(tree, start=Path("../elsewhere"))


def test_symlinks_are_neither_followed_nor_listed(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "secret.mov")
    (tree / "linked-dir").symlink_to(outside)
    (tree / "linked-file.mov").symlink_to(outside / "secret.mov")
    (tree / "loop").symlink_to(tree)
    found = relpaths(tree)
    assert not any(rel.startswith(("linked", "loop")) for rel in found)
    assert relpaths(tree, start=Path("linked-dir")) == []


def test_only_regular_files(tree: Path) -> None:
    os.mkfifo(tree / "pipe.mov")
    assert "pipe.mov" not in relpaths(tree)


def test_files_and_directories_vanishing_mid_walk(tree: Path) -> None:
    walk = scan_tree(tree, PathFilter())
    assert next(walk)[0] == "a.mov"
    (tree / "b.mov").unlink()
    (tree / "sub" / "c.mov").unlink()
    (tree / "sub" / "deeper" / "d.mov").unlink()
    (tree / "sub" / "deeper").rmdir()
    (tree / "sub").rmdir()
    assert [rel for rel, _ in walk] == ["_done/old.mov", "zed/e.mov"]


def test_an_unreadable_directory_is_reported_and_skipped(
    tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Tests may run as root, for whom chmod 000 changes nothing: fail the listing instead.
    real_scandir = os.scandir
    denied = tree / "sub"

    def scandir(path: Path) -> object:
        if Path(path) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    errors: list[tuple[str, OSError]] = []
    with caplog.at_level(logging.WARNING, logger="syncd.watch.scan"):
        found = [
            rel
            for rel, _ in scan_tree(tree, PathFilter(), on_error=lambda r, e: errors.append((r, e)))
        ]
    assert found == ["a.mov", "b.mov", "_done/old.mov", "zed/e.mov"]
    assert [(rel, type(exc)) for rel, exc in errors] == [("sub", PermissionError)]
    assert str(denied) in caplog.text


def test_a_file_that_cannot_be_stat_ed_is_reported_and_skipped(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scandir = os.scandir

    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self._entry = entry
            self.name = entry.name

        def is_dir(self, *, follow_symlinks: bool) -> bool:
            return self._entry.is_dir(follow_symlinks=follow_symlinks)

        def is_file(self, *, follow_symlinks: bool) -> bool:
            return self._entry.is_file(follow_symlinks=follow_symlinks)

        def stat(self, *, follow_symlinks: bool) -> os.stat_result:
            if self.name == "b.mov":
                raise OSError(errno.EIO, "Input/output error")
            return self._entry.stat(follow_symlinks=follow_symlinks)

    class Listing:
        def __init__(self, path: Path) -> None:
            self._listing = real_scandir(path)

        def __enter__(self) -> list[Entry]:
            with self._listing as entries:
                return [Entry(e) for e in entries]

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(os, "scandir", Listing)
    errors: list[str] = []
    found = [
        rel for rel, _ in scan_tree(tree, PathFilter(), on_error=lambda r, e: errors.append(r))
    ]
    assert "b.mov" not in found and "a.mov" in found
    assert errors == ["b.mov"]


def test_a_missing_start_directory_raises(tmp_path: Path) -> None:
    """An empty result would mean "every file is gone"; a missing root must not look like that."""
    with pytest.raises(FileNotFoundError):
        relpaths(tmp_path / "unmounted")
    (tmp_path / "root").mkdir()
    with pytest.raises(FileNotFoundError):
        relpaths(tmp_path / "root", start=Path("gone"))


def test_odd_names_survive(tmp_path: Path) -> None:
    root = tmp_path / "drop"
    write(root / "with space" / "ünïcode file.mov")
    write(root / "semi;colon[1].mov")
    assert relpaths(root) == ["semi;colon[1].mov", "with space/ünïcode file.mov"]
