"""Which checksum an upload completes with when the session says another than the plan's."""

from __future__ import annotations

import types

import pytest

from syncd.upload.base import ChecksumMismatch, UploadItem
from syncd.upload.body import PrefixHash
from syncd.upload.chunked import ChunkedBackend, ChunkedSession
from syncd.upload.engine import UploadEngine


def _up(session_checksum: str | None, hasher: PrefixHash):
    return types.SimpleNamespace(session=types.SimpleNamespace(checksum=session_checksum), hasher=hasher,
                                 item=UploadItem("f.bin", 10, checksum=hasher.algorithm))


def test_a_resumed_session_made_with_md5_is_hashed_with_md5():
    up = _up("md5", PrefixHash("sha256", background=True))
    old = up.hasher
    try:
        UploadEngine._hash_as_session(up)
        assert up.hasher.algorithm == "md5" and up.item.checksum == "md5"
        assert up.hasher.background and old._thread is None  # the old one's thread ended
    finally:
        up.hasher.close()


@pytest.mark.parametrize("said", [None, "sha256"])
def test_a_session_that_says_nothing_new_keeps_the_hasher(said):
    hasher = PrefixHash("sha256")
    up = _up(said, hasher)
    UploadEngine._hash_as_session(up)
    assert up.hasher is hasher


def test_another_checksum_after_bytes_were_hashed_is_a_mismatch_never_a_completion():
    hasher = PrefixHash("sha256")
    hasher.feed(0, b"abc")
    with pytest.raises(ChecksumMismatch, match="md5"):
        UploadEngine._hash_as_session(_up("md5", hasher))


def test_a_checksum_syncd_does_not_know_is_a_mismatch():
    with pytest.raises(ChecksumMismatch, match="crc7"):
        UploadEngine._hash_as_session(_up("crc7", PrefixHash("md5")))


def test_completing_with_another_algorithm_than_the_session_is_refused_before_any_request():
    backend = ChunkedBackend("t", url="http://127.0.0.1:9/chunked_upload/", token=None, part_size=1024)
    try:
        session = ChunkedSession(backend, UploadItem("f.bin", 10, checksum="sha256"), url=None)
        session.handle = "http://127.0.0.1:9/chunked_upload/x/"
        session.checksum = "md5"  # what the server's answer said
        with pytest.raises(ChecksumMismatch, match="verifies this upload with md5, not sha256"):
            session.complete([], "sha256:" + "0" * 64)
    finally:
        backend.close()
