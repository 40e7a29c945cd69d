"""The engine and ``syncd serve`` together: an upload whose first answer never came back is
found again by its upload key, so it leaves no orphan session and no second copy."""

from __future__ import annotations

import pytest

from syncd.config import RetryPolicy
from syncd.upload.base import FileChanged, TransientError
from tests.support.conformance import ReceiverTarget
from tests.support.engine import EngineRig
from tests.support.fault_proxy import FaultProxy, Match, Respond, Rule
from tests.support.files import md5_of, write_random
from tests.support.peers import ReceiverPeer

PART = 64 * 1024
SHORT = RetryPolicy(initial=0.01, max=0.02, budget=0.3, waiting_initial=0.5, waiting_max=2.0)


@pytest.fixture
def rig(tmp_path):
    peer = ReceiverPeer(tmp_path / "received")
    proxy = FaultProxy(peer.url, seed=3, rules=[]).start()
    rig = EngineRig(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size=PART, policy=SHORT)
    yield rig, proxy, peer
    rig.close()
    proxy.stop()
    peer.stop()


def _first_answers_lost(rig, proxy, path, name):
    """Every answer to the first part is lost: the server made the session, the journal only
    knows the upload's key."""
    proxy.set_rules([Rule(Respond(504, forward=True), match=Match(method="PUT", path=r"/chunked_upload/$"))])
    job = rig.job(path, name)
    with pytest.raises(TransientError):
        rig.engine.upload(job)
    upload = rig.journal.open_upload(job.file_id, target="t")
    assert upload.upload_key and upload.session is None
    proxy.set_rules([])
    return job


def test_a_session_whose_first_answer_was_lost_is_resumed_by_its_key(rig, tmp_path):
    rig, proxy, peer = rig
    path = write_random(tmp_path / "f.bin", 4 * PART + 9)
    job = _first_answers_lost(rig, proxy, path, "lost-first.bin")
    assert len(ReceiverTarget.open_records(peer.root, "lost-first.bin")) == 1
    sent: list[int] = []
    rig.engine.upload(job, on_read=sent.append)
    assert peer.stored_md5("lost-first.bin") == md5_of(path)
    assert peer.completions("lost-first.bin") == 1
    assert ReceiverTarget.open_records(peer.root) == []
    assert sum(sent) == 3 * PART + 9  # the first part, held by the server, was not sent again


def test_a_changed_file_aborts_the_session_known_only_by_its_key(rig, tmp_path):
    rig, proxy, peer = rig
    path = write_random(tmp_path / "f.bin", 4 * PART + 9)
    job = _first_answers_lost(rig, proxy, path, "lost-changed.bin")
    with path.open("ab") as f:
        f.write(b"more")
    with pytest.raises(FileChanged):
        rig.engine.upload(job)
    fresh = rig.job(path, "lost-changed.bin")
    rig.engine.upload(fresh)
    assert peer.stored_md5("lost-changed.bin") == md5_of(path)
    assert ReceiverTarget.open_records(peer.root) == []  # the first session was aborted by its key
