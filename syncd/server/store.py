"""``ROOT/.incoming``: each session is ``<id>.json`` (its record) and ``<id>.part`` (its data).

Records are replaced atomically (write a temp file, fsync, rename, fsync the folder), so
a crash leaves either the old or the new record, never a torn one. All methods block:
the receiver calls them from its I/O threads.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from syncd.server.names import INCOMING_DIR
from syncd.server.records import COMPLETE, UPLOADING, SessionRecord, canonical_id
from syncd.server.safefs import open_subdir

log = logging.getLogger(__name__)

_RECORD_SUFFIX = ".json"
_PART_SUFFIX = ".part"
_TMP_SUFFIX = ".tmp"


def part_name(session_id: str) -> str:
    return session_id + _PART_SUFFIX


class IncomingStore:
    def __init__(self, root_fd: int) -> None:
        self.fd = open_subdir(root_fd, INCOMING_DIR, create=True, mode=0o700)

    def close(self) -> None:
        os.close(self.fd)

    def save(self, record: SessionRecord, *, durable: bool = True) -> None:
        """Replaces the record atomically; fsynced (file and folder) when ``durable``.

        Not durable is only for a record that nothing depends on after a crash (see
        ``Receiver.store_whole``): it survives a crash, or is missing, or (without the
        file's fsync) is torn and ignored by ``load`` with a warning.
        """
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
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        if durable:
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
        known = {r.id for r in records}
        for name in names:
            stem = name[: -len(_PART_SUFFIX)]
            if name.endswith(_PART_SUFFIX) and canonical_id(stem) and stem not in known:
                log.info("removing %s/%s: partial data without a session", INCOMING_DIR, name)
                self._unlink(name)
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
