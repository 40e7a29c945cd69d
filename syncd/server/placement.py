"""Moving a verified upload from ``.incoming`` to its name under the root, atomically.

The data is hard-linked into place (``link`` never replaces, so two uploads racing for
one name cannot clobber each other) and only unlinked from ``.incoming`` once the
session is recorded as complete. A crash in between is harmless: completing again
finds its own inode, or an identical file, already at the name.

``place`` fsyncs the folder it linked into, so the name is durable when it returns. A
caller placing many files at once (a batch of small files) may pass ``FolderSyncs``
instead: each folder is then fsynced once, by the caller, after all of them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from syncd.server.checksums import DEFAULT
from syncd.server.names import MAX_SEGMENT_BYTES
from syncd.server.safefs import digest_of_fd, parent_dir, regular_file_stat

MAX_RENAME_TRIES = 10_000

FolderKey = tuple[int, int]
"""a folder's ``(st_dev, st_ino)``"""


class PlacementError(Exception):
    """The file cannot be stored under its name. ``str(err)`` is the reason (a 409)."""


@dataclass(frozen=True)
class Placed:
    path: str  # relative to the root
    reused: bool  # an identical file already held the name; nothing was written
    folder: FolderKey | None = None
    """with ``FolderSyncs``: the folder holding the name, whose fsync was left to them"""


class FolderSyncs:
    """The folders ``place`` put names into, each fsynced once by ``sync`` rather than
    once a file. Keeps a duplicated descriptor per folder (by st_dev/st_ino) until closed."""

    def __init__(self) -> None:
        self._fds: dict[FolderKey, int] = {}

    def __enter__(self) -> FolderSyncs:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def add(self, dir_fd: int) -> FolderKey:
        st = os.fstat(dir_fd)
        key = (st.st_dev, st.st_ino)
        if key not in self._fds:
            self._fds[key] = os.dup(dir_fd)
        return key

    def sync(self) -> dict[FolderKey, OSError]:
        """Fsyncs every folder added; returns those whose fsync failed, with the error."""
        failed: dict[FolderKey, OSError] = {}
        for key, fd in self._fds.items():
            try:
                os.fsync(fd)
            except OSError as exc:
                failed[key] = exc
        return failed

    def close(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


@dataclass(frozen=True)
class Upload:
    incoming_fd: int
    part_name: str
    session_id: str
    relpath: str
    digest: str  # the file's checksum in hex, in ``checksum``'s algorithm
    size: int
    checksum: str = DEFAULT


def place(root_fd: int, upload: Upload, *, on_conflict: str, folders: FolderSyncs | None = None) -> Placed:
    """Stores ``upload`` under the root following ``on_conflict`` (rename|overwrite|fail).

    With ``folders``, the folder is not fsynced here but added to them (whatever the
    outcome, also when the name already held the file): the name is durable only once
    the caller's ``folders.sync()`` succeeded for ``Placed.folder``.
    """
    folder, _, leaf = upload.relpath.rpartition("/")
    part = os.stat(upload.part_name, dir_fd=upload.incoming_fd, follow_symlinks=False)
    with parent_dir(root_fd, upload.relpath, create=True) as dir_fd:
        deferred = None if folders is None else folders.add(dir_fd)
        if _holds_same(dir_fd, leaf, part, upload):
            return Placed(path=upload.relpath, reused=True, folder=deferred)
        if on_conflict == "overwrite":
            _replace(dir_fd, leaf, upload, sync=folders is None)
            return Placed(path=upload.relpath, reused=False, folder=deferred)
        for candidate in _candidates(leaf):
            if candidate != leaf and _same_inode(dir_fd, candidate, part):
                return Placed(path=_join(folder, candidate), reused=False, folder=deferred)
            try:
                os.link(
                    upload.part_name,
                    candidate,
                    src_dir_fd=upload.incoming_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
            except FileExistsError:
                if on_conflict == "fail":
                    raise PlacementError(f"{upload.relpath!r} already exists") from None
                continue
            if folders is None:
                os.fsync(dir_fd)
            return Placed(path=_join(folder, candidate), reused=False, folder=deferred)
    raise PlacementError(f"{upload.relpath!r} and {MAX_RENAME_TRIES} renamed variants exist")


def _replace(dir_fd: int, leaf: str, upload: Upload, *, sync: bool) -> None:
    tmp = f".syncd-{upload.session_id}.tmp"
    try:
        os.unlink(tmp, dir_fd=dir_fd)  # left by a crash during an earlier try
    except FileNotFoundError:
        pass
    os.link(
        upload.part_name,
        tmp,
        src_dir_fd=upload.incoming_fd,
        dst_dir_fd=dir_fd,
        follow_symlinks=False,
    )
    try:
        os.rename(tmp, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        os.unlink(tmp, dir_fd=dir_fd)
        if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise PlacementError(f"{upload.relpath!r} is a folder") from None
        raise
    if sync:
        os.fsync(dir_fd)


def _holds_same(dir_fd: int, leaf: str, part: os.stat_result, upload: Upload) -> bool:
    """Whether ``leaf`` is a regular file with the upload's content (never follows a symlink)."""
    st = regular_file_stat(dir_fd, leaf)
    if st is None:
        return False
    if (st.st_dev, st.st_ino) == (part.st_dev, part.st_ino):
        return True
    if st.st_size != upload.size:
        return False
    try:
        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        return digest_of_fd(fd, upload.size, upload.checksum).hexdigest() == upload.digest
    except OSError:
        return False
    finally:
        os.close(fd)


def _same_inode(dir_fd: int, name: str, part: os.stat_result) -> bool:
    st = regular_file_stat(dir_fd, name)
    return st is not None and (st.st_dev, st.st_ino) == (part.st_dev, part.st_ino)


def _candidates(leaf: str) -> Iterator[str]:
    yield leaf
    stem, ext = os.path.splitext(leaf)
    if len(ext.encode("utf-8")) > MAX_SEGMENT_BYTES // 2:
        stem, ext = leaf, ""  # not an extension worth keeping
    for n in range(1, MAX_RENAME_TRIES + 1):
        suffix = f" ({n}){ext}"
        room = MAX_SEGMENT_BYTES - len(suffix.encode("utf-8"))
        # Trim by characters so a multi-byte character is never cut in half.
        trimmed = stem
        while len(trimmed.encode("utf-8")) > room:
            trimmed = trimmed[:-1]
        yield trimmed + suffix


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name
