"""``ROOT/.incoming``: each session is ``<id>.json`` (its record) and ``<id>.part`` (its data).

Records are replaced atomically (write a temp file, fsync, rename, fsync the folder), so
a crash leaves either the old or the new record, never a torn one. All methods block:
the receiver calls them from its I/O threads.

The records of whole files stored by one request (small files, thousands at a time) are
not files of their own but lines appended to ``completed-<n>.log``: a new file per small
file cost the receiver more than the file itself (bench/receiver.py --small). Nothing
depends on those records after a crash (see ``Receiver.store_whole``), so the log is
not fsynced; a torn last line is skipped with a warning. A log holds at most
``LOG_RECORDS`` records; once every session in a full log is forgotten, the log is
removed, so the logs of an always-on receiver do not grow.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from dataclasses import replace

from syncd.server.names import INCOMING_DIR
from syncd.server.records import COMPLETE, UPLOADING, SessionRecord, canonical_id
from syncd.server.safefs import open_subdir

log = logging.getLogger(__name__)

_RECORD_SUFFIX = ".json"
_PART_SUFFIX = ".part"
_TMP_SUFFIX = ".tmp"
_LOG_NAME = re.compile(r"^completed-(\d{1,9})\.log$")
LOG_RECORDS = 10_000


def part_name(session_id: str) -> str:
    return session_id + _PART_SUFFIX


class IncomingStore:
    def __init__(self, root_fd: int) -> None:
        self.fd = open_subdir(root_fd, INCOMING_DIR, create=True, mode=0o700)
        self._log_lock = threading.Lock()
        self._log_fd = -1
        self._log_number = 0
        """the log appended to now (once it is open), numbered past every log found by ``load``"""
        self._log_of: dict[str, int] = {}
        """session id -> the log holding its record, for records kept in logs"""
        self._log_live: dict[int, int] = {}
        """log number -> how many of its records are not forgotten"""
        self._log_lines = 0
        """records written to the log appended to now"""

    def close(self) -> None:
        with self._log_lock:
            if self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def append_completed(self, record: SessionRecord) -> None:
        """Keeps a completed session's record as one line of the current log (not fsynced)."""
        line = record.to_json() + b"\n"
        with self._log_lock:
            if self._log_fd < 0 or self._log_lines >= LOG_RECORDS:
                self._next_log()
            try:
                written = os.write(self._log_fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, f"only {written} of {len(line)} bytes written")
            except OSError:
                # A torn line would glue itself to the next one: go on in a new log (load
                # skips the torn tail of this one with a warning).
                os.close(self._log_fd)
                self._log_fd = -1
                raise
            self._log_lines += 1
            self._log_of[record.id] = self._log_number
            self._log_live[self._log_number] += 1

    def _next_log(self) -> None:
        if self._log_fd >= 0:
            os.close(self._log_fd)
            self._log_fd = -1
            if self._log_live.get(self._log_number) == 0:
                del self._log_live[self._log_number]
                self._unlink(_log_name(self._log_number))
        self._log_number += 1
        self._log_fd = os.open(
            _log_name(self._log_number),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.fd,
        )
        self._log_live[self._log_number] = 0
        self._log_lines = 0

    def _forget_logged(self, session_id: str) -> bool:
        """True if the session's record was in a log (now counted out; a full log whose
        records are all forgotten is removed)."""
        with self._log_lock:
            number = self._log_of.pop(session_id, None)
            if number is None:
                return False
            self._log_live[number] -= 1
            appending = number == self._log_number and self._log_fd >= 0
            if self._log_live[number] == 0 and not appending:
                del self._log_live[number]
                self._unlink(_log_name(number))
            return True

    def save(self, record: SessionRecord) -> None:
        """Replaces the record atomically, fsynced (file and folder)."""
        final = record.id + _RECORD_SUFFIX
        tmp = final + _TMP_SUFFIX
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.fd,
        )
        try:
            os.write(fd, record.to_json())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        os.fsync(self.fd)

    def create_part(self, session_id: str) -> None:
        os.close(self.new_part(session_id))

    def new_part(self, session_id: str) -> int:
        """Creates the session's (empty) data file; returns it open for writing."""
        # The data becomes the stored file by a link, so it gets the mode stored files
        # should have (the umask decides); the folder above keeps it private meanwhile.
        return os.open(
            part_name(session_id),
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o666,
            dir_fd=self.fd,
        )

    def open_part(self, session_id: str, *, write: bool) -> int:
        mode = os.O_WRONLY if write else os.O_RDONLY
        return os.open(part_name(session_id), mode | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)

    def part_size(self, session_id: str) -> int | None:
        try:
            return os.stat(part_name(session_id), dir_fd=self.fd, follow_symlinks=False).st_size
        except FileNotFoundError:
            return None

    def remove_part(self, session_id: str) -> None:
        self._unlink(part_name(session_id))

    def remove(self, session_id: str) -> None:
        """Forgets the session: data first, so a crash in between leaves no orphan data."""
        if self._forget_logged(session_id):
            return  # a stored whole file: no data left, and its record goes with its log
        self._unlink(part_name(session_id))
        self._unlink(session_id + _RECORD_SUFFIX)
        os.fsync(self.fd)

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def load(self) -> list[SessionRecord]:
        """Every stored session, reconciled with its data after a crash or restart.

        Leftovers no client can reach are removed: temp records, and data without a
        record (a crash before the session's id was ever answered).
        """
        names = os.listdir(self.fd)
        records: list[SessionRecord] = []
        for name in names:
            if name.endswith(_TMP_SUFFIX):
                self._unlink(name)
            elif name.endswith(_RECORD_SUFFIX) and canonical_id(name[: -len(_RECORD_SUFFIX)]):
                record = self._read_record(name)
                if record is not None:
                    records.append(self._reconcile(record))
        records += self._load_logs(names)
        known = {r.id for r in records}
        for name in names:
            stem = name[: -len(_PART_SUFFIX)]
            if name.endswith(_PART_SUFFIX) and canonical_id(stem) and stem not in known:
                log.info("removing %s/%s: partial data without a session", INCOMING_DIR, name)
                self._unlink(name)
        return records

    def _load_logs(self, names: list[str]) -> list[SessionRecord]:
        """The records in the completed-records logs; appending goes on in a new log."""
        records: list[SessionRecord] = []
        numbers = sorted(int(m.group(1)) for name in names if (m := _LOG_NAME.match(name)))
        for number in numbers:
            name = _log_name(number)
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
                try:
                    data = _read_all(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("ignoring %s/%s: %s", INCOMING_DIR, name, exc)
                continue
            live = 0
            for lineno, line in enumerate(data.split(b"\n"), 1):
                if not line:
                    continue
                try:
                    record = SessionRecord.from_json(line)
                    if record.state != COMPLETE:
                        raise ValueError(f"not a completed session ({record.state})")
                except ValueError as exc:
                    log.warning("ignoring line %d of %s/%s: %s", lineno, INCOMING_DIR, name, exc)
                    continue
                if record.id in self._log_of:
                    continue  # (one record per session; a copy cannot be told apart)
                records.append(self._reconcile(record))
                self._log_of[record.id] = number
                live += 1
            if live:
                self._log_live[number] = live
            else:
                self._unlink(name)
        self._log_number = numbers[-1] if numbers else 0
        return records

    def _read_record(self, name: str) -> SessionRecord | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                data = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
            record = SessionRecord.from_json(data)
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s/%s: %s", INCOMING_DIR, name, exc)
            return None
        if record.id + _RECORD_SUFFIX != name:
            log.warning("ignoring %s/%s: it holds session %s", INCOMING_DIR, name, record.id)
            return None
        return record

    def _reconcile(self, record: SessionRecord) -> SessionRecord:
        size = self.part_size(record.id)
        if record.state == COMPLETE:
            if size is not None:  # crashed after storing the file, before dropping the data
                self.remove_part(record.id)
            return record
        if record.state != UPLOADING:
            return record
        if size is None:
            self.create_part(record.id)
            size = 0
        if size < record.offset:
            # Acknowledged bytes lost (power cut before the data reached the disk):
            # the client resumes from what is really there.
            log.warning(
                "session %s: only %d of %d acknowledged bytes survived; resuming from there",
                record.id,
                size,
                record.offset,
            )
            record = replace(record, offset=size)
            self.save(record)
        return record


def _log_name(number: int) -> str:
    return f"completed-{number}.log"


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
