"""The resumable upload driver. It knows the journal and the ``Backend`` interface, and
nothing of any protocol.

For one local file it opens (or resumes) a session, asks the server how much it holds
(the server's view wins), hashes the prefix it will not resend, streams the remaining
parts from disk while hashing them in the same read, records each part only after the
server acknowledged it, re-stats the file, and completes with the whole-file MD5.
A file that changed on the way is never completed: ``FileChanged`` is raised and the
session abandoned.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from syncd.config import RetryPolicy
from syncd.journal import Fingerprint, Journal, UploadRow
from syncd.upload.base import (
    Backend,
    ChecksumMismatch,
    FileChanged,
    FileVanished,
    Interrupted,
    OffsetMismatch,
    PartReceipt,
    PermanentError,
    RemoteFile,
    Session,
    SessionGone,
    UploadItem,
)
from syncd.upload.body import FileSlice, PrefixMD5
from syncd.upload.retry import call_with_retry

log = logging.getLogger("syncd.upload")
T = TypeVar("T")


@dataclass(frozen=True)
class UploadJob:
    file_id: int
    target: str
    source: Path
    """the bytes to send: the watched file itself, or its transcoded copy in staging"""
    fingerprint: Fingerprint
    """what ``source`` must still be when the upload completes"""
    remote_name: str
    label: str
    """how logs name the file (watch and relative path)"""


class UploadEngine:
    def __init__(self, journal: Journal, backends: Mapping[str, Backend],
                 policies: Mapping[str, RetryPolicy], *, stop: threading.Event,
                 on_retry: Callable[[str, str], None] | None = None,
                 on_part: Callable[[int], None] | None = None,
                 sleep: Callable[[float], object] | None = None):
        self.journal = journal
        self.backends = backends
        self.policies = policies
        self.stop = stop
        self._on_retry = on_retry
        self._on_part = on_part
        self._sleep = sleep

    def upload(self, job: UploadJob, *, on_read: Callable[[int], None] | None = None) -> tuple[RemoteFile, str]:
        """Upload ``job.source``; returns what the server holds and the MD5 it confirmed.

        Raises FileChanged, FileVanished, Interrupted, PermanentError, or the backend's
        retryable error once the request's retry budget is spent.
        """
        backend = self.backends[job.target]
        done = self.journal.completed_upload(job.file_id, target=job.target, source=str(job.source),
                                             fp=job.fingerprint, remote_name=job.remote_name)
        if done is not None:  # finished before a crash or restart cut the file's work short
            return RemoteFile(name=job.remote_name, size=done.size, md5=done.md5), done.md5
        try:
            fd = os.open(job.source, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            fd = os.open(job.source, os.O_RDONLY)
        except FileNotFoundError:
            raise FileVanished(f"{job.label}: file vanished") from None
        try:
            ctime_ns = self._check_unchanged(fd, job)
            item = UploadItem(remote_name=job.remote_name, size=job.fingerprint.size)
            if item.size <= backend.single_request_max:
                return self._upload_whole(backend, job, item, fd, ctime_ns, on_read)
            return self._upload_parts(backend, job, item, fd, ctime_ns, on_read)
        finally:
            os.close(fd)

    # --- helpers -----------------------------------------------------------------------

    def _retry(self, fn: Callable[[], T], backend: Backend, job: UploadJob, what: str) -> T:
        def on_retry(exc: BaseException, _delay: float) -> None:
            if self._on_retry is not None:
                self._on_retry(job.target, backend.retry_reason(exc))

        def attempt() -> T:
            if self.stop.is_set():
                raise Interrupted()
            return fn()

        return call_with_retry(attempt, is_retryable=backend.is_retryable, policy=self.policies[job.target],
                               stop=self.stop, what=f"{job.label}: {what}", on_retry=on_retry,
                               sleep=self._sleep)

    @staticmethod
    def _check_unchanged(fd: int, job: UploadJob, ctime_ns: int | None = None) -> int:
        """Raises FileChanged unless the open file still has the job's size and mtime, and
        (once known) the ctime it had when opened; returns that ctime.

        The ctime catches what size and mtime cannot: a rewrite in place that keeps the
        size and puts the old mtime back (rsync -t --inplace, cp -p), which would otherwise
        complete a mixture of old and new bytes."""
        st = os.fstat(fd)
        if (st.st_size, st.st_mtime_ns) != (job.fingerprint.size, job.fingerprint.mtime_ns) \
                or (ctime_ns is not None and st.st_ctime_ns != ctime_ns):
            raise FileChanged(f"{job.label}: file changed during upload")
        return st.st_ctime_ns

    @staticmethod
    def _check_path_unchanged(job: UploadJob, ctime_ns: int) -> None:
        """The path must still hold the same, unchanged file: checked before each part (a
        deleted or replaced file stops its upload) and last before completing."""
        try:
            st = os.stat(job.source)
        except FileNotFoundError:
            raise FileVanished(f"{job.label}: file vanished during upload") from None
        if Fingerprint.of(st) != job.fingerprint or st.st_ctime_ns != ctime_ns:
            raise FileChanged(f"{job.label}: file changed during upload")

    def _upload_whole(self, backend: Backend, job: UploadJob, item: UploadItem, fd: int, ctime_ns: int,
                      on_read: Callable[[int], None] | None) -> tuple[RemoteFile, str]:
        md5 = PrefixMD5()
        md5.catch_up(fd, item.size, stop=self.stop)
        self._check_unchanged(fd, job, ctime_ns)
        digest = md5.hexdigest()
        # An upload a crash interrupted stays open in the journal: close it (and free its
        # session on the server, if it had one), as a whole-file upload resumes nothing.
        while (stale := self.journal.open_upload(job.file_id, target=job.target)) is not None:
            self._abandon(backend, stale, item)
        row = self.journal.start_upload(job.file_id, target=job.target, source=str(job.source),
                                        remote_name=job.remote_name, fp=job.fingerprint, size=item.size,
                                        part_size=item.size)
        try:
            remote = self._retry(
                lambda: backend.upload_whole(item, FileSlice(fd, 0, item.size, stop=self.stop, on_read=on_read),
                                             digest),
                backend, job, "upload")
            self._check_path_unchanged(job, ctime_ns)
        except BaseException:
            self.journal.finish_upload(row.id, state="abandoned")
            raise
        self.journal.finish_upload(row.id, state="completed", md5=digest)
        if self._on_part is not None:
            self._on_part(item.size)
        return remote, digest

    def _resumable(self, backend: Backend, job: UploadJob, item: UploadItem) -> tuple[UploadRow, Session]:
        """The stored session if it still fits and the server still has it, else a new one."""
        row = self.journal.open_upload(job.file_id, target=job.target)
        if row is not None and (row.fingerprint != job.fingerprint or row.source != str(job.source)
                                or row.remote_name != job.remote_name):
            log.info("%s: file differs from the interrupted upload; starting over", job.label)
            self._abandon(backend, row, item)
            row = None
        if row is not None and row.session is not None:
            log.info("%s: resuming upload session", job.label)
            return row, backend.open_session(item, resume=row.session)
        if row is None:
            row = self.journal.start_upload(job.file_id, target=job.target, source=str(job.source),
                                            remote_name=job.remote_name, fp=job.fingerprint, size=item.size,
                                            part_size=backend.part_size)
        return row, backend.open_session(item, resume=None)

    def _abandon(self, backend: Backend, row: UploadRow, item: UploadItem) -> None:
        if row.session is not None:
            try:
                backend.open_session(item, resume=row.session).abort()
            except Exception as exc:  # best effort: the server expires idle sessions anyway
                log.debug("abort of %s failed: %s", row.session, exc)
        self.journal.finish_upload(row.id, state="abandoned")

    def _upload_parts(self, backend: Backend, job: UploadJob, item: UploadItem, fd: int, ctime_ns: int,
                      on_read: Callable[[int], None] | None) -> tuple[RemoteFile, str]:
        md5 = PrefixMD5()
        fresh_sessions = 0
        while True:
            row, session = self._resumable(backend, job, item)
            try:
                return self._send_and_complete(backend, job, item, fd, ctime_ns, row, session, md5, on_read)
            except SessionGone as exc:
                # The server forgot the session mid-upload: one new session, then give up.
                self.journal.finish_upload(row.id, state="abandoned")
                fresh_sessions += 1
                if fresh_sessions > 1:
                    raise PermanentError(f"upload session lost twice: {exc}") from exc
                log.warning("%s: %s; starting a new session", job.label, exc)
            except (FileChanged, FileVanished, ChecksumMismatch, PermanentError):
                session.abort()
                self.journal.finish_upload(row.id, state="abandoned")
                raise

    def _send_and_complete(self, backend: Backend, job: UploadJob, item: UploadItem, fd: int, ctime_ns: int,
                           row: UploadRow, session: Session, md5: PrefixMD5,
                           on_read: Callable[[int], None] | None) -> tuple[RemoteFile, str]:
        offset = self._retry(session.committed, backend, job, "ask offset") if session.token else 0
        if offset != row.offset:
            self.journal.realign(row.id, offset)
        number = len(self.journal.parts(row.id)) + 1
        part_size = row.part_size
        while offset < item.size:
            self._check_path_unchanged(job, ctime_ns)  # first: a deleted file also has a new ctime
            self._check_unchanged(fd, job, ctime_ns)
            md5.catch_up(fd, offset, stop=self.stop)
            size = min(part_size, item.size - offset)
            start = offset
            def send(number: int = number, start: int = start, size: int = size) -> PartReceipt:
                # a fresh body for every try: a retry rewinds the part, never the file
                body = FileSlice(fd, start, size, md5=md5, stop=self.stop, on_read=on_read)
                return session.send_part(number, start, body, size)

            try:
                receipt = self._retry(send, backend, job, f"part {number}")
            except OffsetMismatch as exc:
                log.info("%s: %s; realigning", job.label, exc)
                if not 0 <= exc.expected <= item.size:
                    raise PermanentError(f"server expects offset {exc.expected} of a {item.size}-byte file") from exc
                self.journal.realign(row.id, exc.expected)
                offset = exc.expected
                number = len(self.journal.parts(row.id)) + 1
                continue
            self.journal.record_part(row.id, number=number, offset=start, size=size, session=session.token)
            if self._on_part is not None:
                self._on_part(size)
            offset = receipt.server_offset
            number += 1
        md5.catch_up(fd, item.size, stop=self.stop)
        self._check_path_unchanged(job, ctime_ns)
        self._check_unchanged(fd, job, ctime_ns)
        digest = md5.hexdigest()
        remote = self._retry(lambda: session.complete(digest), backend, job, "complete")
        self.journal.finish_upload(row.id, state="completed", md5=digest)
        return remote, digest
