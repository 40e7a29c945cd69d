"""Noticing files in watched folders and deciding when they are completely written.

Knows nothing about the journal, uploads or the config file: the daemon passes plain
values in and gets plain records out.
"""

from syncd.watch.filters import DEFAULT_IGNORES, PathFilter, ignore_dirs_within
from syncd.watch.limits import inotify_watch_warning
from syncd.watch.observer import EventKind, FileEvent, Watcher, WatchSpec
from syncd.watch.scan import scan_tree
from syncd.watch.settle import Growing, Outcome, Ready, Settler, Vanished

__all__ = [
    "DEFAULT_IGNORES",
    "EventKind",
    "FileEvent",
    "Growing",
    "Outcome",
    "PathFilter",
    "Ready",
    "Settler",
    "Vanished",
    "WatchSpec",
    "Watcher",
    "ignore_dirs_within",
    "inotify_watch_warning",
    "scan_tree",
]
