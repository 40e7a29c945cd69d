"""Streams a request body to a file, hashing as it goes, without blocking the event loop.

Chunks read on the loop are gathered into batches of about 1 MiB; each batch is written
(``pwritev``) and fed to the MD5 in an I/O thread while the loop reads the next one. At
most one batch is being written and one gathered, so memory stays flat whatever the
part size.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
from collections.abc import Awaitable, Callable, Sequence

BATCH_BYTES = 1024 * 1024
BATCH_BUFFERS = 256  # well under IOV_MAX (1024), even when a slow client sends crumbs

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
) -> int:
    """Writes everything ``read_chunk`` yields at ``offset`` onwards; returns the byte count.

    ``hasher`` (a hashlib object) is updated with exactly the bytes written. Write errors
    (ENOSPC...) are raised as they are; the caller decides what to keep.
    """
    pending: concurrent.futures.Future[None] | None = None
    batch: list[bytes] = []
    batch_bytes = 0
    pos = offset
    received = 0

    async def submit() -> None:
        nonlocal pending, batch, batch_bytes, pos
        if pending is not None:
            await asyncio.wrap_future(pending)
        pending = executor.submit(_write_batch, pwritev, start_writeback, fd, batch, pos, hasher)
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
        if pending is not None:
            await asyncio.wrap_future(pending)
        return received
    finally:
        # On any way out, let the last write finish before the caller truncates or closes.
        if pending is not None and not pending.done():
            concurrent.futures.wait([pending])


def _write_batch(
    pwritev: PWritev, start_writeback: StartWriteback, fd: int, buffers: list[bytes], pos: int, hasher: object
) -> None:
    written = write_all(pwritev, fd, buffers, pos)
    start_writeback(fd, pos, written)  # so the part's closing fsync finds little left to write
    for b in buffers:
        hasher.update(b)  # type: ignore[attr-defined]


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
