"""``syncd upload``: send files once, with a progress bar, through the same journal and
engine as the daemon, so an interrupted run resumes where it stopped when run again.
Small files go several to a request where the server takes that, as the daemon sends them."""

from __future__ import annotations

import os
import posixpath
import signal
import sys
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from syncd import checksums
from syncd.allocator import tune_for_uploads
from syncd.bandwidth import BandwidthLimiter, timetables_of
from syncd.config import Config
from syncd.journal import Fingerprint, Journal, JournalError
from syncd.outcomes import verdict_for
from syncd.states import ACTIVE, FileState
from syncd.upload.base import RemoteFile
from syncd.upload.engine import UploadEngine, UploadJob
from syncd.upload.registry import build_backend

ONESHOT_WATCH = "@upload"  # journal rows of one-shot uploads; no watch can have this name


def cmd_upload(config: Config, *, target: str, files: list[Path], remote_dir: str) -> int:
    if target not in config.targets:
        known = ", ".join(sorted(config.targets))
        print(f"syncd upload: --target: {target!r} is not a target in {config.source} (known: {known})",
              file=sys.stderr)
        return 2
    tune_for_uploads()  # before any thread starts
    try:
        journal = Journal(config.journal)
    except JournalError as exc:
        print(f"syncd upload: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    backends = {target: build_backend(target, config.targets[target])}
    limiter = BandwidthLimiter(**timetables_of(config))
    limits = limiter.limits()
    if 0 in (limits.overall, limits.targets.get(target)):
        print(f"syncd upload: the bandwidth limit is 0 now ({config.source}: bandwidth); waiting until it "
              "allows (Ctrl-C stops, and a later run resumes)", file=sys.stderr)
    engine = UploadEngine(journal, backends, {target: config.targets[target].retry}, stop=stop, limiter=limiter)
    small: list[tuple[Path, int, UploadJob]] = []  # waiting to go together in one request
    failures = 0
    try:
        for path in files:
            if stop.is_set():  # the same line as for a file interrupted mid-upload: it names the file
                if small:  # each says so too
                    _upload_together(journal, engine, small)
                print(f"syncd upload: {path}: interrupted by shutdown (run again to resume)", file=sys.stderr)
                return 1
            if small and path.resolve() in {job.source for _, _, job in small}:
                failures += _upload_together(journal, engine, small)  # a file named twice goes once
                small = []
            prepared = _prepare(journal, target, path, remote_dir)
            if isinstance(prepared, bool):
                failures += not prepared
                continue
            row_id, job = prepared
            limit = engine.batch_limit(target)  # known after the server's first answer
            if not limit.takes(job.fingerprint.size):
                failures += not _upload_alone(journal, engine, path, row_id, job)
                continue
            small.append((path, row_id, job))
            if len(small) >= limit.files:
                failures += _upload_together(journal, engine, small)
                small = []
        if small:
            failures += _upload_together(journal, engine, small)
    except JournalError as exc:
        print(f"syncd upload: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
        for backend in backends.values():
            backend.close()
        journal.close()
    return 1 if failures else 0


def _prepare(journal: Journal, target: str, path: Path, remote_dir: str) -> tuple[int, UploadJob] | bool:
    """The journal row (marked uploading) and job of ``path``; True if this content went
    to this target under this name before, False (said on stderr) if it cannot go."""
    try:
        st = os.stat(path)
    except OSError as exc:
        print(f"syncd upload: {path}: {exc.strerror}", file=sys.stderr)
        return False
    if not path.is_file():
        print(f"syncd upload: {path}: not a regular file", file=sys.stderr)
        return False
    source = path.resolve()
    fp = Fingerprint.of(st)
    remote_name = posixpath.join(remote_dir.strip("/"), source.name) if remote_dir.strip("/") else source.name
    row = journal.find_file(ONESHOT_WATCH, str(source))
    # "already uploaded" means: this content, to this target, under this name
    if row is not None and row.state == FileState.DONE and row.fingerprint == fp and journal.completed_upload(
            row.id, target=target, source=str(source), fp=fp, remote_name=remote_name) is not None:
        print(f"{path}: already uploaded as {row.remote_name} ({checksums.label(row.md5)}) to target {target}")
        return True
    if row is not None and row.state in ACTIVE:
        journal.set_state(row.id, FileState.READY)  # an earlier run was killed mid-upload: resume it
    settled = journal.mark_settled(ONESHOT_WATCH, str(source), fp)
    if settled is None:  # done (elsewhere) or failed before with the same content: go again
        journal.set_state(row.id, FileState.READY)
        settled = journal.get_file(row.id)
    row = settled
    journal.set_state(row.id, FileState.UPLOADING)
    return row.id, UploadJob(file_id=row.id, target=target, source=source, fingerprint=fp,
                             remote_name=remote_name, label=str(path))


def _upload_alone(journal: Journal, engine: UploadEngine, path: Path, row_id: int, job: UploadJob) -> bool:
    try:
        with _progress_bar(job.fingerprint.size, job.source.name) as bar:
            result: tuple[RemoteFile, str] | BaseException = engine.upload(
                job, on_read=bar.update if bar is not None else None)
    except Exception as exc:
        result = exc
    return _conclude(journal, path, row_id, job, result)


def _upload_together(journal: Journal, engine: UploadEngine, small: list[tuple[Path, int, UploadJob]]) -> int:
    """Small files in one request (as many as the server takes; ``upload_batch`` sends the
    rest alone); the number that failed."""
    results = engine.upload_batch([job for _, _, job in small])
    return sum(not _conclude(journal, path, row_id, job, result)
               for (path, row_id, job), result in zip(small, results, strict=True))


def _conclude(journal: Journal, path: Path, row_id: int, job: UploadJob,
              result: tuple[RemoteFile, str] | BaseException) -> bool:
    """Journals and prints how ``path``'s upload ended; True if it is uploaded."""
    if isinstance(result, BaseException):
        if not isinstance(result, Exception):
            raise result
        verdict = verdict_for(result, label=str(path))  # the same map as the daemon's
        # a one-shot row is never settled by a watcher: a changed or vanished file waits for
        # the next run, which looks at it afresh
        state = verdict.state if verdict.state in (FileState.FAILED, FileState.WAITING) else FileState.READY
        journal.set_state(row_id, state, error=None if verdict.state == FileState.READY else verdict.reason,
                          attempts_delta=1 if verdict.counts_attempt else 0)
        again = " (run again to resume)" if verdict.retried else ""
        print(f"syncd upload: {path}: {verdict.reason}{again}", file=sys.stderr)
        return False
    remote, md5 = result
    journal.mark_done(row_id, md5=md5, remote_name=remote.name, target=job.target, dest=job.remote_name,
                      verified=remote.verified)
    print(f"{path}: uploaded as {remote.name} ({checksums.label(md5)}) to target {job.target}, "
          f"verified by {remote.verified}")
    return True


def _progress_bar(total: int, name: str) -> Any:
    """A tqdm bar on a terminal; elsewhere none, and tqdm is not even imported (4 MiB of RSS)."""
    if not sys.stderr.isatty():
        return nullcontext(None)
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: the bar is updated from the upload itself
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, file=sys.stderr)
