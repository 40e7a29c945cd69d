"""Part bodies: streamed from disk or sent from memory, hashing the whole file in the
same single read.

``PrefixHash`` hashes the file's bytes in order and remembers how far it got, so a part
that is sent twice (a retry rewinds its body) is hashed once, and a resumed upload
hashes the already-sent prefix once before going on.

Every body checks ``stop`` (anything with ``is_set()``) before each read, so a shutdown
or a failed sibling part stops a part mid-flight, and reports each block to ``on_read``
(progress, byte counters) before it is sent.

The parts of a session (``drop=True``) are dropped from the page cache behind the
reads (``drop_cached``); a small file sent whole is read twice (hashed, then sent) and
stays.
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from syncd import checksums
from syncd.upload.base import FileChanged, Interrupted

READ_SIZE = 1024 * 1024
STREAM_BLOCK = 256 * 1024
"""what a request body hands http.client at a time (its own reads are 8 KiB). 1 MiB blocks
cost 8 MiB more peak RSS to drf-chunked-upload (requests-toolbelt's encoder copies each
block through a buffer of its own) and, to ``syncd serve``, 5 MiB more and 0.5 CPU-s more
per GiB (above ``allocator``'s mmap threshold, each is mapped afresh; BENCHMARKS.md
section 15)"""


DROP_BEHIND = 2 * 1024 * 1024
"""how much of what a ``FileSlice`` read may stay in the page cache before it is dropped"""


def drop_cached(fd: int, offset: int, length: int) -> None:
    """Tells the kernel that ``length`` bytes of the file at ``offset``, read and copied by
    now, are not needed again (``POSIX_FADV_DONTNEED``; dirty pages are only written back).

    An upload reads each byte once: kept, a big file would push everything else out of
    the page cache. And the kernel then recycles those few pages for the next reads
    instead of taking fresh ones for every MiB: after memory had been freed on this VM
    (which hands free memory back to its host), reading 1 GiB cost 1.0-1.3 CPU-seconds
    through fresh pages and 0.05 dropping behind (710-890 vs 2,650-3,600 MiB/s). Another program
    reading the same file at the same time reads those pages from disk again.
    """
    if length > 0:
        with contextlib.suppress(OSError, AttributeError):  # no posix_fadvise on some systems
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


class AnyOf:
    """Set when any of its events is: the daemon's stop, or one upload's cancel."""

    def __init__(self, *events: StopFlag):
        self._events = events

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)


class PrefixHash:
    """The whole-file checksum (``checksums``: MD5, or SHA-256 where the server verifies
    with it) of ``file[0:position]``; grows only by contiguous bytes.

    With ``background``, the hashing itself runs on a thread of its own while the caller
    goes on reading and sending (hashlib and socket writes both release the GIL, so on
    two cores a big file is hashed and sent at the same time); at most ``QUEUE_BLOCKS``
    blocks wait to be hashed. ``digest`` waits for them; ``close`` ends the thread."""

    QUEUE_BLOCKS = 3
    """1 MiB blocks: 8 cost 5 MiB more peak RSS than 3 and sent no faster (1 GiB, 5 rounds each)"""

    def __init__(self, algorithm: str = checksums.DEFAULT, *, background: bool = False) -> None:
        self.algorithm = algorithm
        self._hasher = checksums.new_hasher(algorithm)
        self.background = background
        self.position = 0
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(self.QUEUE_BLOCKS)
            self._thread = threading.Thread(target=self._hash_queued, name="syncd-hash", daemon=True)
            self._thread.start()

    def _hash_queued(self) -> None:
        while True:
            data = self._queue.get()
            try:
                if data is None:
                    return
                self._hasher.update(data)
            finally:
                self._queue.task_done()

    def feed(self, offset: int, data: bytes | memoryview) -> None:
        """Bytes read at ``offset``; only the part past ``position`` counts."""
        end = offset + len(data)
        if offset <= self.position < end:
            fresh = data[self.position - offset:] if self.position > offset else data
            if self._queue is not None:
                self._queue.put(fresh)
            else:
                self._hasher.update(fresh)
            self.position = end

    def catch_up(self, fd: int, upto: int, *, stop: StopFlag | None = None, drop: bool = False) -> None:
        """Read and hash ``[position, upto)`` (the prefix a resumed upload does not resend)."""
        while self.position < upto:
            if stop is not None and stop.is_set():
                raise Interrupted()
            data = os.pread(fd, min(READ_SIZE, upto - self.position), self.position)
            if not data:
                raise FileChanged(f"file is shorter than {upto} bytes")
            if drop:
                drop_cached(fd, self.position, len(data))
            self.feed(self.position, data)

    def digest(self) -> str:
        """The digest as ``checksums.tag`` writes it (an MD5's as plain hex)."""
        if self._queue is not None:
            self._queue.join()
        return checksums.tag(self.algorithm, self._hasher.hexdigest())

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class FileSlice:
    """A read-only stream over ``fd[offset:offset + size]``, for one try of one part.

    It has a ``len`` attribute (what is left), so requests-toolbelt's encoder sends an
    exact Content-Length without a ``fileno`` that would give the whole file's size.
    Reading checks ``stop`` so a shutdown aborts a part mid-flight, and a file that got
    shorter raises ``FileChanged`` instead of sending a short body.
    """

    def __init__(self, fd: int, offset: int, size: int, *, hasher: PrefixHash | None = None,
                 stop: StopFlag | None = None, on_read: Callable[[int], None] | None = None,
                 drop: bool = False):
        self._fd = fd
        self._start = offset
        self._pos = offset
        self._drop = drop
        self._dropped = offset  # with drop: the page cache is dropped up to here
        self._end = offset + size
        self._hasher = hasher
        self._stop = stop
        self._on_read = on_read

    @property
    def len(self) -> int:
        return self._end - self._pos

    def read(self, size: int = -1) -> bytes:
        if self._stop is not None and self._stop.is_set():
            raise Interrupted()
        left = self._end - self._pos
        if size is None or size < 0 or size > left:
            size = left
        if size == 0:
            return b""
        data = os.pread(self._fd, size, self._pos)
        if len(data) < size:
            raise FileChanged(f"file got shorter while reading at byte {self._pos + len(data)}")
        if self._hasher is not None:
            self._hasher.feed(self._pos, data)
        self._pos += len(data)
        if self._drop and (self._pos - self._dropped >= DROP_BEHIND or self._pos == self._end):
            drop_cached(self._fd, self._dropped, self._pos - self._dropped)
            self._dropped = self._pos
        if self._on_read is not None:
            self._on_read(len(data))
        return data


class SizedStream:
    """An iterable request body of known length: requests sends ``len`` as Content-Length
    and the source's bytes in STREAM_BLOCK blocks; at most ``len`` bytes are read."""

    def __init__(self, source: Any, length: int):
        self._source = source
        self.len = length

    def __iter__(self):
        left = self.len
        while left > 0:
            block = self._source.read(min(STREAM_BLOCK, left))
            if not block:
                return
            left -= len(block)
            yield block


def read_part(fd: int, offset: int, size: int, *, drop: bool = False) -> bytes:
    """``fd[offset:offset + size]`` in one read; FileChanged if the file is shorter."""
    data = os.pread(fd, size, offset)
    while len(data) < size:  # pread may return less for very large reads
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            raise FileChanged(f"file got shorter while reading at byte {offset + len(data)}")
        data += more
    if drop:
        drop_cached(fd, offset, size)
    return data


class MemoryBody(io.BytesIO):
    """A part already read (and hashed) into memory, sent from there: seekable, with a
    ``len`` of what is left, checking ``stop`` and reporting reads like ``FileSlice``."""

    def __init__(self, data: bytes, *, stop: StopFlag | None = None,
                 on_read: Callable[[int], None] | None = None):
        super().__init__(data)
        self._size = len(data)
        self._stop = stop
        self._on_read = on_read

    @property
    def len(self) -> int:
        return self._size - self.tell()

    def read(self, size: int | None = -1) -> bytes:
        if self._stop is not None and self._stop.is_set():
            raise Interrupted()
        data = super().read(size)
        if data and self._on_read is not None:
            self._on_read(len(data))
        return data
