from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from syncd.server.writer import ALIGN, BATCH_BYTES, PWritev, ReadChunk, TooMuchData, stream_to_file


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


def chunks_of(data: bytes, size: int) -> ReadChunk:
    pieces = [data[i : i + size] for i in range(0, len(data), size)]

    async def read() -> bytes:
        await asyncio.sleep(0)
        return pieces.pop(0) if pieces else b""

    return read


def write_into(
    path: Path,
    data: bytes,
    executor: concurrent.futures.Executor,
    *,
    size: int = 65536,
    offset: int = 0,
    limit: int | None = None,
    pwritev: PWritev = os.pwritev,
    direct: bool = False,
) -> tuple[int, Any]:
    hasher = hashlib.md5()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        received = asyncio.run(
            stream_to_file(
                chunks_of(data, size),
                fd,
                offset=offset,
                hasher=hasher,
                limit=limit,
                executor=executor,
                pwritev=pwritev,
                direct=direct,
            )
        )
    finally:
        os.close(fd)
    return received, hasher


@pytest.mark.parametrize("direct", [False, True], ids=["page-cache", "direct"])
@pytest.mark.parametrize("size", [1, 1000, 65536, BATCH_BYTES + 7])
def test_writes_and_hashes_every_byte_in_order(
    tmp_path: Path, executor: concurrent.futures.Executor, size: int, direct: bool
) -> None:
    data = os.urandom(3 * BATCH_BYTES + 123) if size > 1 else os.urandom(5000)
    received, hasher = write_into(tmp_path / "f", data, executor, size=size, direct=direct)
    assert received == len(data)
    assert (tmp_path / "f").read_bytes() == data
    assert hasher.hexdigest() == hashlib.md5(data).hexdigest()


def test_writes_at_the_offset(tmp_path: Path, executor: concurrent.futures.Executor) -> None:
    (tmp_path / "f").write_bytes(b"head")
    write_into(tmp_path / "f", b"tail", executor, offset=4)
    assert (tmp_path / "f").read_bytes() == b"headtail"


def test_an_empty_body_writes_nothing(tmp_path: Path, executor: concurrent.futures.Executor) -> None:
    received, hasher = write_into(tmp_path / "f", b"", executor)
    assert received == 0 and hasher.hexdigest() == hashlib.md5(b"").hexdigest()


def test_more_than_the_limit_stops_without_writing_past_it(
    tmp_path: Path, executor: concurrent.futures.Executor
) -> None:
    data = os.urandom(4 * BATCH_BYTES)
    with pytest.raises(TooMuchData):
        write_into(tmp_path / "f", data, executor, limit=2 * BATCH_BYTES)
    assert (tmp_path / "f").stat().st_size <= 2 * BATCH_BYTES


def test_short_writes_are_continued(tmp_path: Path, executor: concurrent.futures.Executor) -> None:
    def stingy(fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        first = bytes(buffers[0][:1000])  # at most 1000 bytes per call
        return os.pwrite(fd, first, pos)

    data = os.urandom(BATCH_BYTES + 4321)
    received, _ = write_into(tmp_path / "f", data, executor, pwritev=stingy)
    assert (tmp_path / "f").read_bytes() == data and received == len(data)


def test_a_full_disk_is_raised_as_it_is(tmp_path: Path, executor: concurrent.futures.Executor) -> None:
    calls = []

    def full(fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        calls.append(pos)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.pwritev(fd, buffers, pos)

    with pytest.raises(OSError) as info:
        write_into(tmp_path / "f", os.urandom(3 * BATCH_BYTES), executor, pwritev=full)
    assert info.value.errno == errno.ENOSPC


def test_writeback_is_started_for_exactly_what_each_batch_wrote(
    tmp_path: Path, executor: concurrent.futures.Executor
) -> None:
    started: list[tuple[int, int]] = []
    data = os.urandom(3 * BATCH_BYTES + 123)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        asyncio.run(
            stream_to_file(
                chunks_of(data, 65536),
                fd,
                offset=10,
                hasher=hashlib.md5(),
                limit=None,
                executor=executor,
                pwritev=os.pwritev,
                start_writeback=lambda f, offset, length: started.append((offset, length)),
            )
        )
    finally:
        os.close(fd)
    assert len(started) >= 3
    assert [offset for offset, _ in started] == [10 + sum(n for _, n in started[:i]) for i in range(len(started))]
    assert sum(n for _, n in started) == len(data)


def test_start_writeback_is_harmless_on_any_file(tmp_path: Path) -> None:
    from syncd.server.safefs import start_writeback

    path = tmp_path / "f"
    path.write_bytes(b"x" * 10000)
    fd = os.open(path, os.O_WRONLY)
    try:
        start_writeback(fd, 0, 10000)
        start_writeback(fd, 5000, 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10000


# --- O_DIRECT ------------------------------------------------------------------------------

O_DIRECT = getattr(os, "O_DIRECT", 0)
needs_direct = pytest.mark.skipif(not O_DIRECT, reason="no O_DIRECT here")


class Recorder:
    """os.pwritev, noting each call's offset, length and whether O_DIRECT was on."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, bool]] = []

    def __call__(self, fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT)
        self.calls.append((pos, sum(len(b) for b in buffers), direct))
        return os.pwritev(fd, buffers, pos)


@pytest.fixture
def direct_fs(tmp_path: Path) -> Path:
    """``tmp_path``, where its file system takes O_DIRECT writes (else the test is skipped)."""
    import mmap

    probe = tmp_path / "probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | O_DIRECT)
    try:
        with mmap.mmap(-1, ALIGN) as block:
            os.pwritev(fd, [block], 0)
    except OSError:
        pytest.skip("this file system refuses O_DIRECT")
    finally:
        os.close(fd)
        probe.unlink()
    return tmp_path


@needs_direct
def test_whole_blocks_go_around_the_page_cache_and_the_tail_through_it(
    direct_fs: Path, executor: concurrent.futures.Executor
) -> None:
    tmp_path = direct_fs
    (tmp_path / "f").write_bytes(b"h" * ALIGN)
    data = os.urandom(3 * BATCH_BYTES + 123)
    rec = Recorder()
    received, hasher = write_into(tmp_path / "f", data, executor, offset=ALIGN, pwritev=rec, direct=True)
    assert (tmp_path / "f").read_bytes() == b"h" * ALIGN + data
    assert received == len(data) and hasher.hexdigest() == hashlib.md5(data).hexdigest()
    *blocks, tail = rec.calls
    assert all(direct and pos % ALIGN == 0 and length % ALIGN == 0 for pos, length, direct in blocks)
    assert tail == (ALIGN + len(data) - len(data) % ALIGN, len(data) % ALIGN, False)
    starts = [pos for pos, _, _ in rec.calls]
    assert starts == [ALIGN + sum(n for _, n, _ in rec.calls[:i]) for i in range(len(rec.calls))]


@needs_direct
def test_an_unaligned_offset_writes_through_the_page_cache(
    tmp_path: Path, executor: concurrent.futures.Executor
) -> None:
    (tmp_path / "f").write_bytes(b"head")
    data = os.urandom(2 * BATCH_BYTES)
    rec = Recorder()
    write_into(tmp_path / "f", data, executor, offset=4, pwritev=rec, direct=True)
    assert (tmp_path / "f").read_bytes() == b"head" + data
    assert not any(direct for _, _, direct in rec.calls)


@needs_direct
def test_a_refused_direct_write_is_made_through_the_page_cache(
    tmp_path: Path, executor: concurrent.futures.Executor
) -> None:
    """As on a file system without O_DIRECT: EINVAL, then no more tries."""
    rec = Recorder()

    def refusing(fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & O_DIRECT:
            rec.calls.append((pos, -1, True))
            raise OSError(errno.EINVAL, "Invalid argument")
        return rec(fd, buffers, pos)

    data = os.urandom(3 * BATCH_BYTES + 5)
    received, hasher = write_into(tmp_path / "f", data, executor, pwritev=refusing, direct=True)
    assert (tmp_path / "f").read_bytes() == data and received == len(data)
    assert hasher.hexdigest() == hashlib.md5(data).hexdigest()
    assert [direct for _, _, direct in rec.calls].count(True) == 1


@needs_direct
def test_a_short_direct_write_is_finished_through_the_page_cache(
    direct_fs: Path, executor: concurrent.futures.Executor
) -> None:
    tmp_path = direct_fs
    rec = Recorder()

    def short_once(fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        if not rec.calls:  # the first direct write does one block only
            rec.calls.append((pos, ALIGN, True))
            return os.pwritev(fd, [buffers[0][:ALIGN]], pos)
        return rec(fd, buffers, pos)

    data = os.urandom(2 * BATCH_BYTES + 77)
    write_into(tmp_path / "f", data, executor, pwritev=short_once, direct=True)
    assert (tmp_path / "f").read_bytes() == data
    assert not any(direct for _, _, direct in rec.calls[1:])


@needs_direct
def test_a_full_disk_during_direct_writes_is_raised_as_it_is(
    tmp_path: Path, executor: concurrent.futures.Executor
) -> None:
    def full(fd: int, buffers: Sequence[bytes | memoryview], pos: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        write_into(tmp_path / "f", os.urandom(3 * BATCH_BYTES), executor, pwritev=full, direct=True)
    assert info.value.errno == errno.ENOSPC
