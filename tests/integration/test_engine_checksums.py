"""The whole-file checksum the client completes with: SHA-256 where the server verifies with
it (``Syncd-Checksum: sha256``: syncd serve), MD5 everywhere else, for small files sent
whole, and where the target says ``checksum: md5``; a resumed session keeps the one it was
made with."""

from __future__ import annotations

import socket

import pytest

from syncd.upload.base import UploadItem
from syncd.upload.chunked import ChunkedBackend
from tests.support.engine import EngineRig
from tests.support.files import digest_of, md5_of, write_random
from tests.support.peers import ReceiverPeer

PART = 64 * 1024


def chunked(url: str, token: str | None, *, checksum: str = "auto") -> ChunkedBackend:
    return ChunkedBackend("t", url=url, token=token, part_size=PART, connect_timeout=2, read_timeout=10,
                          checksum=checksum)


@pytest.fixture
def peer(tmp_path):
    peer = ReceiverPeer(tmp_path / "received")
    yield peer
    peer.stop()


def test_syncd_serve_verifies_a_file_in_parts_with_sha256(tmp_path, peer):
    rig = EngineRig(tmp_path, url=peer.url, token=peer.token, part_size=PART)
    try:
        path = write_random(tmp_path / "f.bin", 5 * PART + 3)
        remote, digest = rig.upload(path, "big.bin")
        assert digest == f"sha256:{digest_of(path, 'sha256')}"
        assert remote.verified == "sha256" and remote.md5 == digest
        assert peer.stored_md5("big.bin") == md5_of(path)  # stored byte for byte
        row = rig.journal.find_file("w", "big.bin")
        assert [u.md5 for u in rig.journal.completed_uploads([row.id], target="t")[row.id]] == [digest]
    finally:
        rig.close()


def test_a_small_file_sent_whole_keeps_md5(tmp_path, peer):
    rig = EngineRig(tmp_path, url=peer.url, token=peer.token, part_size=PART)
    try:
        path = write_random(tmp_path / "small.bin", PART - 1)
        remote, digest = rig.upload(path)
        assert digest == md5_of(path) and remote.verified == "md5"
    finally:
        rig.close()


def test_checksum_md5_keeps_md5_with_syncd_serve(tmp_path, peer):
    rig = EngineRig(tmp_path, backend=chunked(peer.url, peer.token, checksum="md5"))
    try:
        path = write_random(tmp_path / "f.bin", 3 * PART)
        remote, digest = rig.upload(path)
        assert digest == md5_of(path) and remote.verified == "md5"
        assert peer.stored_md5("f.bin") == md5_of(path)
    finally:
        rig.close()


@pytest.mark.parametrize(("first", "then", "algorithm"), [("md5", "auto", "md5"), ("auto", "md5", "sha256")],
                         ids=["md5-session-resumed-by-auto", "sha256-session-resumed-by-md5"])
def test_a_resumed_session_completes_with_the_checksum_it_was_made_with(tmp_path, peer, first, then, algorithm):
    """An upload interrupted by a client of another setting (or an older syncd, which
    knew only MD5) goes on from the server's offset and completes as the session says."""
    path = write_random(tmp_path / "f.bin", 8 * PART)
    rig = EngineRig(tmp_path, backend=chunked(peer.url, peer.token, checksum=first))
    try:
        rig.interrupt_after(rig.job(path, "resumed.bin"), 3 * PART)
    finally:
        rig.close()
    rig = EngineRig(tmp_path, backend=chunked(peer.url, peer.token, checksum=then))
    sent = []
    try:
        job = rig.job(path, "resumed.bin")
        remote, digest = rig.engine.upload(job, on_read=sent.append)
        expected = md5_of(path) if algorithm == "md5" else f"sha256:{digest_of(path, 'sha256')}"
        assert digest == expected and remote.verified == algorithm
        assert sum(sent) <= 6 * PART  # went on from the server's offset
        assert peer.stored_md5("resumed.bin") == md5_of(path)
    finally:
        rig.close()


def test_a_server_out_of_reach_is_asked_again_at_the_next_plan(tmp_path):
    """The question (what does the server take?) is asked before the first session; a
    server out of reach gets MD5 for that file and is asked again for the next."""
    from syncd.server import EmbeddedReceiver, ReceiverSettings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = chunked(f"http://127.0.0.1:{port}/chunked_upload/", "t0ken")
    receiver = None
    try:
        caps = backend.plan(UploadItem("big.bin", 10 * PART))
        assert caps.checksum == "md5" and caps.verifies == "md5"
        receiver = EmbeddedReceiver(ReceiverSettings(root=tmp_path / "received", port=port, token="t0ken",
                                                     min_free=0))
        receiver.start()
        assert backend.plan(UploadItem("small.bin", PART)).checksum == "md5"  # sent whole: nothing asked
        caps = backend.plan(UploadItem("big.bin", 10 * PART))
        assert caps.checksum == "sha256" and caps.verifies == "sha256"
    finally:
        backend.close()
        if receiver is not None:
            receiver.stop()


@pytest.mark.interop
def test_drf_keeps_md5(tmp_path, drf_server):
    rig = EngineRig(tmp_path, url=drf_server.url, token=drf_server.token, part_size=PART)
    try:
        path = write_random(tmp_path / "f.bin", 5 * PART + 3)
        name = f"md5-{tmp_path.name}.bin"
        remote, digest = rig.upload(path, name)
        assert digest == md5_of(path) and remote.verified == "md5"
        assert rig.backend.sha256 is False
        assert drf_server.completed()[name] == md5_of(path)
    finally:
        rig.close()
