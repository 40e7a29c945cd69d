"""The upload engine and its chunked backend against the real drf-chunked-upload server."""

import pytest

from syncd.upload.base import PermanentError
from tests.support.engine import EngineRig
from tests.support.files import md5_of, write_random

pytestmark = pytest.mark.interop
PART = 64 * 1024


@pytest.fixture
def rig(tmp_path, drf_server):
    rig = EngineRig(tmp_path, url=drf_server.url, token=drf_server.token, part_size=PART)
    yield rig
    rig.close()


@pytest.mark.parametrize("size", [1, PART - 1, PART, PART + 1, 5 * PART + 123])
def test_sizes_arrive_with_matching_md5(rig, drf_server, tmp_path, size):
    path = write_random(tmp_path / f"size-{size}.bin", size)
    name = f"engine/size-{size}-{tmp_path.name}.bin"
    remote, md5 = rig.upload(path, name)
    assert md5 == md5_of(path)
    assert drf_server.completed()[name] == md5
    assert len(drf_server.completed_sessions(name)) == 1


def test_unicode_and_spaces_in_names(rig, drf_server, tmp_path):
    path = write_random(tmp_path / "x.bin", PART * 2 + 7)
    name = f"Überweisung März/scan 01 — ünïcode {tmp_path.name}.pdf"
    rig.upload(path, name)
    assert drf_server.completed()[name] == md5_of(path)


def test_empty_file_fails_after_one_request_with_the_servers_reason(rig, drf_server, tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    before = len(drf_server.sessions())
    with pytest.raises(PermanentError, match="The submitted file is empty."):
        rig.upload(path, f"empty-{tmp_path.name}.bin")
    assert rig.retries == []
    assert len(drf_server.sessions()) == before


def test_interrupted_upload_resumes_from_server_offset(rig, drf_server, tmp_path):
    path = write_random(tmp_path / "big.bin", PART * 8)
    name = f"resume-{tmp_path.name}.bin"
    job = rig.job(path, name)
    rig.interrupt_after(job, PART * 3)
    upload = rig.journal.open_upload(job.file_id, target="t")
    assert upload.session is not None and upload.offset >= PART * 2
    acked = upload.offset
    sent = []
    rig.engine.upload(job, on_read=sent.append)
    assert drf_server.completed()[name] == md5_of(path)
    # nothing the server had acknowledged was sent again
    assert sum(sent) == PART * 8 - acked


def test_part_the_server_already_has_is_realigned(rig, drf_server, tmp_path):
    """A lost answer: the journal is behind the server. The server's offset wins."""
    path = write_random(tmp_path / "f.bin", PART * 4)
    name = f"realign-{tmp_path.name}.bin"
    job = rig.job(path, name)
    rig.interrupt_after(job, PART * 2)
    upload = rig.journal.open_upload(job.file_id, target="t")
    rig.journal.forget_parts(upload.id, list(rig.journal.parts(upload.id)))  # forget what the server acknowledged
    rig.engine.upload(job)
    assert drf_server.completed()[name] == md5_of(path)


def test_wrong_token_is_authentication_rejected(drf_server, tmp_path):
    rig = EngineRig(tmp_path, url=drf_server.url, token="not-the-token", part_size=PART)
    try:
        path = write_random(tmp_path / "f.bin", 10)
        with pytest.raises(PermanentError, match=r"authentication rejected \(HTTP 401\)"):
            rig.upload(path)
        assert rig.retries == []
    finally:
        rig.close()
