"""The chunked backend's side of batches: what it learns from a server's answers, and what
each entry of a batch's answer means for its file (the error a request of that file alone
would have raised)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.upload.base import (
    NO_BATCH,
    AuthRejected,
    BatchLimit,
    ChecksumMismatch,
    PermanentError,
    RemoteFile,
    StorageFull,
    TransientError,
    UploadItem,
    WholeFile,
)
from syncd.upload.chunked import BATCH_FILE_MAX, ChunkedBackend, _batch_result

ITEM = WholeFile(UploadItem("dir/a.bin", 3), b"abc", "900150983cd24fb0d6963f7d28e17f72")


@pytest.fixture
def backend():
    b = ChunkedBackend("main", url="http://127.0.0.1:9/chunked_upload/", token=None, part_size=1024**2, batch=16)
    yield b
    b.close()


def test_batches_only_once_the_server_says_how_many_it_takes(backend):
    assert backend.batch_limit() == NO_BATCH
    backend._learn({"Syncd-Batch": "64"})
    # the target's own limit is lower; a request carries no more than a part
    assert backend.batch_limit() == BatchLimit(16, BATCH_FILE_MAX, 1024**2)
    backend._learn({"Syncd-Batch": "4"})
    assert backend.batch_limit().files == 4
    backend._learn({})  # an answer without it (a server downgraded behind the same URL): one by one
    assert backend.batch_limit() == NO_BATCH
    backend._learn({"Syncd-Batch": "lots"})
    assert backend.batch_limit() == NO_BATCH


def test_a_batch_of_one_is_no_batch(backend):
    backend._learn({"Syncd-Batch": "1"})
    assert backend.batch_limit() == NO_BATCH


def test_a_stored_entry_is_the_remote_file_checked_against_its_md5():
    ok = _batch_result({"http_status": 200, "md5": ITEM.md5_hex, "size": 3, "path": "dir/a.bin", "url": "u"}, ITEM)
    assert ok == RemoteFile(name="dir/a.bin", size=3, md5=ITEM.md5_hex, location="u")
    other = _batch_result({"http_status": 200, "md5": "0" * 32, "size": 3, "path": "dir/a.bin"}, ITEM)
    assert isinstance(other, ChecksumMismatch)


@pytest.mark.parametrize(("status", "detail", "kind"), [
    (400, "checksum does not match", ChecksumMismatch),
    (400, "Invalid filename: ..", PermanentError),
    (401, "no", AuthRejected),
    (409, "'a.bin' already exists", PermanentError),
    (413, "Size of file exceeds the limit", PermanentError),
    (507, "Insufficient storage", StorageFull),
    (500, "boom", TransientError),
    (503, "draining", TransientError),
])
def test_a_failed_entry_is_the_error_its_file_alone_would_get(status, detail, kind):
    result = _batch_result({"http_status": status, "detail": detail, "filename": "dir/a.bin"}, ITEM)
    assert type(result) is kind or (kind is PermanentError and isinstance(result, PermanentError))
    assert detail.split()[0] in str(result) or kind is AuthRejected


@given(st.one_of(st.none(), st.text(max_size=5), st.integers(-5, 1000), st.floats(allow_nan=True),
                 st.just(float("inf"))))
def test_an_entry_with_a_status_that_means_nothing_is_retried_not_trusted(status):
    entry = {"http_status": status, "md5": ITEM.md5_hex, "size": 3}
    result = _batch_result(entry, ITEM)
    try:
        code = int(status)
    except (TypeError, ValueError, OverflowError):
        code = 0
    if code == 200:
        assert isinstance(result, RemoteFile)
    elif 400 <= code < 600:
        assert isinstance(result, Exception)
    else:
        assert isinstance(result, TransientError) and result.reason == "protocol"


@given(st.lists(st.integers(0, 300), max_size=80), st.integers(2, 10), st.integers(300, 2000))
def test_a_batch_is_split_into_requests_of_at_most_its_files_and_bytes(sizes, files, request_max):
    runs = BatchLimit(files, 300, request_max).split(sizes)
    assert [i for run in runs for i in run] == list(range(len(sizes)))
    for run in runs:
        assert 1 <= len(run) <= files
        assert sum(sizes[i] for i in run) <= request_max
    for a, b in zip(runs, runs[1:]):  # a run ends only when the next file would not fit
        assert len(a) == files or sum(sizes[i] for i in a) + sizes[b.start] > request_max
