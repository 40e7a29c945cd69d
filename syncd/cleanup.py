"""``syncd cleanup --target NAME [--older-than 1d] [--abort]``: incomplete multipart uploads
under an S3 target's prefix that no open upload in the journal owns (left by a crash at the
wrong moment, or by a journal that was deleted), listed, and with ``--abort`` aborted.

An upload the journal owns is never touched: the daemon resumes it. ``--older-than`` (1h
unless given) also spares uploads so new that a running daemon may not have journaled them
yet (their UploadId is journaled right after CreateMultipartUpload answers).
"""

from __future__ import annotations

import sqlite3
import sys
import time

from syncd.config import Config
from syncd.units import format_duration

DEFAULT_OLDER_THAN = 3600.0


def owned_sessions(config: Config, target: str) -> set[str]:
    """The session handles (UploadIds) of the journal's open uploads to ``target``."""
    if not config.journal.exists():
        return set()
    db = sqlite3.connect(f"file:{config.journal}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT session FROM uploads WHERE state = 'open' AND target = ? AND session IS NOT NULL",
                          (target,)).fetchall()
    finally:
        db.close()
    return {r[0] for r in rows}


def cmd_cleanup(config: Config, *, target: str, older_than: float | None, abort: bool) -> int:
    from syncd.upload.base import UploadError
    from syncd.upload.registry import build_backend

    settings = config.targets.get(target)
    if settings is None:
        known = ", ".join(sorted(config.targets)) or "none"
        print(f"syncd cleanup: --target {target!r} is not a target (known: {known})", file=sys.stderr)
        return 2
    older_than = DEFAULT_OLDER_THAN if older_than is None else older_than
    try:
        owned = owned_sessions(config, target)
    except sqlite3.Error as exc:
        print(f"syncd cleanup: cannot read the journal {config.journal}: {exc}", file=sys.stderr)
        return 1
    backend = build_backend(target, settings)
    try:
        if not hasattr(backend, "incomplete_uploads"):
            print(f"syncd cleanup: target {target!r} ({settings.protocol}) keeps no incomplete uploads to clean "
                  "(only s3 targets do)", file=sys.stderr)
            return 2
        now = time.time()
        found = kept = failed = 0
        for upload in backend.incomplete_uploads():
            age = None if upload.initiated is None else now - upload.initiated
            if upload.upload_id in owned:
                kept += 1
                continue
            if age is not None and age < older_than:
                kept += 1
                continue
            found += 1
            line = f"{upload.key} (upload {upload.upload_id}, " + \
                (f"started {format_duration(age)} ago)" if age is not None else "age unknown)")
            if not abort:
                print(f"would abort {line}")
                continue
            try:
                backend.abort_upload(upload.key, upload.upload_id)
                print(f"aborted {line}")
            except UploadError as exc:
                failed += 1
                print(f"cannot abort {line}: {exc}", file=sys.stderr)
    except UploadError as exc:
        print(f"syncd cleanup: {target}: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    verb = "aborted" if abort else "to abort (run again with --abort)"
    print(f"{found - failed} incomplete upload(s) {verb}; {kept} kept (owned by the journal or younger than "
          f"{format_duration(older_than)})")
    return 1 if failed else 0
