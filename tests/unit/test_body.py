import hashlib
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.upload import body as body_module
from syncd.upload.base import FileChanged, Interrupted
from syncd.upload.body import DROP_BEHIND, FileSlice, PrefixHash, read_part


@pytest.fixture(scope="module")
def data_fd(tmp_path_factory):
    data = os.urandom(300_000)
    path = tmp_path_factory.mktemp("body") / "f.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield data, fd, path
    os.close(fd)


def test_slice_reads_exactly_its_range(data_fd):
    data, fd, _ = data_fd
    body = FileSlice(fd, 1000, 5000)
    assert body.len == 5000
    out = body.read(1234) + body.read()
    assert out == data[1000:6000]
    assert body.len == 0 and body.read() == b""


def test_retried_parts_are_hashed_once(data_fd):
    data, fd, _ = data_fd
    md5 = PrefixHash()
    for offset, size in [(0, 100_000), (100_000, 100_000), (100_000, 100_000), (200_000, 100_000)]:
        FileSlice(fd, offset, size, hasher=md5).read()
    assert md5.position == len(data)
    assert md5.digest() == hashlib.md5(data).hexdigest()


def test_resume_hashes_prefix_then_streams(data_fd):
    data, fd, _ = data_fd
    md5 = PrefixHash()
    md5.catch_up(fd, 123_457)
    FileSlice(fd, 123_457, len(data) - 123_457, hasher=md5).read()
    assert md5.digest() == hashlib.md5(data).hexdigest()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 299_999), st.integers(1, 50_000)), max_size=20), st.booleans(),
       st.sampled_from(["md5", "sha256"]))
def test_any_read_order_gives_the_file_digest(data_fd, reads, background, algorithm):
    """Hashed inline or on a thread of its own (big files), the digest is the file's, an
    MD5 as plain hex and a SHA-256 tagged with its name."""
    data, fd, _ = data_fd
    md5 = PrefixHash(algorithm, background=background)
    try:
        for offset, size in reads:
            size = min(size, len(data) - offset)
            FileSlice(fd, offset, size, hasher=md5).read(7_000)  # small blocks: the queue fills up
        md5.catch_up(fd, len(data))
        expected = hashlib.new(algorithm, data).hexdigest()
        assert md5.digest() == (expected if algorithm == "md5" else f"sha256:{expected}")
    finally:
        md5.close()


def test_truncated_file_raises_file_changed(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(os.urandom(300_000))
    fd = os.open(path, os.O_RDONLY)
    body = FileSlice(fd, 200_000, 100_000)
    os.truncate(path, 250_000)
    try:
        with pytest.raises(FileChanged):
            body.read()
    finally:
        os.close(fd)
    return
    with pytest.raises(FileChanged):
        body.read()


def test_stop_interrupts_reading(data_fd):
    _, fd, _ = data_fd
    stop = threading.Event()
    body = FileSlice(fd, 0, 1000, stop=stop)
    body.read(10)
    stop.set()
    with pytest.raises(Interrupted):
        body.read(10)


@pytest.fixture
def fadvised(monkeypatch):
    """The (offset, length) of every POSIX_FADV_DONTNEED the body module asks for."""
    calls = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        if advice == os.POSIX_FADV_DONTNEED:
            calls.append((offset, length))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(body_module.os, "posix_fadvise", record)
    return calls


def covered(calls):
    """The calls as one contiguous range, or None if they leave a gap or overlap."""
    calls = sorted(calls)
    for (a, n), (b, _) in zip(calls, calls[1:]):
        if a + n != b:
            return None
    return (calls[0][0], sum(n for _, n in calls)) if calls else (0, 0)


def test_a_part_drops_what_it_read_behind_it_and_all_of_it_at_its_end(tmp_path, fadvised):
    size = 3 * DROP_BEHIND + 12_345
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(size + 100))
    fd = os.open(path, os.O_RDONLY)
    try:
        body = FileSlice(fd, 100, size, drop=True)
        while body.read(256 * 1024):
            assert not fadvised or covered(fadvised)[0] == 100
            assert sum(n for _, n in fadvised) <= size - body.len  # only what was read
        assert covered(fadvised) == (100, size)
        assert len(fadvised) == 4  # every DROP_BEHIND, then the rest
    finally:
        os.close(fd)


def test_without_drop_nothing_is_dropped(data_fd, fadvised):
    data, fd, _ = data_fd
    FileSlice(fd, 0, len(data)).read()
    read_part(fd, 0, len(data))
    PrefixHash().catch_up(fd, len(data))
    assert fadvised == []


def test_a_part_read_whole_and_a_caught_up_prefix_are_dropped(data_fd, fadvised):
    data, fd, _ = data_fd
    assert read_part(fd, 1000, 5000, drop=True) == data[1000:6000]
    assert fadvised == [(1000, 5000)]
    fadvised.clear()
    PrefixHash().catch_up(fd, len(data), drop=True)
    assert covered(fadvised) == (0, len(data))
