"""File-system steps below the root that never follow a symlink.

Every folder is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a
symlink planted anywhere under the root (by a local user, or a race) makes the walk
fail instead of leading outside. The root itself is the operator's choice and may be
a symlink.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from syncd.server.checksums import new_hasher

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
HASH_BLOCK = 1024 * 1024


class UnsafePath(Exception):
    """A folder on the way is a symlink or not a folder. ``str(err)`` names it."""


def open_root(root: Path) -> int:
    """Creates ``root`` if needed and opens it (following symlinks: the operator chose it)."""
    root.mkdir(parents=True, exist_ok=True)
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_subdir(
    parent_fd: int, name: str, *, create: bool, shown: str | None = None, mode: int = 0o777
) -> int:
    """Opens folder ``name`` inside ``parent_fd``; FileNotFoundError if missing and not ``create``.

    A folder it makes gets ``mode`` less the umask, and ``parent_fd`` is fsynced at once: a
    file's name is durable only when every folder on its way is, and the caller fsyncs only
    the folder that holds the file.
    """
    shown = shown or name
    for attempt in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            if not create or attempt:
                raise
            try:
                os.mkdir(name, mode, dir_fd=parent_fd)
            except FileExistsError:
                pass  # made by someone else meanwhile (who fsyncs); the next open checks what it is
            else:
                os.fsync(parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(f"{shown!r} is a symlink or not a folder") from None
            raise
    raise AssertionError("unreachable")


@contextmanager
def parent_dir(root_fd: int, relpath: str, *, create: bool) -> Iterator[int]:
    """The open folder that holds ``relpath``'s last segment; closed on exit."""
    segments = relpath.split("/")[:-1]
    fd = os.dup(root_fd)
    try:
        for i, seg in enumerate(segments):
            child = open_subdir(fd, seg, create=create, shown="/".join(segments[: i + 1]))
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def check_parents(root_fd: int, relpath: str) -> None:
    """Raises UnsafePath if a folder of ``relpath`` that already exists could not be used.

    Missing folders are fine: they are made when the file is stored.
    """
    try:
        with parent_dir(root_fd, relpath, create=False):
            pass
    except FileNotFoundError:
        pass


def digest_of_fd(fd: int, length: int, algorithm: str) -> hashlib._Hash:
    """The hash (``checksums.ALGORITHMS``) of the first ``length`` bytes of ``fd``, read
    with pread (the offset stays put)."""
    digest = new_hasher(algorithm)
    pos = 0
    while pos < length:
        block = os.pread(fd, min(HASH_BLOCK, length - pos), pos)
        if not block:
            raise OSError(errno.EIO, f"file ended at {pos} of {length} bytes")
        digest.update(block)
        pos += len(block)
    return digest


def regular_file_stat(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name``, or None when it is missing or not a regular file."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _sync_file_range() -> object | None:
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Asks the kernel to start writing ``length`` bytes at ``offset`` to disk now, without
    waiting (Linux's ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; elsewhere nothing).

    Durability still comes from the ``fsync`` at the end of a part: this only means
    that fsync finds little left to write (50 MiB: 25-60 ms -> 3-5 ms here), so the
    answer to a part is not held up writing the whole part out.
    """
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]
