"""Warn when inotify cannot watch every directory of the configured trees.

A recursive inotify watch needs one kernel watch per directory, and watchdog skips
the subdirectories it cannot watch silently (it only raises for the root), so events
there would be lost without a word. This check runs once at startup.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

MAX_USER_WATCHES = Path("/proc/sys/fs/inotify/max_user_watches")
SYSCTL_FILE = "/etc/sysctl.d/60-syncd-inotify.conf"

# The limit is per user and shared with every other inotify user (editors, file
# managers, other daemons), so warn before the trees alone reach it.
_SHARE = 0.9
_MIN_SUGGESTION = 524288


def inotify_watch_warning(
    roots: Sequence[Path],
    *,
    recursive: bool,
    max_user_watches_path: Path = MAX_USER_WATCHES,
) -> str | None:
    """A one-line warning when the trees need more than 90 % of the user's inotify watches.

    ``roots`` are the inotify (non-polling) watch roots. Directories are counted without
    following symlinks, and counting stops as soon as the limit is passed, so a huge
    tree costs no more than the limit's worth of directory listings. Returns None
    when the trees fit, or when the limit cannot be read (not Linux, /proc not mounted).
    """
    limit = _read_limit(max_user_watches_path)
    if limit is None:
        return None
    if recursive:
        needed, complete = _count_dirs(roots, stop_above=limit)
    else:
        needed, complete = len(roots), True
    if needed <= limit * _SHARE:
        return None
    amount = f"{needed}" if complete else f"more than {limit}"
    return (
        f"inotify: the watched trees need {amount} watches (one per directory) but "
        f"fs.inotify.max_user_watches is {limit}, shared with every other program of this "
        f"user; new files in unwatched directories would be missed until a rescan. Raise it: "
        f"sysctl fs.inotify.max_user_watches={_suggest(needed)}, and add the line "
        f"'fs.inotify.max_user_watches={_suggest(needed)}' to {SYSCTL_FILE} to keep it after a "
        f"reboot (or set poll: true on the largest watch)"
    )


def _read_limit(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        log.debug("cannot read the inotify watch limit from %s: %s", path, exc)
        return None


def _count_dirs(roots: Sequence[Path], *, stop_above: int) -> tuple[int, bool]:
    """How many directories the trees hold (roots included); stops once above ``stop_above``.

    Returns ``(count, complete)``; ``complete`` is False when counting stopped early.
    """
    count = 0
    pending = [os.fspath(root) for root in roots]
    while pending:
        directory = pending.pop()
        count += 1
        if count > stop_above:
            return count, False
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue  # vanished or unreadable: inotify cannot watch below it either
    return count, True


def _suggest(needed: int) -> int:
    suggestion = _MIN_SUGGESTION
    while suggestion < 2 * needed:
        suggestion *= 2
    return suggestion
