"""Turning what the watches report into journal rows: events, settle outcomes and scans.

The daemon's loop feeds ``Intake`` (on its own thread only) and asks it for the next
settle deadline; workers' results come back through ``worker_finished``. A change to a
file that a worker owns is remembered and looked at again the moment the worker lets
go of it, so it is never dropped until the next periodic rescan.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from syncd.config import Config
from syncd.journal import AFTER_PENDING, Fingerprint, Journal
from syncd.pipeline import FileProcessor, Outcome, remote_name_for
from syncd.states import ACTIVE, IDLE_PENDING, FileState
from syncd.watch import FileEvent, Growing, Ready, Settler, Vanished, WatchSpec, scan_tree

log = logging.getLogger("syncd")


@dataclass
class Intake:
    journal: Journal
    config: Config
    specs: dict[str, WatchSpec]
    processor: FileProcessor
    running: set[int]
    """ids of the files a worker owns (shared with the daemon's dispatcher)"""
    on_settled: Callable[[float], None] | None = None
    """called with a file's settle time (seconds from first seen to ready)"""
    clock: Callable[[], float] = time.time
    settlers: dict[str, Settler] = field(init=False)
    pending_scans: list[tuple[str, str, bool]] = field(init=False)
    _changed_while_owned: set[int] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        # Settling starts over on reload: the full scan queued here re-tracks every settling file.
        self.settlers = {w.name: Settler(quiet=w.settle.quiet, max_wait=w.settle.max_wait,
                                         close_quiet=w.settle.close_quiet if w.settle.on_close else None)
                         for w in self.config.watches}
        self.pending_scans = [(w.name, "", True) for w in self.config.watches]

    # --- what the loop calls --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        deadlines = [d for s in self.settlers.values() if (d := s.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def rescan_all(self) -> None:
        self.pending_scans = [(w.name, "", True) for w in self.config.watches]

    def step(self, events: list[FileEvent]) -> bool:
        """Queued scans, then events, then whatever settled. True if a scan ran or a file
        settled (either may have made files due)."""
        busy = bool(self.pending_scans)
        while self.pending_scans:
            self.scan(*self.pending_scans.pop(0))
        for event in events:
            try:
                self.apply_event(event)
            except OSError as exc:
                log.warning("%s:%s: %s", event.watch, event.relpath, exc)
        for name, settler in self.settlers.items():
            for outcome in settler.poll():
                busy = True
                self.apply_settled(name, outcome)
        return busy

    def worker_finished(self, file_id: int, result: Outcome) -> None:
        if result.state == FileState.SETTLING and result.watch in self.settlers:
            # changed during its upload; the writer's close, if it came, was dropped while
            # the worker owned the file: with settle.on_close the writers probe decides
            self.settlers[result.watch].closed(result.relpath, self.specs[result.watch].root / result.relpath)
        elif file_id in self._changed_while_owned:
            self._look_again(file_id)
        self._changed_while_owned.discard(file_id)

    # --- events, settling, scans ------------------------------------------------------------

    def apply_event(self, event: FileEvent) -> None:
        if event.watch not in self.settlers:
            return
        if event.kind in ("changed", "closed"):
            self.seen(event.watch, event.relpath, closed=event.kind == "closed")
        elif event.kind == "deleted":
            self.settlers[event.watch].forget(event.relpath)
            self.journal.mark_gone(event.watch, event.relpath, only_from=IDLE_PENDING)
        elif event.kind == "moved" and event.dest_relpath is not None:
            self.settlers[event.watch].forget(event.relpath)
            row = self.journal.rename(event.watch, event.relpath, event.dest_relpath)
            if row is None or row.state in ACTIVE or row.state in (FileState.GONE, FileState.SETTLING,
                                                                   FileState.GROWING):
                self.seen(event.watch, event.dest_relpath)
        elif event.kind == "rescan":
            scan = (event.watch, event.relpath, event.relpath == "")
            if scan not in self.pending_scans and (event.watch, "", True) not in self.pending_scans:
                self.pending_scans.append(scan)

    def seen(self, watch: str, relpath: str, st: os.stat_result | None = None, *, closed: bool = False) -> None:
        """A file exists and may be new or changed: journal it and let it settle (``closed``:
        its writer closed it, which ``settle.on_close`` may take as the end of the writing)."""
        if relpath in self.settlers[watch]:
            # Settling already (journaled when it began): the quiet gap starts over. Spares
            # the journal the second and third event of every new file (created, modified, closed).
            if closed:
                self.settlers[watch].closed(relpath, self.specs[watch].root / relpath)
            else:
                self._touch(watch, relpath)
            return
        row = self.journal.find_file(watch, relpath)
        if row is not None and row.state in ACTIVE:
            self._changed_while_owned.add(row.id)  # looked at again when its worker lets go
            log.debug("%s:%s: changed while a worker owns it; looked at again after", watch, relpath)
            return
        if row is not None and st is not None and row.state in (FileState.DONE, FileState.FAILED,
                                                                FileState.READY, FileState.WAITING) \
                and row.fingerprint == Fingerprint.of(st):
            if row.state == FileState.DONE and row.after_action == AFTER_PENDING:
                self.processor.redo_after_upload(row)  # a crash came between `done` and the after-action
            elif row.state == FileState.DONE and (moved := self._destination_changed(row)):
                log.info("%s:%s: %s since it was uploaded; uploading it again", watch, relpath, moved)
                self.journal.set_state(row.id, FileState.READY)
            return
        if row is None or row.state == FileState.GONE:
            try:
                st = st or os.stat(self.specs[watch].root / relpath)
            except FileNotFoundError:
                return
            self.journal.note_new(watch, relpath, Fingerprint.of(st))
            log.debug("%s:%s: new file, settling", watch, relpath)
        if closed:
            self.settlers[watch].closed(relpath, self.specs[watch].root / relpath)
        else:
            self._touch(watch, relpath)

    def _destination_changed(self, row) -> str | None:
        """What changed about where a done file goes (its watch's target or remote name),
        or None. Rows from journals older than this record (no target) are left alone."""
        if row.target is None:
            return None
        watch = self.config.watch(row.watch)
        if watch.target != row.target:
            return f"the watch's target changed from {row.target} to {watch.target}"
        name = remote_name_for(watch, row)
        if row.dest is not None and name != row.dest:
            return f"its remote name changed from {row.dest} to {name}"
        return None

    def _touch(self, watch: str, relpath: str) -> None:
        self.settlers[watch].touch(relpath, self.specs[watch].root / relpath)

    def _look_again(self, file_id: int) -> None:
        """A file that changed, or was renamed, while its worker owned it."""
        row = self.journal.get_file(file_id)
        if row is None or row.watch not in self.specs or row.state in ACTIVE:
            return
        try:
            st = os.stat(self.specs[row.watch].root / row.relpath)
        except OSError:
            return
        if row.state == FileState.GONE or Fingerprint.of(st) != row.fingerprint:
            self.seen(row.watch, row.relpath, st)

    def apply_settled(self, watch: str, outcome) -> None:
        if isinstance(outcome, Ready):
            row = self.journal.mark_settled(watch, outcome.key, Fingerprint.of(outcome.stat))
            if row is not None:
                log.debug("%s:%s: settled; ready to upload", watch, outcome.key)
                if self.on_settled is not None:
                    self.on_settled(max(0.0, self.clock() - row.first_seen_at))
        elif isinstance(outcome, Growing):
            row = self.journal.find_file(watch, outcome.key)
            if row is not None and self.journal.set_state(row.id, FileState.GROWING, only_from=(FileState.SETTLING,)):
                log.warning("%s:%s: still changing after %s; not uploading it while it grows", watch,
                            outcome.key, self.config.watch(watch).settle.max_wait)
        elif isinstance(outcome, Vanished):
            self.journal.mark_gone(watch, outcome.key, only_from=IDLE_PENDING)

    def scan(self, watch_name: str, relpath: str, full: bool) -> None:
        """Reconcile a watch (or one of its folders) with the journal: files found are
        settled; pending rows whose files were not found become ``gone`` -- except below
        a folder that could not be read, where nothing is concluded."""
        spec = self.specs.get(watch_name)
        if spec is None:
            return
        start = spec.root / relpath if relpath else None
        seen: set[str] = set()
        unreadable: list[str] = []

        def on_error(dir_rel: str, exc: OSError) -> None:
            unreadable.append(dir_rel)

        log.debug("watch %s: scanning %s", watch_name, start or spec.root)
        try:
            for found, st in scan_tree(spec.root, spec.path_filter, recursive=spec.recursive, start=start,
                                       on_error=on_error):
                seen.add(found)
                self.seen(watch_name, found, st)
        except FileNotFoundError:
            if not relpath:
                log.error("watch %s: folder %s is gone; nothing is watched there until it is back",
                          watch_name, spec.root)
                return
            # a folder that vanished: everything pending below it is gone
        except OSError as exc:
            log.warning("watch %s: cannot scan %s: %s", watch_name, start or spec.root, exc.strerror or exc)
            return
        if not (full or relpath):
            return
        prefix = f"{relpath}/" if relpath else ""
        blind = tuple(f"{d}/" for d in unreadable)
        for row in self.journal.files(states=sorted(IDLE_PENDING), watch=watch_name, under=relpath):
            if (row.relpath in seen or row.id in self.running or not row.relpath.startswith(prefix)
                    or (blind and row.relpath.startswith(blind))):
                continue
            self.settlers[watch_name].forget(row.relpath)
            self.journal.set_state(row.id, FileState.GONE, only_from=IDLE_PENDING,
                                   error="file vanished before it was uploaded")
