"""The chunked client sends parts after the first as raw bodies where the server says it
takes them (``Syncd-Raw-Parts: 1``: syncd serve) and as multipart everywhere else."""

from __future__ import annotations

import pytest

from tests.support.engine import EngineRig
from tests.support.files import md5_of, write_random
from tests.support.peers import ReceiverPeer

PART = 64 * 1024


def test_syncd_serve_gets_raw_parts(tmp_path):
    peer = ReceiverPeer(tmp_path / "received")
    rig = EngineRig(tmp_path, url=peer.url, token=peer.token, part_size=PART)
    try:
        path = write_random(tmp_path / "f.bin", 5 * PART + 3)
        assert rig.backend.raw_parts is False
        rig.upload(path, "raw.bin")
        assert rig.backend.raw_parts is True
        assert peer.stored_md5("raw.bin") == md5_of(path)
    finally:
        rig.close()
        peer.stop()


@pytest.mark.interop
def test_drf_keeps_getting_multipart(tmp_path, drf_server):
    rig = EngineRig(tmp_path, url=drf_server.url, token=drf_server.token, part_size=PART)
    try:
        path = write_random(tmp_path / "f.bin", 5 * PART + 3)
        name = f"multipart-{tmp_path.name}.bin"
        rig.upload(path, name)
        assert rig.backend.raw_parts is False
        assert drf_server.completed()[name] == md5_of(path)
    finally:
        rig.close()
