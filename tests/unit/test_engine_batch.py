"""``UploadEngine.upload_batch``: small files several to a request, each with the promises of
a single upload (its key journaled first, the bytes read are the bytes sent, checked
unchanged after the answer), and what a batch cannot settle sent again alone."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from syncd.config import RetryPolicy
from syncd.upload.base import (
    AuthRejected,
    ChecksumMismatch,
    FileChanged,
    FileVanished,
    Interrupted,
    PermanentError,
    RemoteFile,
    StorageFull,
    TransientError,
)
from syncd.upload.engine import UploadJob
from tests.support.engine import EngineRig
from tests.support.fake_backend import FakeBackend, FakeServer, FakeSettings, registered

KiB = 1024


@pytest.fixture
def fake(tmp_path):
    server = FakeServer("batch", single_request_max=64 * KiB)
    server.batch_files = 4
    with registered(server):
        rig = EngineRig(tmp_path, policy=RetryPolicy(initial=0.02, max=0.05, budget=0.4), backend=FakeBackend(
            "t", FakeSettings(protocol="fake", server="batch", part_size=64 * KiB)))
        yield server, rig
        rig.close()


def small_files(folder: Path, n: int, size: int = 3000, *, prefix: str = "f") -> list[Path]:
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i:02}.bin"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def jobs_for(rig: EngineRig, paths: list[Path]) -> list[UploadJob]:
    return [rig.job(p, p.name) for p in paths]


def upload_states(rig: EngineRig, job: UploadJob) -> list[tuple[str, str | None]]:
    rows = rig.journal._db.execute("SELECT state, upload_key FROM uploads WHERE file_id = ? ORDER BY id",
                                   (job.file_id,)).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_small_files_go_several_to_a_request_each_verified(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 10)
    jobs = jobs_for(rig, paths)
    keys_before_request = []
    server.before_batch = lambda: keys_before_request.append(
        sorted(r[0] for r in rig.journal._db.execute("SELECT upload_key FROM uploads WHERE state = 'open'")))
    results = rig.engine.upload_batch(jobs)
    assert [len(b) for b in server.batches] == [4, 4, 2]
    assert server.whole_keys == []
    for path, (remote, md5) in zip(paths, results, strict=True):
        assert md5 == hashlib.md5(path.read_bytes()).hexdigest()
        assert server.objects[path.name] == path.read_bytes()
        assert remote.verified == "part-checksum"
    # every file's key was journaled (and committed) before the request that carried it
    sent = [sorted(key for _, key in batch) for batch in server.batches]
    assert [set(s) <= set(k) for s, k in zip(sent, keys_before_request, strict=True)] == [True] * 3
    for job in jobs:
        states = upload_states(rig, job)
        assert len(states) == 1 and states[0][0] == "completed" and states[0][1]


def test_a_failed_batch_request_is_tried_again_as_a_batch_with_backoff(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 3)
    server.fail("batch", TransientError("HTTP 503", reason="server"), times=2)
    results = rig.engine.upload_batch(jobs_for(rig, paths))
    assert all(isinstance(r, tuple) for r in results)
    assert len(server.batches) == 3 and server.batches[0] == server.batches[1] == server.batches[2]  # same keys
    assert server.whole_keys == [] and rig.retries == ["server", "server"]
    assert all(server.completions[p.name] == 1 for p in paths)


def test_a_batch_out_of_retries_leaves_each_file_waiting_for_its_next_attempt(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 3)
    server.fail("batch", TransientError("HTTP 503", reason="server"), times=1000)
    jobs = jobs_for(rig, paths)
    results = rig.engine.upload_batch(jobs)
    assert all(isinstance(r, TransientError) for r in results)  # the file goes `waiting`, not `failed`
    assert server.whole_keys == [] and 2 <= len(server.batches) < 40
    assert all([s for s, _ in upload_states(rig, job)] == ["abandoned"] for job in jobs)


def test_a_batch_refused_as_a_whole_goes_on_file_by_file_under_the_same_keys(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 3)
    server.fail("batch", PermanentError("too large for the server (HTTP 413): proxy body limit"))
    results = rig.engine.upload_batch(jobs_for(rig, paths))
    assert all(isinstance(r, tuple) for r in results)
    assert [name for name, _ in server.whole_keys] == [p.name for p in paths]
    assert [key for _, key in server.whole_keys] == [key for _, key in server.batches[0]]  # no new upload
    assert all(server.completions[p.name] == 1 for p in paths)


@pytest.mark.parametrize("error", [StorageFull("server storage is full (HTTP 507)"),
                                   AuthRejected("authentication rejected (HTTP 401)")])
def test_a_full_disk_or_a_refused_token_ends_every_file_of_the_batch_at_once(fake, tmp_path, error):
    server, rig = fake
    paths = small_files(tmp_path / "in", 3)
    server.fail("batch", error)
    results = rig.engine.upload_batch(jobs_for(rig, paths))
    assert all(r is error for r in results)
    assert len(server.batches) == 1 and server.whole_keys == []  # no request more


def test_each_files_own_answer_decides_its_fate(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 4)
    server.file_errors = {
        "f00.bin": [TransientError("HTTP 500: busy", reason="server")],  # sent again alone
        "f01.bin": [PermanentError("HTTP 409: exists")],
        "f02.bin": [ChecksumMismatch("checksum does not match")],
    }
    jobs = jobs_for(rig, paths)
    results = rig.engine.upload_batch(jobs)
    assert isinstance(results[0], tuple) and server.whole_keys == [("f00.bin", server.batches[0][0][1])]
    assert isinstance(results[1], PermanentError)
    assert isinstance(results[2], ChecksumMismatch)
    assert isinstance(results[3], tuple)
    assert [s for s, _ in upload_states(rig, jobs[1])] == ["abandoned"]
    assert [s for s, _ in upload_states(rig, jobs[0])] == ["completed"]


def test_a_file_changed_while_its_batch_was_sent_is_not_completed(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 3)
    jobs = jobs_for(rig, paths)
    server.before_batch = lambda: paths[1].write_bytes(os.urandom(3000))  # same size, new bytes
    results = rig.engine.upload_batch(jobs)
    assert isinstance(results[1], FileChanged)
    assert [s for s, _ in upload_states(rig, jobs[1])] == ["abandoned"]
    assert isinstance(results[0], tuple) and isinstance(results[2], tuple)


def test_a_vanished_file_and_a_completed_one_send_nothing(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 3)
    jobs = jobs_for(rig, paths)
    first = rig.engine.upload_batch(jobs[:1])  # done before a crash cut the file's work short
    assert isinstance(first[0], tuple)
    paths[1].unlink()
    results = rig.engine.upload_batch(jobs)
    assert results[0] == first[0]
    assert isinstance(results[1], FileVanished)
    assert [[name for name, _ in b] for b in server.batches] == [["f00.bin"], ["f02.bin"]]


def test_larger_files_and_a_stop_go_the_single_way(fake, tmp_path):
    server, rig = fake
    paths = small_files(tmp_path / "in", 2) + small_files(tmp_path / "big", 1, size=100 * KiB, prefix="big")
    results = rig.engine.upload_batch(jobs_for(rig, paths))
    assert [name for name, _ in server.batches[0]] == ["f00.bin", "f01.bin"]
    assert isinstance(results[2], tuple) and server.objects["f00.bin"] == paths[0].read_bytes()
    assert server.objects[paths[2].name] == paths[2].read_bytes()  # in parts
    more = small_files(tmp_path / "more", 2, prefix="g")
    rig.stop.set()
    results = rig.engine.upload_batch(jobs_for(rig, more))
    assert all(isinstance(r, Interrupted) for r in results)
    assert len(server.batches) == 1 and not any(isinstance(r, RemoteFile) for r in results)


def test_no_batches_while_a_bandwidth_limit_is_in_force(fake):
    """A batch would go as one burst: one file per request under a limit, overall or on the
    target, for the daemon and ``syncd upload`` alike (both ask the engine)."""
    from syncd.bandwidth import BandwidthLimiter, TimetableEntry
    from syncd.upload.base import NO_BATCH

    _server, rig = fake
    assert rig.engine.batch_limit("t").files == 4
    every_day = (TimetableEntry(at="00:00", limit=64 * 1024 * KiB),)
    for limiter in (BandwidthLimiter(targets={"t": every_day}), BandwidthLimiter(overall=every_day)):
        rig.engine.limiter = limiter
        assert rig.engine.batch_limit("t") == NO_BATCH
    rig.engine.limiter = BandwidthLimiter(targets={"other": every_day})
    assert rig.engine.batch_limit("t").files == 4
