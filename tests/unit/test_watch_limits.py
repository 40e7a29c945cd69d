from __future__ import annotations

import os
from pathlib import Path

import pytest

from syncd.watch import inotify_watch_warning
from syncd.watch import limits as limits_module


def make_dirs(root: Path, count: int) -> None:
    """``root`` plus ``count - 1`` directories below it, two levels deep."""
    root.mkdir()
    for i in range(count - 1):
        if i % 2 == 0:
            (root / f"d{i}").mkdir()
        else:
            (root / f"d{i - 1}" / f"e{i}").mkdir()


@pytest.fixture
def proc_file(tmp_path: Path) -> Path:
    return tmp_path / "max_user_watches"


def test_no_warning_when_the_trees_fit(tmp_path: Path, proc_file: Path) -> None:
    make_dirs(tmp_path / "a", 10)
    proc_file.write_text("1000\n")
    assert (
        inotify_watch_warning([tmp_path / "a"], recursive=True, max_user_watches_path=proc_file)
        is None
    )


def test_warning_names_the_count_the_limit_and_the_fix(tmp_path: Path, proc_file: Path) -> None:
    make_dirs(tmp_path / "a", 60)
    make_dirs(tmp_path / "b", 50)
    proc_file.write_text("100\n")
    warning = inotify_watch_warning(
        [tmp_path / "a", tmp_path / "b"], recursive=True, max_user_watches_path=proc_file
    )
    assert warning is not None
    assert "\n" not in warning
    assert "need more than 100 watches" in warning
    assert "max_user_watches is 100" in warning
    assert "sysctl fs.inotify.max_user_watches=524288" in warning
    assert "/etc/sysctl.d/" in warning


def test_exact_count_when_only_the_safety_margin_is_crossed(
    tmp_path: Path, proc_file: Path
) -> None:
    make_dirs(tmp_path / "a", 95)
    proc_file.write_text("100")
    warning = inotify_watch_warning(
        [tmp_path / "a"], recursive=True, max_user_watches_path=proc_file
    )
    assert warning is not None and "need 95 watches" in warning


@pytest.mark.parametrize(
    ("needed", "suggested"), [(1, 524288), (262144, 524288), (262145, 1048576), (400_000, 1048576)]
)
def test_suggestion_is_a_power_of_two_at_least_twice_the_need(needed: int, suggested: int) -> None:
    assert limits_module._suggest(needed) == suggested


def test_counting_stops_once_above_the_limit(
    tmp_path: Path, proc_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dirs(tmp_path / "a", 500)
    proc_file.write_text("20")
    calls = 0
    real_scandir = os.scandir

    def counting_scandir(path: str) -> object:
        nonlocal calls
        calls += 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    assert inotify_watch_warning([tmp_path / "a"], recursive=True, max_user_watches_path=proc_file)
    assert calls <= 20


def test_symlinked_directories_are_not_counted(tmp_path: Path, proc_file: Path) -> None:
    make_dirs(tmp_path / "big", 50)
    root = tmp_path / "a"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "big")
    proc_file.write_text("10")
    assert inotify_watch_warning([root], recursive=True, max_user_watches_path=proc_file) is None


def test_non_recursive_watches_need_one_watch_each(tmp_path: Path, proc_file: Path) -> None:
    make_dirs(tmp_path / "a", 50)
    proc_file.write_text("10")
    assert (
        inotify_watch_warning([tmp_path / "a"], recursive=False, max_user_watches_path=proc_file)
        is None
    )
    many = [tmp_path / "a" / f"d{i}" for i in range(0, 20, 2)]
    assert inotify_watch_warning(many, recursive=False, max_user_watches_path=proc_file) is not None


@pytest.mark.parametrize("content", [None, "", "lots"])
def test_unknown_limit_means_no_warning(
    tmp_path: Path, proc_file: Path, content: str | None
) -> None:
    make_dirs(tmp_path / "a", 50)
    if content is not None:
        proc_file.write_text(content)
    assert (
        inotify_watch_warning([tmp_path / "a"], recursive=True, max_user_watches_path=proc_file)
        is None
    )


def test_reads_the_real_proc_file_by_default(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    if not limits_module.MAX_USER_WATCHES.exists():
        pytest.skip("no /proc/sys/fs/inotify here")
    assert inotify_watch_warning([tmp_path / "a"], recursive=True) is None
