"""What a worker does with one ``ready`` file: check it, upload it, write down the outcome,
and only then apply the watch's after-action.

Every outcome is one journal transition:
``done`` | ``waiting`` (transient, with the next attempt's time) | ``failed`` (permanent,
with the reason) | ``gone`` (vanished) | ``settling`` (changed: the daemon settles it again).
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from syncd import checksums
from syncd.config import Config, Watch, render_remote_dir
from syncd.durable import fsync_dir, fsync_file, make_dirs
from syncd.journal import AFTER_PENDING, Done, FileRow, Fingerprint, Journal
from syncd.outcomes import verdict_for
from syncd.sources import Source, SourcePlanner, needs_transcode
from syncd.states import FileState
from syncd.upload.base import FileChanged
from syncd.upload.engine import UploadEngine, UploadJob
from syncd.upload.retry import waiting_delay

log = logging.getLogger("syncd.pipeline")


@dataclass(frozen=True)
class Outcome:
    file_id: int
    watch: str
    relpath: str
    state: str
    """the journal state the file ended in (``ready`` when interrupted by shutdown)"""
    size: int = 0
    seconds: float = 0.0


def remote_name_for(watch: Watch, row: FileRow, *, name: str | None = None) -> str:
    prefix = render_remote_dir(watch.remote_dir, watch=watch.name, when=row.first_seen_at)
    return posixpath.join(prefix, name or row.relpath) if prefix else (name or row.relpath)


def move_no_clobber(source: Path, dest: Path) -> Path:
    """Move ``source`` to ``dest``, or to ``name (1).ext``, ``name (2).ext``... whichever is
    free; returns where it went. Never replaces a file, even one that appears meanwhile: a
    hard link fails on an existing name. Across filesystems the file is first copied to a
    hidden name in the destination folder, then linked into place.

    The source goes only once the file under its new name is durable: its data (a copy),
    its name in the destination folder, and any folder made on the way."""
    make_dirs(dest.parent)
    staged: Path | None = None
    try:
        try:
            final = _link_free_name(source, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            staged = dest.with_name(f".{dest.name}.syncd-{os.getpid()}.partial")
            shutil.copy2(source, staged)
            fsync_file(staged)
            final = _link_free_name(staged, dest)
        fsync_dir(final.parent)
        source.unlink()
        return final
    finally:
        if staged is not None:
            staged.unlink(missing_ok=True)


def _link_free_name(source: Path, dest: Path) -> Path:
    n = 0
    while True:
        candidate = dest if n == 0 else dest.with_name(f"{dest.stem} ({n}){dest.suffix}")
        try:
            os.link(source, candidate)
            return candidate
        except FileExistsError:
            n += 1


class FileProcessor:
    def __init__(self, journal: Journal, engine: UploadEngine, config: Config, *,
                 stop: threading.Event, planner: SourcePlanner, clock: Callable[[], float] = time.time,
                 on_done: Callable[[Outcome], None] | None = None):
        self.journal = journal
        self.engine = engine
        self.config = config
        self.stop = stop
        self.planner = planner
        self.clock = clock
        self._on_done = on_done

    def process(self, file_id: int) -> Outcome:
        row = self.journal.get_file(file_id)
        if row is None:
            raise LookupError(f"file {file_id} is not in the journal")
        checked = self._check(row)
        if isinstance(checked, Outcome):
            return checked
        watch, label, path = checked
        first_state = "transcoding" if needs_transcode(watch, path) else "uploading"
        # ``uploading`` is committed with the upload's row, journaled before its first request
        if not self.journal.set_state(row.id, first_state, only_from=("ready", "waiting"),
                                      deferred=first_state == "uploading"):
            return Outcome(row.id, row.watch, row.relpath, self.journal.get_file(row.id).state)

        started = time.monotonic()
        dest = remote_name_for(watch, row)
        try:
            sources = self.planner.sources(watch, row, path, dest, label)
            if first_state == "transcoding":
                if Fingerprint.of(os.stat(path)) != row.fingerprint:
                    self._discard_staged(sources)
                    raise FileChanged(f"{label}: changed while it was transcoded")
                self.journal.set_state(row.id, "uploading", only_from=("transcoding",))
            results = []
            sent = 0

            def count(n: int) -> None:
                nonlocal sent
                sent += n

            for source in sources:
                job = UploadJob(file_id=row.id, target=watch.target, source=source.path,
                                fingerprint=source.fingerprint, remote_name=source.remote_name, label=label)
                results.append(self.engine.upload(job, on_read=count))
        except Exception as exc:
            return self._conclude(row, watch, label, exc)
        remote, md5 = results[0]
        self._discard_staged(sources)

        seconds = time.monotonic() - started
        destructive = watch.after_upload != "keep"
        self.journal.mark_done(row.id, md5=md5, remote_name=remote.name, durable=destructive,
                               after_action=AFTER_PENDING if destructive else None, target=watch.target,
                               dest=dest, verified=remote.verified)
        # the size and rate of what was sent (the web version, when transcoded), and of the
        # bytes this run sent (a resumed upload sends only the rest)
        log.info("%s: uploaded as %s (%d bytes, %s, verified by %s, %.1fs, %.1f MiB/s sent)", label,
                 remote.name, sources[0].fingerprint.size, checksums.label(md5), remote.verified, seconds,
                 sent / 1024**2 / max(seconds, 1e-6))
        if destructive:
            self._after_upload(row, watch, path, label)
        outcome = Outcome(row.id, row.watch, row.relpath, "done", row.fingerprint.size, seconds)
        if self._on_done is not None:
            self._on_done(outcome)
        return outcome

    def process_batch(self, file_ids: Sequence[int]) -> list[tuple[int, Outcome | Exception]]:
        """``process`` of several small files of one watch: the target takes those it can in
        one request (``UploadEngine.upload_batch``) and their ``done`` is one commit. A file
        that needs more (a video to transcode) is processed alone. Each file's outcome, or
        the error that stopped it."""
        results: list[tuple[int, Outcome | Exception]] = []
        alone: list[int] = []
        checked: list[tuple[FileRow, Watch, str, Path]] = []
        rows = self.journal.get_files(file_ids)
        for file_id in file_ids:
            row = rows.get(file_id)
            if row is None:
                alone.append(file_id)  # (process says so)
                continue
            check = self._check(row)
            if isinstance(check, Outcome):
                results.append((file_id, check))
                continue
            watch, label, path = check
            if needs_transcode(watch, path) or (checked and checked[0][1].target != watch.target):
                alone.append(file_id)
                continue
            checked.append((row, watch, label, path))
        # committed with the uploads' rows, journaled before the request
        started = self.journal.set_states([row.id for row, *_ in checked], "uploading",
                                          only_from=("ready", "waiting"), deferred=True) if checked else set()
        batch: list[tuple[FileRow, Watch, str, Path, str]] = []
        for row, watch, label, path in checked:
            if row.id in started:
                batch.append((row, watch, label, path, remote_name_for(watch, row)))
            else:  # taken by something else meanwhile (a rescan found it changed)
                results.append((row.id, Outcome(row.id, row.watch, row.relpath, self.journal.get_file(row.id).state)))
        began = time.monotonic()
        try:
            uploads = self.engine.upload_batch([
                UploadJob(file_id=row.id, target=watch.target, source=path, fingerprint=row.fingerprint,
                          remote_name=dest, label=label) for row, watch, label, path, dest in batch]) if batch else []
        except Exception as exc:  # each file concludes it (a journal error stops the daemon there)
            uploads = [exc] * len(batch)
        seconds = time.monotonic() - began
        done = [(entry, upload) for entry, upload in zip(batch, uploads, strict=True)
                if not isinstance(upload, BaseException)]
        if done:  # one commit, durable before any delete or move
            self.journal.mark_all_done([
                Done(row.id, md5, remote.name, AFTER_PENDING if watch.after_upload != "keep" else None,
                     watch.target, dest, remote.verified)
                for (row, watch, _label, _path, dest), (remote, md5) in done],
                durable=any(watch.after_upload != "keep" for (_row, watch, *_), _ in done))
        for (row, watch, label, path, _dest), (remote, md5) in done:
            log.info("%s: uploaded as %s (%d bytes, %s, verified by %s, %.1fs, one of %d in a batch)",
                     label, remote.name, row.fingerprint.size, checksums.label(md5), remote.verified, seconds,
                     len(done))
            if watch.after_upload != "keep":
                self._after_upload(row, watch, path, label)
            outcome = Outcome(row.id, row.watch, row.relpath, "done", row.fingerprint.size, seconds)
            if self._on_done is not None:
                self._on_done(outcome)
            results.append((row.id, outcome))
        for (row, watch, label, _path, _dest), upload in zip(batch, uploads, strict=True):
            if isinstance(upload, BaseException):
                results.append((row.id, self._conclude(row, watch, label, upload)))
        for file_id in alone:
            try:
                results.append((file_id, self.process(file_id)))
            except Exception as exc:  # reported for this file; the others went on
                results.append((file_id, exc))
        return results

    def _check(self, row: FileRow) -> Outcome | tuple[Watch, str, Path]:
        """Before a file's upload: its watch, its label and its path, if it is still the file
        that settled; else what became of it."""
        try:
            watch = self.config.watch(row.watch)
        except KeyError:
            self._to(row, "waiting", error=f"watch {row.watch!r} is no longer configured",
                     next_attempt_at=self.clock() + 3600)
            return Outcome(row.id, row.watch, row.relpath, "waiting")
        label = f"{watch.name}:{row.relpath}"
        path = watch.path / row.relpath
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return self._gone(row, label)
        except OSError as exc:
            return self._failed(row, watch, label, f"cannot read: {exc.strerror}")
        if Fingerprint.of(st) != row.fingerprint:
            return self._resettle(row, label, "changed since it settled")
        return watch, label, path

    def _conclude(self, row: FileRow, watch: Watch, label: str, exc: Exception) -> Outcome:
        """Write down what a failure means for the file (syncd.outcomes decides)."""
        verdict = verdict_for(exc, label=label)  # re-raises JournalError: the daemon stops
        if verdict.state == FileState.READY:
            self._to(row, "ready", error=None)
            log.info("%s: %s", label, str(exc) or "interrupted by shutdown; it resumes at the next start")
            return Outcome(row.id, row.watch, row.relpath, "ready")
        if verdict.state == FileState.GONE:
            return self._gone(row, label)
        if verdict.state == FileState.SETTLING:
            return self._resettle(row, label, verdict.reason)
        if verdict.state == FileState.WAITING:
            return self._waiting(row, watch, label, verdict.reason)
        if verdict.reason.startswith("unexpected error"):
            log.error("%s: unexpected error", label, exc_info=exc)
        return self._failed(row, watch, label, verdict.reason)

    @staticmethod
    def _discard_staged(sources: list[Source]) -> None:
        for source in sources:
            if source.staged:
                source.path.unlink(missing_ok=True)

    # --- outcomes ----------------------------------------------------------------------

    def _to(self, row: FileRow, state: str, **kw) -> None:
        self.journal.set_state(row.id, state, **kw)

    def _gone(self, row: FileRow, label: str) -> Outcome:
        self._to(row, "gone", error="file vanished before it was uploaded")
        log.info("%s: file vanished; nothing to upload", label)
        return Outcome(row.id, row.watch, row.relpath, "gone")

    def _resettle(self, row: FileRow, label: str, why: str) -> Outcome:
        self._to(row, "settling", error=why)
        log.info("%s: %s; settling it again", label, why)
        return Outcome(row.id, row.watch, row.relpath, "settling")

    def _waiting(self, row: FileRow, watch: Watch, label: str, reason: str) -> Outcome:
        policy = self.config.targets[watch.target].retry
        delay = waiting_delay(row.attempts + 1, policy)
        self._to(row, "waiting", error=reason, next_attempt_at=self.clock() + delay, attempts_delta=1)
        log.warning("%s: %s; waiting %.0fs before attempt %d", label, reason, delay, row.attempts + 2)
        return Outcome(row.id, row.watch, row.relpath, "waiting")

    def _failed(self, row: FileRow, watch: Watch, label: str, reason: str) -> Outcome:
        self._to(row, "failed", error=reason, attempts_delta=1)
        log.error("%s: failed: %s", label, reason)
        if watch.failed_dir is not None:
            self._move(row, watch.path / row.relpath, watch.failed_dir / row.relpath, label, "failed_dir")
        return Outcome(row.id, row.watch, row.relpath, "failed")

    # --- after-actions -------------------------------------------------------------------

    def redo_after_upload(self, row: FileRow) -> None:
        """For a ``done`` file whose after-action is still ``AFTER_PENDING`` (a crash cut it
        off, or it failed): delete or move it now, if it is still unchanged."""
        watch = self.config.watch(row.watch)
        if watch.after_upload != "keep":
            self._after_upload(row, watch, watch.path / row.relpath, f"{watch.name}:{row.relpath}")

    def _after_upload(self, row: FileRow, watch: Watch, path: Path, label: str) -> None:
        """Delete or move the local file, only if it is still exactly what the server holds."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return
        if Fingerprint.of(st) != row.fingerprint:
            log.warning("%s: changed after its upload; leaving it in place", label)
            return
        if watch.after_upload == "delete":
            try:
                os.unlink(path)
            except OSError as exc:
                log.error("%s: uploaded, but cannot delete it: %s", label, exc.strerror)
                return
            self.journal.set_after_action(row.id, "deleted")
            log.info("%s: deleted after upload", label)
        elif watch.after_upload == "move" and watch.done_dir is not None:
            self._move(row, path, watch.done_dir / row.relpath, label, "done_dir")

    def _move(self, row: FileRow, source: Path, dest: Path, label: str, key: str) -> None:
        try:
            final = move_no_clobber(source, dest)
        except OSError as exc:
            log.error("%s: cannot move it to %s %s: %s", label, key, dest.parent, exc.strerror or exc)
            return
        self.journal.set_after_action(row.id, f"moved to {final}")
        log.info("%s: moved to %s", label, final)
