"""Does any process hold a file open for writing? Answered by the kernel, without reading it.

A read lease (``fcntl(fd, F_SETLEASE, F_RDLCK)`` on a read-only descriptor) is granted
only while no descriptor anywhere is open for writing on the file (a shared writable
mmap keeps its descriptor's write count too), and readers do not prevent it, so a virus
scanner or a thumbnailer reading the file does not count as a writer. The lease is
released at once: the probe costs an open, two fcntl calls and a close.

Leases are not everywhere: EINVAL on filesystems without them (some network and FUSE
filesystems), EACCES for a file of another user without CAP_LEASE, and ``fs.leases-enable
= 0``. Those answer :attr:`Writers.UNKNOWN`, and the caller waits the whole quiet gap.

A writer that opens the file while we hold the lease breaks it, and the kernel sends
SIGIO to the lease holder; its default action ends the process. So the probe only
leases while SIGIO is ignored (or handled), and ignores it itself when it is first
called on the main thread (syncd uses SIGIO for nothing else; children inherit the ignored SIGIO,
which ffmpeg does not use).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat as stat_module
import threading
from enum import Enum
from pathlib import Path


class Writers(Enum):
    NONE = "none"
    """nobody holds the file open for writing"""
    SOME = "some"
    """some process holds it open for writing"""
    UNKNOWN = "unknown"
    """cannot tell here (no leases on this filesystem, not our file, the file is gone)"""


# EAGAIN: a conflicting open exists. EBUSY is documented for F_WRLCK; accepted here too.
_HELD = (errno.EAGAIN, errno.EBUSY)


def writers_of(path: Path) -> Writers:
    """Whether any process (this one included) holds ``path`` open for writing."""
    if not _sigio_ignored():
        return Writers.UNKNOWN
    try:
        # O_NONBLOCK: an open that would wait for someone else's lease to break fails
        # with EWOULDBLOCK instead (and a FIFO swapped in does not block either).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
    except BlockingIOError:
        return Writers.SOME
    except OSError:
        return Writers.UNKNOWN
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            return Writers.UNKNOWN
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            return Writers.SOME if exc.errno in _HELD else Writers.UNKNOWN
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return Writers.NONE
    finally:
        os.close(fd)


def _sigio_ignored() -> bool:
    """True when a lease break cannot end this process (SIGIO ignored or handled)."""
    handler = signal.getsignal(signal.SIGIO)
    if handler == signal.SIG_IGN or callable(handler):
        return True
    if handler != signal.SIG_DFL or threading.current_thread() is not threading.main_thread():
        return False  # installed outside Python, or signal.signal cannot be called from here
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    return True
