"""Walk a watch root and list the regular files its filter accepts.

Used for the startup scan, the periodic rescan, a rescan after lost events, and new
subdirectories (``start``). Symlinks are never followed and never listed: a symlinked
directory could loop or leave the watch root, and a symlinked file's content belongs
to somewhere else; syncd uploads only regular files that live in the tree.

Errors below the starting directory are tolerated: an entry that vanishes between
listing and stat is skipped silently (it is gone, which a later event or rescan
reports); a directory that cannot be read is logged as a warning, passed to
``on_error`` and skipped. The starting directory itself is different: if it is
missing or unreadable, the :class:`OSError` propagates, because an empty result would
read as "every file is gone" (e.g. an unmounted network share).
"""

from __future__ import annotations

import logging
import os
import stat as stat_module
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

from syncd.watch.filters import PathFilter

log = logging.getLogger(__name__)

_VANISHED = (FileNotFoundError, NotADirectoryError)


def scan_tree(
    root: Path,
    path_filter: PathFilter,
    *,
    recursive: bool = True,
    start: Path | None = None,
    on_error: Callable[[str, OSError], None] | None = None,
) -> Iterator[tuple[str, os.stat_result]]:
    """Yield ``(relpath, lstat)`` for each accepted regular file under ``root``.

    ``relpath`` is relative to ``root`` with ``/`` separators. Within a directory,
    files come in name order, before its subdirectories (also in name order).

    ``start`` limits the walk to one subdirectory: relative to ``root``, or absolute
    and inside ``root`` (:class:`ValueError` otherwise). With ``recursive=False`` only
    the files directly in ``root`` belong to the watch, so a ``start`` below ``root``
    yields nothing; so does a ``start`` the filter prunes or that is a symlink.

    ``on_error(relpath_of_directory, error)`` is called for each directory below the
    start that could not be read, so a caller reconciling against what it knew can
    leave that subtree alone instead of declaring its files gone.
    """
    start_rel = _start_relpath(root, start)
    if start_rel and (not recursive or not path_filter.accepts_dir(start_rel)):
        return
    top = root / start_rel if start_rel else root
    if start_rel and stat_module.S_ISLNK(os.lstat(top).st_mode):
        return
    dir_rel = start_rel
    entries: list[os.DirEntry[str]] | None = _sorted_entries(top)  # errors propagate here only
    below: list[str] = []
    while True:
        if entries is not None:
            subdirs = yield from _accepted_files(
                root, dir_rel, entries, path_filter, recursive=recursive, on_error=on_error
            )
            # Reversed, so the stack hands them out in name order.
            below.extend(reversed(subdirs))
        if not below:
            return
        dir_rel = below.pop()
        entries = _list(root, dir_rel, on_error)


def _accepted_files(
    root: Path,
    dir_rel: str,
    entries: list[os.DirEntry[str]],
    path_filter: PathFilter,
    *,
    recursive: bool,
    on_error: Callable[[str, OSError], None] | None,
) -> Generator[tuple[str, os.stat_result], None, list[str]]:
    """Yield the accepted regular files among ``entries``; return the subdirectories to visit."""
    subdirs: list[str] = []
    for entry in entries:
        rel = f"{dir_rel}/{entry.name}" if dir_rel else entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive and path_filter.accepts_dir(rel):
                    subdirs.append(rel)
                continue
            if not entry.is_file(follow_symlinks=False) or not path_filter.accepts(rel):
                continue
            result = entry.stat(follow_symlinks=False)
        except _VANISHED:
            continue
        except OSError as exc:
            _report(root, rel, exc, on_error)
            continue
        if stat_module.S_ISREG(result.st_mode):
            yield rel, result
    return subdirs


def _sorted_entries(path: Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as listing:
        return sorted(listing, key=lambda entry: entry.name)


def _list(
    root: Path, rel: str, on_error: Callable[[str, OSError], None] | None
) -> list[os.DirEntry[str]] | None:
    try:
        return _sorted_entries(root / rel)
    except _VANISHED:
        return None
    except OSError as exc:
        _report(root, rel, exc, on_error)
        return None


def _report(
    root: Path, rel: str, exc: OSError, on_error: Callable[[str, OSError], None] | None
) -> None:
    log.warning("scan: skipping %s: %s", root / rel, exc)
    if on_error is not None:
        on_error(rel, exc)


def _start_relpath(root: Path, start: Path | None) -> str:
    if start is None:
        return ""
    if start.is_absolute():
        try:
            relative = start.relative_to(root)
        except ValueError:
            raise ValueError(f"scan start {str(start)!r} is not inside {str(root)!r}") from None
    else:
        relative = start
    parts = relative.parts
    if ".." in parts:
        raise ValueError(f"scan start {str(start)!r} is not inside {str(root)!r}")
    return "/".join(part for part in parts if part != ".")
