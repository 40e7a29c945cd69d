"""``syncd upload``: send files once, with a progress bar, through the same journal and
engine as the daemon, so an interrupted run resumes where it stopped when run again."""

from __future__ import annotations

import os
import posixpath
import signal
import sys
import threading
from pathlib import Path

from tqdm import tqdm

from syncd.config import Config
from syncd.daemon import build_backends
from syncd.journal import Fingerprint, Journal, JournalError
from syncd.upload.base import FileChanged, FileVanished, Interrupted, PermanentError
from syncd.upload.engine import UploadEngine, UploadJob

ONESHOT_WATCH = "@upload"  # journal rows of one-shot uploads; no watch can have this name


def cmd_upload(config: Config, *, target: str, files: list[Path], remote_dir: str) -> int:
    if target not in config.targets:
        known = ", ".join(sorted(config.targets))
        print(f"syncd upload: --target: {target!r} is not a target in {config.source} (known: {known})",
              file=sys.stderr)
        return 2
    try:
        journal = Journal(config.journal)
    except JournalError as exc:
        print(f"syncd upload: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    backends = {target: build_backends(config)[target]}
    engine = UploadEngine(journal, backends, {target: config.targets[target].retry}, stop=stop)
    failures = 0
    try:
        for path in files:
            if stop.is_set():
                print("syncd upload: interrupted; run the same command again to resume", file=sys.stderr)
                return 1
            if not _upload_one(journal, engine, target, path, remote_dir):
                failures += 1
    finally:
        signal.signal(signal.SIGINT, previous)
        for backend in backends.values():
            backend.close()
        journal.close()
    return 1 if failures else 0


def _upload_one(journal: Journal, engine: UploadEngine, target: str, path: Path, remote_dir: str) -> bool:
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
    row = journal.find_file(ONESHOT_WATCH, str(source))
    if row is not None and row.state == "done" and row.fingerprint == fp:
        print(f"{path}: already uploaded as {row.remote_name} (md5 {row.md5})")
        return True
    if row is not None and row.state in ("uploading", "transcoding"):
        journal.set_state(row.id, "ready")  # an earlier run was killed mid-upload: resume it
    row = journal.mark_settled(ONESHOT_WATCH, str(source), fp)
    if row is None:  # failed before with the same content: this run is the retry
        existing = journal.find_file(ONESHOT_WATCH, str(source))
        journal.retry(file_ids=[existing.id])
        row = journal.get_file(existing.id)
    journal.set_state(row.id, "uploading")
    remote_name = posixpath.join(remote_dir.strip("/"), source.name) if remote_dir.strip("/") else source.name
    job = UploadJob(file_id=row.id, target=target, source=source, fingerprint=fp,
                    remote_name=remote_name, label=str(path))
    try:
        with tqdm(total=fp.size, unit="B", unit_scale=True, unit_divisor=1024, desc=source.name,
                  disable=None, file=sys.stderr) as bar:
            remote, md5 = engine.upload(job, on_read=bar.update)
    except Interrupted:
        journal.set_state(row.id, "ready")
        print(f"syncd upload: {path}: interrupted; run again to resume", file=sys.stderr)
        return False
    except (FileChanged, FileVanished) as exc:
        journal.set_state(row.id, "ready", error=str(exc))
        print(f"syncd upload: {exc}", file=sys.stderr)
        return False
    except PermanentError as exc:
        journal.set_state(row.id, "failed", error=str(exc), attempts_delta=1)
        print(f"syncd upload: {path}: {exc}", file=sys.stderr)
        return False
    except Exception as exc:
        if not engine.backends[target].is_retryable(exc) and not isinstance(exc, OSError):
            raise
        journal.set_state(row.id, "waiting", error=str(exc), attempts_delta=1)
        print(f"syncd upload: {path}: {exc} (run again to resume)", file=sys.stderr)
        return False
    journal.mark_done(row.id, md5=md5, remote_name=remote.name)
    print(f"{path}: uploaded as {remote.name} (md5 {md5})")
    return True
