import hashlib
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.upload.base import FileChanged, Interrupted
from syncd.upload.body import FileSlice, PrefixHash


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
