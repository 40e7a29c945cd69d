"""Streaming a part of a file from disk, hashing the whole file in the same single read.

``PrefixMD5`` hashes the file's bytes in order and remembers how far it got, so a part
that is sent twice (a retry rewinds its body) is hashed once, and a resumed upload
hashes the already-sent prefix once before going on.
"""

from __future__ import annotations

import hashlib
import os
import threading

from syncd.upload.base import FileChanged, Interrupted

READ_SIZE = 1024 * 1024


class PrefixMD5:
    """MD5 of ``file[0:position]``; grows only by contiguous bytes."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5()
        self.position = 0

    def feed(self, offset: int, data: bytes | memoryview) -> None:
        """Bytes read at ``offset``; only the part past ``position`` counts."""
        end = offset + len(data)
        if offset <= self.position < end:
            self._md5.update(data[self.position - offset:])
            self.position = end

    def catch_up(self, fd: int, upto: int, *, stop: threading.Event | None = None) -> None:
        """Read and hash ``[position, upto)`` (the prefix a resumed upload does not resend)."""
        while self.position < upto:
            if stop is not None and stop.is_set():
                raise Interrupted()
            data = os.pread(fd, min(READ_SIZE, upto - self.position), self.position)
            if not data:
                raise FileChanged(f"file is shorter than {upto} bytes")
            self.feed(self.position, data)

    def hexdigest(self) -> str:
        return self._md5.hexdigest()


class FileSlice:
    """A read-only stream over ``fd[offset:offset + size]``, for one try of one part.

    It has a ``len`` attribute (what is left), so requests-toolbelt's encoder sends an
    exact Content-Length without a ``fileno`` that would give the whole file's size.
    Reading checks ``stop`` so a shutdown aborts a part mid-flight, and a file that got
    shorter raises ``FileChanged`` instead of sending a short body.
    """

    def __init__(self, fd: int, offset: int, size: int, *, md5: PrefixMD5 | None = None,
                 stop: threading.Event | None = None, on_read=None):
        self._fd = fd
        self._start = offset
        self._pos = offset
        self._end = offset + size
        self._md5 = md5
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
        if self._md5 is not None:
            self._md5.feed(self._pos, data)
        self._pos += len(data)
        if self._on_read is not None:
            self._on_read(len(data))
        return data
