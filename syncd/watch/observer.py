"""watchdog observers turned into :class:`FileEvent` records, with no I/O on the event path.

watchdog calls every handler on one dispatcher thread, so the handler here only maps
the event to a relative path, filters it with :class:`PathFilter` (pure string logic)
and hands it to ``on_event``, which is expected to enqueue and return.

Event kinds, for a watch with root R:

* ``changed``: a file was created, written, had its metadata changed, or was moved in
  from outside R.
* ``closed``: the writer says it is done with a file: a file opened for writing was
  closed (inotify only), or a file was renamed into place from an ignored name (``x.part``
  to ``x``, rsync's ``.x.Ab12Cd`` to ``x``; the writer closed the temporary name
  first). A hint, not proof: the writer may reopen it.
* ``moved``: renamed with both names accepted: ``relpath`` -> ``dest_relpath``.
* ``deleted``: deleted, moved out of R, or renamed to an ignored name.
* ``rescan``: the subtree at ``relpath`` ("" is the root) may differ from what events
  said; scan it and reconcile. Sent for a directory created or moved in (its files may
  have been written before its watch existed), for a directory deleted or moved out of R
  (inotify then says nothing about its files; scanning it raises FileNotFoundError,
  which means they are all gone), and with ``relpath=""`` after an inotify queue
  overflow and when R itself is deleted (the watch is then dead).

Directory renames inside R need no rescan: watchdog follows them with one ``moved``
per file. Other directory events are dropped.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver, EventQueue, ObservedWatch
from watchdog.observers.inotify import InotifyEmitter
from watchdog.observers.inotify_c import InotifyEvent, InotifyFD
from watchdog.observers.polling import PollingObserverVFS

from syncd.watch.filters import PathFilter

log = logging.getLogger(__name__)

EventKind = Literal["changed", "closed", "moved", "deleted", "rescan"]


@dataclass(frozen=True)
class FileEvent:
    watch: str
    kind: EventKind
    relpath: str
    dest_relpath: str | None = None


@dataclass(frozen=True, kw_only=True)
class WatchSpec:
    name: str
    root: Path
    recursive: bool
    poll: bool
    path_filter: PathFilter
    poll_interval: float = 5.0


class QueueOverflowEvent(FileSystemEvent):
    """The kernel dropped inotify events for this watch (``src_path`` is the watch root)."""

    event_type = "syncd_queue_overflow"
    is_directory = True


_FILE_CHANGED = (FileCreatedEvent, FileModifiedEvent, FileAttribEvent)

# Passed to watchdog as the event filter: the inotify mask is built from it, so opens
# and read-only closes (every upload reads the file) never reach the dispatcher.
_EVENT_TYPES: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
    QueueOverflowEvent,
]


class _Handler(FileSystemEventHandler):
    def __init__(
        self,
        name: str,
        root: str,
        path_filter: PathFilter,
        on_event: Callable[[FileEvent], None],
        *,
        recursive: bool,
    ) -> None:
        super().__init__()
        self._name = name
        self._root = root
        self._prefix = root if root.endswith("/") else root + "/"
        self._filter = path_filter
        self._on_event = on_event
        self._recursive = recursive

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            translated = self._translate(event)
            if translated is not None:
                self._on_event(translated)
        except Exception:
            # An exception would end watchdog's dispatcher thread, and with it every watch.
            log.exception("watch %s: dropping event %r", self._name, event)

    def _relpath(self, path: bytes | str) -> str | None:
        text = os.fsdecode(path)
        if text == self._root:
            return ""
        if text.startswith(self._prefix):
            return text[len(self._prefix) :]
        return None

    def _translate(self, event: FileSystemEvent) -> FileEvent | None:
        if isinstance(event, QueueOverflowEvent):
            return self._event("rescan", "")
        src = self._relpath(event.src_path)
        if event.is_directory:
            return self._translate_dir(event, src)
        if isinstance(event, FileMovedEvent):
            dest = self._relpath(event.dest_path) if event.dest_path else None
            src = src if src is not None and self._accepts(src) else None
            dest = dest if dest is not None and self._accepts(dest) else None
            if src is not None and dest is not None:
                return self._event("moved", src, dest)
            if dest is not None:
                return self._event("closed", dest)
            if src is not None:
                return self._event("deleted", src)
            return None
        if src is None or not self._accepts(src):
            return None
        if isinstance(event, _FILE_CHANGED):
            return self._event("changed", src)
        if isinstance(event, FileClosedEvent):
            return self._event("closed", src)
        if isinstance(event, FileDeletedEvent):
            return self._event("deleted", src)
        return None

    def _translate_dir(self, event: FileSystemEvent, src: str | None) -> FileEvent | None:
        if src == "" and isinstance(event, DirDeletedEvent):
            return self._event("rescan", "")
        if not self._recursive or src is None:
            return None
        if isinstance(event, (DirCreatedEvent, DirDeletedEvent)):
            return self._event("rescan", src) if self._filter.accepts_dir(src) else None
        if isinstance(event, DirMovedEvent):
            dest = self._relpath(event.dest_path) if event.dest_path else None
            # From a pruned name (".incoming" -> "photos"): new to this watch.
            if dest and self._filter.accepts_dir(dest) and not self._filter.accepts_dir(src):
                return self._event("rescan", dest)
        return None

    def _accepts(self, relpath: str) -> bool:
        if not self._recursive and "/" in relpath:
            return False
        return self._filter.accepts(relpath)

    def _event(self, kind: EventKind, relpath: str, dest: str | None = None) -> FileEvent:
        return FileEvent(self._name, kind, relpath, dest)


class _OverflowReportingInotifyFD(InotifyFD):
    """An inotify instance that tells its emitters when the kernel queue overflowed.

    watchdog 7.1 handles IN_Q_OVERFLOW itself (InotifyFD.handle_event calls each watch
    group's on_queue_overflow, which discards half-paired moves and re-adds recursive
    watches) but emits no event for it; this override adds one.
    """

    def __init__(self) -> None:
        super().__init__()
        self._listeners_lock = threading.Lock()
        self._listeners: set[_OverflowReportingEmitter] = set()

    def add_overflow_listener(self, emitter: _OverflowReportingEmitter) -> None:
        with self._listeners_lock:
            self._listeners.add(emitter)

    def remove_overflow_listener(self, emitter: _OverflowReportingEmitter) -> None:
        with self._listeners_lock:
            self._listeners.discard(emitter)

    def handle_event(self, event: InotifyEvent) -> None:
        super().handle_event(event)
        if event.is_queue_overflow:
            with self._listeners_lock:
                listeners = list(self._listeners)
            for emitter in listeners:
                emitter.report_overflow()


class _OverflowReportingEmitter(InotifyEmitter):
    def __init__(
        self,
        event_queue: EventQueue,
        watch: ObservedWatch,
        *,
        timeout: float,
        event_filter: list[type[FileSystemEvent]] | None = None,
        inotify_fd: _OverflowReportingInotifyFD,
    ) -> None:
        super().__init__(
            event_queue, watch, timeout=timeout, event_filter=event_filter, inotify_fd=inotify_fd
        )
        self._overflow_fd = inotify_fd

    def on_thread_start(self) -> None:
        super().on_thread_start()
        self._overflow_fd.add_overflow_listener(self)

    def on_thread_stop(self) -> None:
        self._overflow_fd.remove_overflow_listener(self)
        super().on_thread_stop()

    def report_overflow(self) -> None:
        self.queue_event(QueueOverflowEvent(self.watch.path))


class _InotifyObserver(BaseObserver):
    """watchdog's InotifyObserver, with overflow reporting emitters."""

    def __init__(self, *, timeout: float = DEFAULT_OBSERVER_TIMEOUT) -> None:
        # Started here, as watchdog's InotifyObserver does; stopped in on_thread_stop.
        self.inotify_fd = _OverflowReportingInotifyFD()
        self.inotify_fd.start()
        super().__init__(_OverflowReportingEmitter, timeout=timeout, inotify_fd=self.inotify_fd)

    def on_thread_stop(self) -> None:
        super().on_thread_stop()
        self.inotify_fd.stop()
        self.inotify_fd.join()


class Watcher:
    """Watches every :class:`WatchSpec` and reports :class:`FileEvent` to ``on_event``.

    Non-polling watches share one inotify observer; polling watches get one
    :class:`~watchdog.observers.polling.PollingObserverVFS` per distinct
    ``poll_interval`` (lstat-based, so symlinked directories are not followed).

    ``on_event`` runs on watchdog's dispatcher threads, one per observer, so it may be
    called from several threads at once: it must be thread-safe, must not block, and
    must not call :meth:`stop` (which joins those threads).
    """

    def __init__(self, specs: Sequence[WatchSpec], on_event: Callable[[FileEvent], None]) -> None:
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"duplicate watch names: {', '.join(duplicates)}")
        self._specs = tuple(specs)
        self._on_event = on_event
        self._inotify: _InotifyObserver | None = None
        self._polling: dict[float, BaseObserver] = {}
        self._started = False

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start watching. Raises OSError naming the watch whose root cannot be watched.

        On failure everything started so far is stopped again. Start before the startup
        scan: a file dropped between a scan and the start would be seen by neither (a
        polling watch reports only changes after its first snapshot).
        """
        if self._started:
            raise RuntimeError("Watcher.start() called twice")
        self._started = True
        try:
            for spec in self._specs:
                self._schedule(spec)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every observer and join all their threads. Safe to call more than once."""
        observers: list[BaseObserver] = list(self._polling.values())
        if self._inotify is not None:
            observers.append(self._inotify)
        self._inotify = None
        self._polling = {}
        for observer in observers:
            observer.stop()
        for observer in observers:
            if observer.ident is not None:
                observer.join()

    def _schedule(self, spec: WatchSpec) -> None:
        # Resolved once here: a symlinked root would otherwise be watched as the link itself
        # (watchdog adds watches with IN_DONT_FOLLOW).
        root = str(spec.root.resolve())
        handler = _Handler(
            spec.name, root, spec.path_filter, self._on_event, recursive=spec.recursive
        )
        observer = self._observer_for(spec)
        try:
            observer.schedule(handler, root, recursive=spec.recursive, event_filter=_EVENT_TYPES)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot watch {spec.name!r} at {root}: {exc.strerror or exc}"
            ) from exc

    def _observer_for(self, spec: WatchSpec) -> BaseObserver:
        if not spec.poll:
            if self._inotify is None:
                self._inotify = _InotifyObserver()
                self._inotify.name = "syncd-watch-inotify"
                self._inotify.start()
            return self._inotify
        existing = self._polling.get(spec.poll_interval)
        if existing is not None:
            return existing
        observer = PollingObserverVFS(os.lstat, os.scandir, polling_interval=spec.poll_interval)
        observer.name = f"syncd-watch-poll-{spec.poll_interval:g}s"
        self._polling[spec.poll_interval] = observer
        observer.start()
        return observer
