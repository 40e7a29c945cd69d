"""The resumable upload driver. It knows the journal and the ``Backend`` interface, and
nothing of any protocol.

For one local file it asks the backend what it can do (``Capabilities``), fits a plan of
numbered parts to the file, opens a session (journaling its upload key before any request
and its handle the moment the server made it) or resumes the journaled one, asks the
server which parts it holds (the server's view wins over the journal's), and sends exactly
the missing parts, each recorded only after the server acknowledged it. It then re-stats
the file and completes with the whole-file checksum (MD5, or SHA-256 where the server
verifies with it: ``checksums``). A file that changed on the way is never completed:
``FileChanged`` is raised and the session aborted.

Every byte is read from disk once, and the whole-file checksum is computed in that same read:

- streaming (one part in flight, no part checksum: ``chunked``): each part streams from
  disk into the request, hashed as it is read; memory per file is one 1 MiB read block.
- buffered (parts in parallel, or a part checksum wanted up front: S3, tus with the
  checksum extension): this thread reads the parts in order into memory, hashes them, and
  hands them to ``concurrency`` sender threads. At most ``concurrency + 1`` parts are in
  memory at once (one being read while the others are sent), so memory per file is
  bounded by ``(concurrency + 1) * part_size``.

A part the server holds that the journal does not know is kept if the server's MD5 of it
(when it tells one) matches the local part, else sent again under its own number: parts
are never renumbered.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from syncd import checksums
from syncd.bandwidth import BandwidthLimiter
from syncd.config import RetryPolicy
from syncd.journal import Fingerprint, Journal, NewUpload, UploadRow
from syncd.upload.base import (
    NO_BATCH,
    AuthRejected,
    Backend,
    BatchLimit,
    Capabilities,
    ChecksumMismatch,
    FileChanged,
    FileVanished,
    Interrupted,
    Part,
    PartPlan,
    PartReceipt,
    PermanentError,
    RemoteFile,
    Resync,
    Session,
    SessionGone,
    StorageFull,
    TransientError,
    UploadError,
    UploadItem,
    WholeFile,
    plan_parts,
    receipts_in_order,
)
from syncd.upload.body import AnyOf, FileSlice, MemoryBody, PrefixHash, StopFlag, read_part
from syncd.upload.retry import call_with_retry

log = logging.getLogger("syncd.upload")
T = TypeVar("T")

BACKGROUND_HASH_MIN = 16 * 1024 * 1024
"""files at least this big are hashed on a thread of their own while they are sent"""
WHOLE = 0
"""``uploads.part_size`` of a whole-file upload (one request, no session)"""
MAX_RESYNCS = 10
"""times in a row the server's view may surprise the engine before it gives up for now"""


def _verified(caps: Capabilities, done: UploadRow) -> str:
    """What verified a file completed before a crash, as journaled; for an upload journaled
    before syncd kept that, the algorithm of its digest where the server checks the whole
    file's checksum, else what the server verifies."""
    if done.verified:
        return done.verified
    if caps.verifies in checksums.ALGORITHMS and done.md5:
        return checksums.split(done.md5)[0]
    return caps.verifies


def new_upload_key() -> str:
    return secrets.token_urlsafe(24)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError)


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


@dataclass
class _Open:
    """One upload in progress: the local file, its journal row and its session."""

    job: UploadJob
    backend: Backend
    fd: int
    ctime_ns: int
    item: UploadItem
    caps: Capabilities
    hasher: PrefixHash
    on_read: Callable[[int], None] | None
    row: UploadRow | None = None
    session: Session | None = None
    resumed: bool = False
    """the session was journaled by an earlier attempt (so the server may hold parts)"""


@dataclass(frozen=True)
class _Read:
    """A small file read whole for a batch: its bytes, their MD5, and its ctime then."""

    job: UploadJob
    data: bytes
    md5: str
    ctime_ns: int


class UploadEngine:
    def __init__(self, journal: Journal, backends: Mapping[str, Backend],
                 policies: Mapping[str, RetryPolicy], *, stop: threading.Event,
                 on_retry: Callable[[str, str], None] | None = None,
                 on_part: Callable[[int], None] | None = None,
                 sleep: Callable[[float], object] | None = None,
                 limiter: BandwidthLimiter | None = None,
                 hold: Callable[[UploadJob], str | None] | None = None):
        self.journal = journal
        self.limiter = limiter
        self.hold = hold
        """why a job must stop before its next request (``syncd pause``), or None"""
        self.backends = backends
        self.policies = policies
        self.stop = stop
        self._on_retry = on_retry
        self._on_part = on_part
        self._sleep = sleep

    def upload(self, job: UploadJob, *, on_read: Callable[[int], None] | None = None) -> tuple[RemoteFile, str]:
        """Upload ``job.source``; returns what the server holds and the file's digest
        (as ``checksums.tag`` writes it).

        Raises FileChanged, FileVanished, Interrupted, PermanentError, ChecksumMismatch, or
        a TransientError once the request's retry budget is spent. The upload's end is
        journaled as a deferred write: the caller's next write (the file's outcome) commits it.
        """
        backend = self.backends[job.target]
        item = UploadItem(remote_name=job.remote_name, size=job.fingerprint.size,
                          mtime_ns=job.fingerprint.mtime_ns)
        caps = backend.plan(item)
        done = self.journal.completed_upload(job.file_id, target=job.target, source=str(job.source),
                                             fp=job.fingerprint, remote_name=job.remote_name)
        if done is not None:  # finished before a crash or restart cut the file's work short
            return RemoteFile(name=job.remote_name, size=done.size, md5=done.md5,
                              verified=_verified(caps, done)), done.md5
        fd = self._open_source(job)
        up = _Open(job, backend, fd, 0, replace(item, checksum=caps.checksum), caps,
                   PrefixHash(caps.checksum, background=item.size >= BACKGROUND_HASH_MIN), on_read)
        try:
            up.ctime_ns = self._check_unchanged(fd, job)
            if item.size <= caps.single_request_max:
                return self._upload_whole(up)
            return self._upload_parts(up)
        finally:
            up.hasher.close()
            os.close(fd)

    # --- small files, several in one request ----------------------------------------------

    def batch_limit(self, target: str) -> BatchLimit:
        """How many small files ``upload_batch`` sends to ``target`` in one request, and how
        big each may be (as far as its backend knows without asking the server). One file
        per request while a bandwidth limit is in force: a batch would go as one burst."""
        backend = self.backends.get(target)
        if backend is None or (self.limiter is not None and self.limiter.limits().limit(target)):
            return NO_BATCH
        return backend.batch_limit()

    def upload_batch(self, jobs: list[UploadJob]) -> list[tuple[RemoteFile, str] | BaseException]:
        """``upload`` of each job (all to one target), the small ones the backend takes
        together sent in one request; each job's result or error, in order.

        Every file is read, hashed and checked unchanged once, its upload journaled under
        its own key before the request, and the bytes read are the bytes sent; after the
        answer each file is checked unchanged again, as a single upload is before it
        completes. A batch request is tried again with backoff like any request, under the
        same keys (a server that stored a file before the failure answers its key again
        without a second copy); once its retries are spent, a full disk, a refused token
        or a shutdown end each file as they would end it alone. A batch the server refuses
        as a whole (a proxy's body limit), and a file it answers with a transient error,
        go on as a single ``upload`` each, under the same key."""
        results: list[tuple[RemoteFile, str] | BaseException | None] = [None] * len(jobs)
        alone: list[int] = []
        batch: list[tuple[int, _Read]] = []
        limit = self.batch_limit(jobs[0].target) if jobs else NO_BATCH
        completed = self.journal.completed_uploads([job.file_id for job in jobs], target=jobs[0].target) \
            if limit.files > 1 else {}
        for i, job in enumerate(jobs):
            if job.target != jobs[0].target or not limit.takes(job.fingerprint.size):
                alone.append(i)
                continue
            try:
                read = self._read_small(job, completed.get(job.file_id, ()))
            except (FileChanged, FileVanished) as exc:
                results[i] = exc
                continue
            if isinstance(read, tuple):
                results[i] = read  # completed before a crash or restart cut the file's work short
            else:
                batch.append((i, read))
        for run in limit.split([len(read.data) for _, read in batch]):
            alone += self._send_batch(batch[run.start:run.stop], results)
        for i in sorted(alone):
            try:
                results[i] = self.upload(jobs[i])
            except BaseException as exc:  # the caller concludes each file; shutdown stops the rest
                results[i] = exc
                if isinstance(exc, Interrupted) or not isinstance(exc, Exception):
                    for rest in alone:
                        if results[rest] is None:
                            results[rest] = exc
                    break
        return results  # type: ignore[return-value]

    def _read_small(self, job: UploadJob, completed: Sequence[UploadRow]) -> _Read | tuple[RemoteFile, str]:
        """A small file's bytes and MD5, checked unchanged while read (the file's ctime kept
        to check it again after the answer); or the result of its completed upload (among
        ``completed``, the file's completed uploads to the job's target, newest first)."""
        backend = self.backends[job.target]
        done = next((row for row in completed if self._same_upload(row, job)), None)
        if done is not None:
            return RemoteFile(name=job.remote_name, size=done.size, md5=done.md5,
                              verified=_verified(backend.plan(UploadItem(job.remote_name, done.size)), done)), \
                done.md5
        fd = self._open_source(job)
        try:
            ctime_ns = self._check_unchanged(fd, job)
            data = read_part(fd, 0, job.fingerprint.size)
            self._check_unchanged(fd, job, ctime_ns)
        finally:
            os.close(fd)
        return _Read(job, data, hashlib.md5(data).hexdigest(), ctime_ns)

    def _send_batch(self, batch: list[tuple[int, _Read]], results: list) -> list[int]:
        """One request for ``batch``, tried again with backoff like any request; fills in
        ``results`` and returns the indexes left to a single upload each."""
        if not batch:
            return []
        target = batch[0][1].job.target
        backend = self.backends[target]
        rows = self._batch_rows([read for _, read in batch])
        files = [WholeFile(UploadItem(read.job.remote_name, len(read.data), key=row.upload_key or "",
                                      mtime_ns=read.job.fingerprint.mtime_ns), read.data, read.md5)
                 for (_, read), row in zip(batch, rows, strict=True)]

        def attempt() -> list[RemoteFile | UploadError]:
            if self.stop.is_set():
                raise Interrupted()
            for _, read in batch:
                if self.hold is not None and (why := self.hold(read.job)):
                    raise Interrupted(why)  # (each upload is journaled open: a later one goes on under its key)
            return backend.upload_batch(files)

        def on_retry(exc: BaseException, _delay: float) -> None:
            for _, read in batch:
                self.journal.note_retry(read.job.file_id, f"upload: {exc}")
            if self._on_retry is not None and isinstance(exc, TransientError):
                self._on_retry(target, exc.reason)

        try:
            if self.limiter is not None:
                self.limiter.acquire(target, sum(len(f.data) for f in files), stop=self.stop)
            answers = call_with_retry(attempt, is_retryable=is_retryable, policy=self.policies[target],
                                      stop=self.stop, what=f"{target}: a batch of {len(files)} files",
                                      on_retry=on_retry, sleep=self._sleep)
        except (TransientError, AuthRejected, StorageFull, Interrupted) as exc:
            # what a request of each file alone would have ended with
            self.journal.finish_uploads([(row.id, "abandoned", None, None) for row in rows])
            for i, _ in batch:
                results[i] = exc
            return []
        except (UploadError, OSError) as exc:
            # refused as a batch (a proxy's body limit, a server that no longer takes them):
            # each file alone says what it means for that file
            log.info("%s: a batch of %d files was refused (%s); sending them one by one", target, len(files), exc)
            return [i for i, _ in batch]
        verifies = backend.plan(files[0].item).verifies
        alone = []
        ended: list[tuple[int, str, str | None, str | None]] = []
        for (i, read), row, answer in zip(batch, rows, answers, strict=True):
            if isinstance(answer, (TransientError, SessionGone, Resync)):
                alone.append(i)  # tried again alone, under its key
                continue
            if isinstance(answer, BaseException):
                ended.append((row.id, "abandoned", None, None))
                results[i] = answer
                continue
            try:
                self._check_path(read)
            except (FileChanged, FileVanished) as exc:
                ended.append((row.id, "abandoned", None, None))
                results[i] = exc
                continue
            ended.append((row.id, "completed", read.md5, verifies))
            results[i] = (replace(answer, verified=verifies), read.md5)
            if self._on_part is not None:
                self._on_part(len(read.data))
        if ended:
            self.journal.finish_uploads(ended, deferred=True)  # committed with the caller's next write
        return alone

    def _batch_rows(self, reads: list[_Read]) -> list[UploadRow]:
        """Each file's upload journaled with its key before the request (an open whole-file
        upload of the same file goes on under its key; any other is closed first), in one
        commit."""
        rows = [self._interrupted_whole(read.job) for read in reads]
        fresh = [n for n, row in enumerate(rows) if row is None]
        started = self.journal.start_uploads([
            NewUpload(job.file_id, job.target, str(job.source), job.remote_name, job.fingerprint,
                      job.fingerprint.size, WHOLE, new_upload_key()) for job in (reads[n].job for n in fresh)]) \
            if fresh else []
        for n, row in zip(fresh, started, strict=True):
            rows[n] = row
        return rows  # type: ignore[return-value]

    @staticmethod
    def _check_path(read: _Read) -> None:
        """After the answer: the path still holds the file as it was read."""
        job = read.job
        try:
            st = os.stat(job.source)
        except FileNotFoundError:
            raise FileVanished(f"{job.label}: file vanished during upload") from None
        if Fingerprint.of(st) != job.fingerprint or st.st_ctime_ns != read.ctime_ns:
            raise FileChanged(f"{job.label}: file changed during upload")

    def _on_read(self, up: _Open, stop: StopFlag) -> Callable[[int], None] | None:
        """What a part body calls with each block before it is sent: the bandwidth limit of
        the target (and of everything) first, then the caller's progress."""
        if self.limiter is None:
            return up.on_read
        limiter, target, progress = self.limiter, up.job.target, up.on_read

        def on_read(n: int) -> None:
            limiter.acquire(target, n, stop=stop)
            if progress is not None:
                progress(n)

        return on_read

    # --- checks and retries ----------------------------------------------------------------

    def _retry(self, fn: Callable[[], T], up: _Open, what: str) -> T:
        tries = 0

        def on_retry(exc: BaseException, _delay: float) -> None:
            nonlocal tries
            tries += 1
            self.journal.note_retry(up.job.file_id, f"{what}: try {tries + 1} after {exc}")
            if self._on_retry is not None and isinstance(exc, TransientError):
                self._on_retry(up.job.target, exc.reason)

        def attempt() -> T:
            if self.stop.is_set():
                raise Interrupted()
            if self.hold is not None and (why := self.hold(up.job)):
                raise Interrupted(why)  # the session stays open, to resume from the server's offset
            return fn()

        return call_with_retry(attempt, is_retryable=is_retryable, policy=self.policies[up.job.target],
                               stop=self.stop, what=f"{up.job.label}: {what}", on_retry=on_retry,
                               sleep=self._sleep)

    @staticmethod
    def _open_source(job: UploadJob) -> int:
        """The bytes to send, open for reading (without updating their atime where allowed)."""
        try:
            return os.open(job.source, os.O_RDONLY | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            return os.open(job.source, os.O_RDONLY)
        except FileNotFoundError:
            raise FileVanished(f"{job.label}: file vanished") from None

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

    def _check_file(self, up: _Open) -> None:
        """The path must still hold the same, unchanged file: checked before each part (a
        deleted or replaced file stops its upload) and last before completing."""
        try:
            st = os.stat(up.job.source)
        except FileNotFoundError:
            raise FileVanished(f"{up.job.label}: file vanished during upload") from None
        if Fingerprint.of(st) != up.job.fingerprint or st.st_ctime_ns != up.ctime_ns:
            raise FileChanged(f"{up.job.label}: file changed during upload")
        try:
            self._check_unchanged(up.fd, up.job, up.ctime_ns)
        except FileChanged:
            if not os.path.lexists(up.job.source):  # unlinked between the two looks
                raise FileVanished(f"{up.job.label}: file vanished during upload") from None
            raise

    # --- a small file in one request ---------------------------------------------------------

    def _upload_whole(self, up: _Open) -> tuple[RemoteFile, str]:
        job = up.job
        up.hasher.catch_up(up.fd, up.item.size, stop=self.stop)
        self._check_unchanged(up.fd, job, up.ctime_ns)
        digest = up.hasher.digest()
        # a server that knows the key of an interrupted upload answers without a second copy
        row = self._interrupted_whole(job)
        if row is None:
            row = self.journal.start_upload(job.file_id, target=job.target, source=str(job.source),
                                            remote_name=job.remote_name, fp=job.fingerprint, size=up.item.size,
                                            part_size=WHOLE, upload_key=new_upload_key())
        item = replace(up.item, key=row.upload_key or "")
        try:
            remote = self._retry(
                lambda: up.backend.upload_whole(
                    item, FileSlice(up.fd, 0, item.size, stop=self.stop, on_read=self._on_read(up, self.stop)),
                    digest),
                up, "upload")
            self._check_file(up)
        except BaseException:
            self.journal.finish_upload(row.id, state="abandoned")
            raise
        self.journal.finish_upload(row.id, state="completed", md5=digest, verified=remote.verified, deferred=True)
        if self._on_part is not None:
            self._on_part(item.size)
        return remote, digest

    # --- parts ------------------------------------------------------------------------------

    def _interrupted_whole(self, job: UploadJob) -> UploadRow | None:
        """The whole-file upload of this same file a crash interrupted, to go on under its
        key; any other open upload of the file is closed (its session freed)."""
        while (stale := self.journal.open_upload(job.file_id, target=job.target)) is not None:
            if self._same_upload(stale, job) and stale.part_size == WHOLE and stale.upload_key:
                return stale
            self._abandon_row(self.backends[job.target], job, stale)
        return None

    @staticmethod
    def _same_upload(row: UploadRow, job: UploadJob) -> bool:
        return (row.fingerprint == job.fingerprint and row.source == str(job.source)
                and row.remote_name == job.remote_name)

    def _open_session(self, up: _Open) -> None:
        """The journaled session if it still fits, else a new one: its key journaled before
        the first request, its handle the moment the server made it."""
        job = up.job
        row = self.journal.open_upload(job.file_id, target=job.target)
        if row is not None and (not self._same_upload(row, job) or not self._plan_fits(row, up)):
            log.info("%s: the interrupted upload no longer fits the file; starting over", job.label)
            self._abandon_row(up.backend, job, row)
            row = None
        fresh = row is None
        if fresh:
            plan = plan_parts(up.item.size, up.caps)
            row = self.journal.start_upload(job.file_id, target=job.target, source=str(job.source),
                                            remote_name=job.remote_name, fp=job.fingerprint, size=up.item.size,
                                            part_size=plan.part_size, upload_key=new_upload_key())
        up.row = row
        # a new session is verified with the algorithm the file is being hashed with
        up.item = replace(up.item, key=row.upload_key or "", part_size=row.part_size, checksum=up.hasher.algorithm)
        if not fresh and (row.session is not None or row.upload_key):
            log.info("%s: resuming upload session", job.label)
            up.session = up.backend.resume(up.item, row.session)
            up.resumed = True
            return
        up.session = self._retry(lambda: up.backend.create(up.item), up, "create session")
        up.resumed = False
        if up.session.handle is not None:
            self.journal.set_session(row.id, up.session.handle)

    @staticmethod
    def _plan_fits(row: UploadRow, up: _Open) -> bool:
        """An interrupted upload goes on with its own part size, if the protocol still takes it
        (not a whole-file upload, nor one from before upload keys with nothing to resume)."""
        if row.part_size == WHOLE or (row.upload_key is None and row.session is None):
            return False
        plan = PartPlan(up.item.size, row.part_size)
        return (plan.count <= up.caps.max_parts and row.part_size <= up.caps.max_part
                and (plan.count == 1 or row.part_size >= up.caps.min_part))

    def _abandon_row(self, backend: Backend, job: UploadJob, row: UploadRow) -> None:
        if row.session is not None or row.upload_key:
            item = UploadItem(remote_name=job.remote_name, size=job.fingerprint.size,
                              mtime_ns=job.fingerprint.mtime_ns, key=row.upload_key or "", part_size=row.part_size)
            self._abort(backend.resume(item, row.session))
        self.journal.finish_upload(row.id, state="abandoned")

    @staticmethod
    def _abort(session: Session) -> None:
        try:
            session.abort()
        except Exception as exc:  # best effort: servers expire idle sessions anyway
            log.debug("abort of %s failed: %s", session.handle, exc)

    def _upload_parts(self, up: _Open) -> tuple[RemoteFile, str]:
        fresh_sessions = 0
        unnamed_tried = False
        while True:
            self._open_session(up)
            try:
                return self._send_and_complete(up)
            except SessionGone as exc:
                # The server forgot the session (or never named it): one new session, then give up.
                self.journal.finish_upload(up.row.id, state="abandoned")
                if up.session.handle is None and not unnamed_tried:
                    unnamed_tried = True  # an upload whose session's answer never came back
                    log.info("%s: %s; starting a new session", up.job.label, exc)
                    continue
                fresh_sessions += 1
                if fresh_sessions > 1:
                    raise PermanentError(f"upload session lost twice: {exc}") from exc
                log.warning("%s: %s; starting a new session", up.job.label, exc)
            except PermanentError as exc:
                # The clean-up registered with the session: abort it, unless the server keeps
                # what it got for a later `syncd retry` (a full disk).
                if not exc.keep_session:
                    self._abort(up.session)
                    self.journal.finish_upload(up.row.id, state="abandoned")
                raise
            except (FileChanged, FileVanished, ChecksumMismatch):
                self._abort(up.session)
                self.journal.finish_upload(up.row.id, state="abandoned")
                raise

    def _send_and_complete(self, up: _Open) -> tuple[RemoteFile, str]:
        plan = PartPlan(up.item.size, up.item.part_size)
        resyncs = 0
        while True:
            held = self._retry(up.session.committed, up, "ask what the server holds") \
                if up.resumed or up.session.handle is not None else {}
            self._hash_as_session(up)
            self._reconcile(up, held)
            try:
                receipts = self._send_missing(up, plan, held)
                break
            except Resync as exc:
                resyncs += 1
                if resyncs > MAX_RESYNCS:
                    raise TransientError(f"server's view keeps changing: {exc}", reason="protocol") from exc
                log.info("%s: %s; asking the server what it holds", up.job.label, exc)
        up.hasher.catch_up(up.fd, up.item.size, stop=self.stop, drop=True)
        self._check_file(up)
        digest = up.hasher.digest()
        parts = receipts_in_order(receipts)
        remote = self._retry(lambda: up.session.complete(parts, digest), up, "complete")
        self.journal.finish_upload(up.row.id, state="completed", md5=digest, verified=remote.verified,
                                   deferred=True)
        return remote, digest

    @staticmethod
    def _hash_as_session(up: _Open) -> None:
        """A resumed session is completed with the checksum it was made with (one made
        with MD5 before an upgrade goes on with MD5)."""
        algorithm = up.session.checksum
        if algorithm is None or algorithm == up.hasher.algorithm:
            return
        if up.hasher.position:
            raise ChecksumMismatch(f"the server verifies the session with {algorithm}, "
                                   f"not the {up.hasher.algorithm} computed so far")
        if algorithm not in checksums.ALGORITHMS:
            raise ChecksumMismatch(f"the server verifies the session with {algorithm}, which syncd does not know")
        background = up.hasher.background
        up.hasher.close()
        up.hasher = PrefixHash(algorithm, background=background)
        up.item = replace(up.item, checksum=algorithm)

    def _reconcile(self, up: _Open, held: Mapping[int, PartReceipt]) -> None:
        """The server's view wins: parts the journal has and the server lacks are forgotten."""
        known = self.journal.parts(up.row.id)
        lost = [n for n, part in known.items() if n not in held or held[n].size != part.size]
        if lost:
            log.info("%s: the server lacks %d part(s) the journal had; sending them again", up.job.label, len(lost))
            self.journal.forget_parts(up.row.id, lost)

    def _record(self, up: _Open, receipt: PartReceipt, offset: int) -> None:
        self.journal.record_part(up.row.id, number=receipt.number, offset=offset, size=receipt.size,
                                 etag=receipt.etag, session=up.session.handle)
        log.debug("%s: part %d acknowledged (%d bytes at %d)", up.job.label, receipt.number, receipt.size, offset)
        if self._on_part is not None:
            self._on_part(receipt.size)

    def _keep_held(self, up: _Open, have: PartReceipt | None, size: int, part_md5: str | None) -> bool:
        """A part the server holds counts if its size fits and its MD5, when the server
        tells one, is the local part's."""
        if have is None or have.size != size:
            return False
        if have.md5 is not None and part_md5 is not None and have.md5.lower() != part_md5:
            log.info("%s: the server holds other bytes as part %d; sending it again", up.job.label, have.number)
            return False
        return True

    def _send_missing(self, up: _Open, plan: PartPlan, held: Mapping[int, PartReceipt]) -> dict[int, PartReceipt]:
        if up.caps.concurrency > 1 or up.caps.part_checksum:
            return self._send_buffered(up, plan, held)
        return self._send_streaming(up, plan, held)

    def _send_streaming(self, up: _Open, plan: PartPlan,
                        held: Mapping[int, PartReceipt]) -> dict[int, PartReceipt]:
        known = self.journal.parts(up.row.id)
        receipts: dict[int, PartReceipt] = {}
        for number in range(1, plan.count + 1):
            offset, size = plan.bounds(number)
            self._check_file(up)
            have = held.get(number)
            if have is not None and have.md5 is None and have.size == size:
                up.hasher.catch_up(up.fd, offset + size, stop=self.stop, drop=True)  # hashed, not sent
                receipts[number] = have
                if number not in known:
                    self._record(up, have, offset)
                continue
            if have is not None:  # the server tells the part's MD5: compare before keeping it
                data = read_part(up.fd, offset, size, drop=True)
                up.hasher.feed(offset, data)
                if self._keep_held(up, have, size, hashlib.md5(data).hexdigest()):
                    receipts[number] = have
                    if number not in known:
                        self._record(up, have, offset)
                    continue
            up.hasher.catch_up(up.fd, offset, stop=self.stop, drop=True)

            def send(number: int = number, offset: int = offset, size: int = size) -> PartReceipt:
                # a fresh body for every try: a retry rewinds the part, never the file
                body = FileSlice(up.fd, offset, size, hasher=up.hasher, stop=self.stop,
                                 on_read=self._on_read(up, self.stop), drop=True)
                return up.session.send_part(Part(number=number, offset=offset, size=size, body=body))

            receipt = self._retry(send, up, f"part {number}")
            self._note_handle(up)
            receipts[number] = receipt
            self._record(up, receipt, offset)
        return receipts

    def _note_handle(self, up: _Open) -> None:
        """A session the server made with its first part: journal the handle at once."""
        if up.session.handle is not None and up.row.session != up.session.handle:
            self.journal.set_session(up.row.id, up.session.handle)
            up.row = replace(up.row, session=up.session.handle)

    def _send_buffered(self, up: _Open, plan: PartPlan,
                       held: Mapping[int, PartReceipt]) -> dict[int, PartReceipt]:
        known = self.journal.parts(up.row.id)
        receipts: dict[int, PartReceipt] = {}
        cancel = threading.Event()
        stop = AnyOf(self.stop, cancel)
        slots = threading.BoundedSemaphore(up.caps.concurrency + 1)
        futures: list[Future] = []

        def send(number: int, offset: int, data: bytes, part_md5: str | None) -> None:
            try:
                if part_md5 is None and up.caps.part_checksum:
                    # hashed here, beside the other senders, while the reader hashes the whole file
                    part_md5 = hashlib.md5(data).hexdigest()
                def attempt() -> PartReceipt:
                    if stop.is_set():
                        raise Interrupted()
                    body = MemoryBody(data, stop=stop, on_read=self._on_read(up, stop))
                    return up.session.send_part(Part(number=number, offset=offset, size=len(data), body=body,
                                                     md5=part_md5))

                receipt = self._retry(attempt, up, f"part {number}")
                receipts[number] = receipt
                self._record(up, receipt, offset)
            except BaseException:
                cancel.set()  # the other parts stop at their next read
                raise
            finally:
                slots.release()

        executor = ThreadPoolExecutor(max_workers=up.caps.concurrency,
                                      thread_name_prefix=f"syncd-part-{up.job.file_id}")
        try:
            for number in range(1, plan.count + 1):
                while not slots.acquire(timeout=0.5):
                    if stop.is_set():
                        break
                if stop.is_set():
                    break
                offset, size = plan.bounds(number)
                try:
                    self._check_file(up)
                    data = read_part(up.fd, offset, size, drop=True)
                except BaseException:
                    slots.release()
                    raise
                up.hasher.feed(offset, data)
                have = held.get(number)
                # a held part is compared here; a part to send is hashed by its sender
                part_md5 = hashlib.md5(data).hexdigest() if have is not None and have.md5 is not None else None
                if self._keep_held(up, have, size, part_md5):
                    receipts[number] = have
                    if number not in known:
                        self._record(up, have, offset)
                    slots.release()
                    continue
                futures.append(executor.submit(send, number, offset, data, part_md5))
                del data
        except BaseException:
            cancel.set()
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=cancel.is_set() or self.stop.is_set())
        errors = [f.exception() for f in futures if not f.cancelled() and f.exception() is not None]
        if errors:
            # the first failure is the cause; the others were stopped because of it
            real = [e for e in errors if not isinstance(e, Interrupted)]
            raise (real or errors)[0]
        if self.stop.is_set():
            raise Interrupted()
        self._note_handle(up)
        return receipts
