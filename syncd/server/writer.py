"""Streams a request body to a file, hashing as it goes, without blocking the event loop.

Chunks read on the loop are gathered into batches of about 1 MiB; each batch is written
(``pwritev``) in one I/O thread and fed to the hash in another while the loop reads the
next one. At most one batch is being written and one gathered, so memory stays flat
whatever the part size.

The write and the hash of a batch run side by side because both release the GIL and
neither needs the other: a direct write mostly waits for the disk (0.56 ms per MiB here),
and hashing it after the write made the receiver's thread take the sum of both. A batch
smaller than ``SPLIT_BYTES`` (a small file's whole body) is hashed after its write in the
same thread: there a second handoff costs more than the hash.

With ``direct``, batches are written around the page cache (``DirectWrites``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import functools
import mmap
import os
from collections.abc import Awaitable, Callable, Sequence

BATCH_BYTES = 1024 * 1024
BATCH_BUFFERS = 256  # well under IOV_MAX (1024), even when a slow client sends crumbs
SPLIT_BYTES = 256 * 1024

ReadChunk = Callable[[], Awaitable[bytes]]
PWritev = Callable[[int, Sequence[bytes | memoryview], int], int]
StartWriteback = Callable[[int, int, int], None]


def _no_writeback(fd: int, offset: int, length: int) -> None:
    pass


class TooMuchData(Exception):
    """The body carried more than ``limit`` bytes; nothing past the limit was written."""

    def __init__(self, received: int) -> None:
        super().__init__(f"received at least {received} bytes")
        self.received = received


async def stream_to_file(
    read_chunk: ReadChunk,
    fd: int,
    *,
    offset: int,
    hasher: object,
    limit: int | None,
    executor: concurrent.futures.Executor,
    pwritev: PWritev,
    start_writeback: StartWriteback = _no_writeback,
    direct: bool = False,
) -> int:
    """Writes everything ``read_chunk`` yields at ``offset`` onwards; returns the byte count.

    When it returns, ``hasher`` (a hashlib object) has been updated with exactly the bytes
    written; after an error it holds some of them, and is the caller's to throw away. Write
    errors (ENOSPC...) are raised as they are; the caller decides what to keep. With
    ``direct`` (and ``offset`` on a block boundary), whole blocks go to disk with O_DIRECT.
    """
    pending: list[concurrent.futures.Future[None]] = []
    batch: list[bytes] = []
    batch_bytes = 0
    pos = offset
    received = 0
    writes = DirectWrites(fd, offset, pwritev) if direct and offset % ALIGN == 0 else None

    async def settle() -> None:
        """Waits for the batch in flight: its write and its hash (after an error, the
        ``finally`` below waits for the other)."""
        for future in pending:
            await asyncio.wrap_future(future)
        pending.clear()

    async def submit() -> None:
        nonlocal batch, batch_bytes, pos
        await settle()
        if writes is not None:
            write = functools.partial(writes.write, batch)
        else:
            write = functools.partial(_write_batch, pwritev, start_writeback, fd, batch, pos)
        if batch_bytes >= SPLIT_BYTES:
            pending.append(executor.submit(write))
            pending.append(executor.submit(_hash_batch, hasher, batch))
        else:
            pending.append(executor.submit(_write_then_hash, write, hasher, batch))
        pos += batch_bytes
        batch, batch_bytes = [], 0

    try:
        while chunk := await read_chunk():
            received += len(chunk)
            if limit is not None and received > limit:
                raise TooMuchData(received)
            batch.append(chunk)
            batch_bytes += len(chunk)
            if batch_bytes >= BATCH_BYTES or len(batch) >= BATCH_BUFFERS:
                await submit()
        if batch:
            await submit()
        await settle()
        if writes is not None:
            pending.append(executor.submit(writes.finish))
            await settle()
        return received
    finally:
        # On any way out, let the last write (and hash) finish before the caller truncates or closes.
        concurrent.futures.wait(pending)
        if writes is not None:
            writes.close()


def _write_batch(pwritev: PWritev, start_writeback: StartWriteback, fd: int, buffers: list[bytes], pos: int) -> None:
    written = write_all(pwritev, fd, buffers, pos)
    start_writeback(fd, pos, written)  # so the part's closing fsync finds little left to write


def _hash_batch(hasher: object, buffers: list[bytes]) -> None:
    for b in buffers:
        hasher.update(b)  # type: ignore[attr-defined]


def _write_then_hash(write: Callable[[], None], hasher: object, buffers: list[bytes]) -> None:
    write()
    _hash_batch(hasher, buffers)


def write_all(pwritev: PWritev, fd: int, buffers: Sequence[bytes], pos: int) -> int:
    """Writes ``buffers`` at ``pos`` onwards, however many calls a short write takes;
    returns the byte count."""
    start = pos
    views = [memoryview(b) for b in buffers]
    while views:
        written = pwritev(fd, views, pos)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        pos += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
    return pos - start


ALIGN = 4096
"""what O_DIRECT needs offsets, lengths and buffer addresses to be multiples of (a
device's logical block size; 4096 covers 512-byte and 4K-native disks)"""


class DirectWrites:
    """A body's batches written around the page cache: ``O_DIRECT`` from one page-aligned
    buffer that is reused, in whole blocks; what is left of a block waits in the buffer
    for the next batch, and the last few bytes go through the page cache at ``finish``.

    Why: a part is written once and fsynced at its end, never read again by the receiver.
    Through the page cache, each byte is also copied into a page the kernel must find
    first, then written back. Here one GiB cost 0.07 CPU-seconds to write and fsync, against
    0.2-2.2 through the page cache, where the spread was that of allocating the pages
    (this VM hands freed memory back to its host). The copy into the aligned buffer is
    one ``memcpy`` of warm memory.

    The first write that O_DIRECT refuses (a file system without it: EINVAL) or does
    only in part turns it off for the rest of the body; that write is made again through
    the page cache. Any other error is raised as it is.
    """

    def __init__(self, fd: int, offset: int, pwritev: PWritev) -> None:
        self._fd = fd
        self._pos = offset  # the file offset of the buffer's first byte
        self._held = 0  # bytes at the buffer's start, not yet written
        self._pwritev = pwritev
        self._buffer = mmap.mmap(-1, BATCH_BYTES + ALIGN)
        self.direct = _set_direct(fd, True)

    def write(self, buffers: Sequence[bytes]) -> None:
        """Writes every whole block of ``buffers`` and of what was held."""
        size = self._held + sum(len(b) for b in buffers)
        if size > len(self._buffer):
            self._grow(size)
        view = memoryview(self._buffer)
        try:
            end = self._held
            for b in buffers:
                view[end:end + len(b)] = b
                end += len(b)
            whole = end - end % ALIGN if self.direct else end
            if whole:
                self._write_out(view[:whole])
            self._buffer.move(0, whole, end - whole)
            self._pos += whole
            self._held = end - whole
        finally:
            view.release()

    def finish(self) -> None:
        """Writes what is held (less than a block) through the page cache."""
        if self._held:
            self._turn_off()
            view = memoryview(self._buffer)
            try:
                write_all(self._pwritev, self._fd, [view[:self._held]], self._pos)
            finally:
                view.release()
            self._pos += self._held
            self._held = 0

    def close(self) -> None:
        try:
            self._buffer.close()
        except BufferError:  # a failed write's traceback still holds a view: unmapped with it
            pass

    def _write_out(self, data: memoryview) -> None:
        written = 0
        if self.direct:
            try:
                written = self._pwritev(self._fd, [data], self._pos)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            if written == len(data):
                return
            self._turn_off()
        write_all(self._pwritev, self._fd, [data[written:]], self._pos + written)

    def _turn_off(self) -> None:
        if self.direct:
            _set_direct(self._fd, False)
            self.direct = False

    def _grow(self, size: int) -> None:
        bigger = mmap.mmap(-1, size + ALIGN - size % ALIGN)
        bigger[:self._held] = self._buffer[:self._held]
        self._buffer.close()
        self._buffer = bigger


def _set_direct(fd: int, on: bool) -> bool:
    """Turns O_DIRECT on or off for ``fd``; False where the system has no such flag or the
    file system refuses it."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | flag if on else flags & ~flag)
    except OSError:
        return False
    return on
