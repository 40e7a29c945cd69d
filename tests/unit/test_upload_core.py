"""The upload core's pieces: part plans, the protocol registry, the outcome map, the state
table, and the engine against the in-memory S3-like fake (parallel parts, ETags)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.config import ConfigError, build_config
from syncd.journal import Journal, JournalError
from syncd.outcomes import verdict_for
from syncd.states import ALLOWED_FROM, FileState
from syncd.transcode import TranscodeCancelled, UnsupportedFormatError
from syncd.upload.base import (
    AuthRejected,
    Capabilities,
    ChecksumMismatch,
    FileChanged,
    FileVanished,
    Interrupted,
    PermanentError,
    StorageFull,
    TransientError,
    plan_parts,
)
from syncd.upload.registry import build_backends, names
from tests.support.engine import EngineRig
from tests.support.fake_backend import FakeBackend, FakeServer, FakeSettings, registered
from tests.support.files import md5_of, write_random

KiB, MiB, GiB = 1024, 1024**2, 1024**3
S3_LIMITS = dict(min_part=5 * MiB, max_part=5 * GiB, max_parts=10_000)


# --- part plans -------------------------------------------------------------------------

@given(size=st.integers(0, 50 * 1024 * GiB), part=st.integers(64 * KiB, 5 * GiB),
       max_parts=st.integers(1, 10_000), min_part=st.integers(1, 5 * MiB))
def test_a_plan_covers_the_file_within_the_protocols_limits(size, part, max_parts, min_part):
    caps = Capabilities(part_size=part, min_part=min_part, max_part=5 * GiB, max_parts=max_parts)
    try:
        plan = plan_parts(size, caps)
    except PermanentError:
        assert size > 5 * GiB * max_parts
        return
    assert plan.count <= max_parts
    assert min(part, 5 * GiB) <= plan.part_size <= 5 * GiB or plan.part_size >= min_part
    first_offset, _ = plan.bounds(1)
    last_offset, last_size = plan.bounds(plan.count)
    assert first_offset == 0 and last_offset + last_size == size
    assert 0 <= last_size <= plan.part_size


def test_a_200_gib_file_to_s3_gets_parts_big_enough_for_10000():
    plan = plan_parts(200 * GiB, Capabilities(part_size=8 * MiB, **S3_LIMITS))
    assert plan.count <= 10_000 and plan.part_size % MiB == 0
    assert plan.part_size == 21 * MiB  # 200 GiB / 10,000 = 20.48 MiB, rounded up to whole MiB
    assert plan_parts(1, Capabilities(part_size=MiB, **S3_LIMITS)).part_size == 5 * MiB


# --- registry and config -------------------------------------------------------------------

def _config(tmp_path, target: dict):
    (tmp_path / "drop").mkdir(exist_ok=True)
    return build_config({"journal": "j/journal.db", "staging_dir": "staging", "targets": {"main": target},
                         "watches": [{"name": "w", "path": "drop", "target": "main"}]},
                        base=tmp_path, name="config.yaml")


def test_a_protocol_registered_from_outside_the_engine_is_configured_and_built(tmp_path):
    server = FakeServer("outside")
    with registered(server):
        assert "fake" in names()
        config = _config(tmp_path, {"protocol": "fake", "server": "outside", "part_size": "64KiB"})
        assert isinstance(config.targets["main"], FakeSettings)
        backend = build_backends(config.targets)["main"]
        assert isinstance(backend, FakeBackend)
        rig = EngineRig(tmp_path, backend=backend)
        try:
            path = write_random(tmp_path / "f.bin", 5 * 64 * KiB + 3)
            rig.upload(path, "f.bin")
        finally:
            rig.close()
        assert hashlib.md5(server.objects["f.bin"]).hexdigest() == md5_of(path)
    assert "fake" not in names()


def test_each_protocol_validates_its_own_keys_with_one_line_errors(tmp_path):
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {"protocol": "carrier-pigeon", "url": "http://127.0.0.1/"})
    assert caught.value.lines == ["config.yaml: targets.main.protocol: 'carrier-pigeon' is not a protocol "
                                  f"(known: {', '.join(names())})"]
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {"protocol": "chunked", "url": "http://127.0.0.1/", "bucket": "b"})
    assert caught.value.lines == ["config.yaml: targets.main.bucket: unknown key"]
    with pytest.raises(ConfigError) as caught:
        _config(tmp_path, {"url": "ftp://x"})
    assert caught.value.lines == ["config.yaml: targets.main.url: 'ftp://x' is not an http:// or https:// URL"]


# --- the outcome map --------------------------------------------------------------------------

@pytest.mark.parametrize(("exc", "state", "retried"), [
    (Interrupted(), FileState.READY, True),
    (TranscodeCancelled("stop"), FileState.READY, True),
    (FileVanished("w:a: file vanished"), FileState.GONE, False),
    (FileChanged("w:a: file changed during upload"), FileState.SETTLING, True),
    (PermanentError("too large for the server (HTTP 413): no"), FileState.FAILED, False),
    (StorageFull("server storage is full (HTTP 507): full"), FileState.FAILED, False),
    (AuthRejected("authentication rejected (HTTP 401)"), FileState.FAILED, False),
    (UnsupportedFormatError("not a video"), FileState.FAILED, False),
    (PermissionError(13, "Permission denied"), FileState.FAILED, False),
    (ChecksumMismatch("checksum does not match"), FileState.WAITING, True),
    (TransientError("HTTP 503: busy", reason="server"), FileState.WAITING, True),
    (ConnectionResetError(104, "reset"), FileState.WAITING, True),
    (RuntimeError("a bug"), FileState.FAILED, False),
])
def test_every_exception_has_one_meaning(exc, state, retried):
    verdict = verdict_for(exc, label="w:a")
    assert (verdict.state, verdict.retried) == (state, retried)
    assert "\n" not in verdict.reason and verdict.reason
    assert not verdict.reason.startswith("w:a:")


def test_a_journal_error_is_not_a_files_failure():
    with pytest.raises(JournalError):
        verdict_for(JournalError("disk full"))


def oneshot_upload(journal, engine, target, path) -> bool:
    """What ``syncd upload`` does with one file on its own: True if it is uploaded."""
    from syncd.oneshot import _prepare, _upload_alone

    prepared = _prepare(journal, target, path, "")
    return prepared if isinstance(prepared, bool) else _upload_alone(journal, engine, path, *prepared)


def test_syncd_upload_maps_a_checksum_mismatch_like_the_daemon(tmp_path, capsys):
    """It used to escape as a traceback and leave the row `uploading`."""
    from syncd.oneshot import ONESHOT_WATCH

    server = FakeServer("oneshot")
    with registered(server):
        backend = FakeBackend("t", FakeSettings(protocol="fake", server="oneshot", part_size=64 * KiB))
        rig = EngineRig(tmp_path, backend=backend)
        try:
            server.fail("complete", ChecksumMismatch("checksum does not match"))
            path = write_random(tmp_path / "f.bin", 3 * 64 * KiB)
            assert oneshot_upload(rig.journal, rig.engine, "t", path) is False
            row = rig.journal.find_file(ONESHOT_WATCH, str(path.resolve()))
            assert row.state == verdict_for(ChecksumMismatch("x")).state == FileState.WAITING
            assert "checksum does not match (run again to resume)" in capsys.readouterr().err
            assert oneshot_upload(rig.journal, rig.engine, "t", path) is True
            assert rig.journal.find_file(ONESHOT_WATCH, str(path.resolve())).state == FileState.DONE
        finally:
            rig.close()


# --- the state table ----------------------------------------------------------------------------

def test_the_journal_refuses_a_transition_the_table_forbids(tmp_path):
    journal = Journal(tmp_path / "j.db")
    try:
        row = journal.mark_settled("w", "a", __import__("syncd.journal").journal.Fingerprint(1, 2, 3, 4))
        assert row.state == FileState.READY
        assert FileState.READY not in ALLOWED_FROM[FileState.DONE]
        assert journal.set_state(row.id, FileState.DONE) is False  # done only from uploading
        with pytest.raises(ValueError, match="cannot go from ready to done"):
            journal.set_state(row.id, FileState.DONE, only_from=("ready",))
        assert journal.set_state(row.id, FileState.UPLOADING)
        assert journal.set_state(row.id, FileState.DONE)
        assert journal.get_file(row.id).state == FileState.DONE
    finally:
        journal.close()


# --- the engine against the S3-like fake ---------------------------------------------------------

@pytest.fixture
def fake(tmp_path):
    server = FakeServer("engine", min_part=64 * KiB)
    with registered(server):
        rig = EngineRig(tmp_path, backend=FakeBackend(
            "t", FakeSettings(protocol="fake", server="engine", part_size=64 * KiB, concurrency=3)))
        yield server, rig
        rig.close()


def test_parts_go_in_parallel_and_arrive_in_order(fake, tmp_path):
    server, rig = fake
    server.part_latency = 0.02  # an in-memory part is otherwise stored before the next is read
    path = write_random(tmp_path / "f.bin", 24 * 64 * KiB + 5)
    remote, md5 = rig.upload(path, "f.bin")
    assert md5 == md5_of(path) == hashlib.md5(server.objects["f.bin"]).hexdigest()
    assert remote.verified == "part-checksum"
    assert server.max_in_flight > 1


def test_a_held_part_with_other_bytes_is_sent_again_under_its_own_number(fake, tmp_path):
    """The corruption the old engine allowed: a server holding more than the journal says
    got later parts under earlier numbers. Now held parts are checked, never renumbered."""
    server, rig = fake
    path = write_random(tmp_path / "f.bin", 8 * 64 * KiB)
    job = rig.job(path, "f.bin")
    rig.interrupt_after(job, 4 * 64 * KiB)
    upload = rig.journal.open_upload(job.file_id, target="t")
    handle = upload.session
    held = sorted(server.uploads[handle].parts)
    assert len(held) >= 2
    rig.journal.forget_parts(upload.id, list(rig.journal.parts(upload.id)))  # the journal is behind
    server.uploads[handle].parts[held[0]] = b"\0" * (64 * KiB)  # and one held part is wrong
    server.part_requests.clear()
    rig.engine.upload(job)
    assert hashlib.md5(server.objects["f.bin"]).hexdigest() == md5_of(path)
    assert held[0] in server.part_requests  # the wrong one was sent again, as itself
    assert not set(held[1:]) & set(server.part_requests)  # the right ones were not
    assert sorted(server.part_requests) == sorted(set(server.part_requests))  # each at most once


@pytest.mark.parametrize("exc", [
    PermanentError("too large for the server (HTTP 413): no"),
    StorageFull("server storage is full (HTTP 507): full"),
    AuthRejected("authentication rejected (HTTP 401)"),
    ChecksumMismatch("checksum does not match"),
    TransientError("HTTP 503: busy", reason="server"),
    ConnectionResetError(104, "reset"),
    RuntimeError("a bug"),
], ids=lambda e: type(e).__name__)
def test_syncd_run_and_syncd_upload_give_a_failure_the_same_meaning(tmp_path, exc, capsys):
    """The daemon's pipeline and the one-shot command both go through syncd.outcomes."""
    import threading

    from syncd.oneshot import ONESHOT_WATCH
    from syncd.pipeline import FileProcessor
    from syncd.sources import SourcePlanner
    from syncd.upload.engine import UploadEngine
    from tests.support.engine import FAST_RETRY

    server = FakeServer("same-meaning")
    with registered(server):
        config = _config(tmp_path, {"protocol": "fake", "server": "same-meaning", "part_size": "64KiB",
                                    "retry": {"budget": "50ms", "initial": "10ms", "max": "10ms"}})
        journal = Journal(tmp_path / "j.db")
        stop = threading.Event()
        backends = build_backends(config.targets)
        engine = UploadEngine(journal, backends, {"main": FAST_RETRY.model_copy(update={"budget": 0.05})}, stop=stop)
        processor = FileProcessor(journal, engine, config, stop=stop,
                                  planner=SourcePlanner(tmp_path / "staging", transcodes=1, nice=10, stop=stop))
        try:
            path = write_random(tmp_path / "drop" / "f.bin", 3 * 64 * KiB)
            row = journal.mark_settled("w", "f.bin", __import__("syncd.journal").journal.Fingerprint.of(path.stat()))
            expected = verdict_for(exc)
            server.fail("create", exc, times=1000)  # every try, of both commands
            outcome = processor.process(row.id)
            assert outcome.state == journal.get_file(row.id).state == expected.state
            assert oneshot_upload(journal, engine, "main", path) is False
            oneshot = journal.find_file(ONESHOT_WATCH, str(path.resolve()))
            # a one-shot row is never settled by a watcher: it stays ready for the next run
            want = expected.state if expected.state in (FileState.FAILED, FileState.WAITING) else FileState.READY
            assert oneshot.state == want
            assert expected.reason in capsys.readouterr().err
        finally:
            for backend in backends.values():
                backend.close()
            journal.close()


@pytest.mark.parametrize(("verifies", "md5", "journaled", "expected"), [
    ("size", "0" * 32, "read-back", "read-back"),  # the target read the copy back
    ("size", "0" * 32, None, "size"),  # journaled before syncd kept it: what the server verifies
    ("sha256", "sha256:" + "0" * 64, None, "sha256"),  # ... or the algorithm of the journaled digest
    ("md5", "0" * 32, "md5", "md5"),
])
def test_a_file_completed_before_a_crash_reports_what_verified_it(verifies, md5, journaled, expected):
    from syncd.journal import Fingerprint, UploadRow
    from syncd.upload.base import Capabilities
    from syncd.upload.engine import _verified

    done = UploadRow(1, 1, "t", "/w/a", "a", 10, Fingerprint(1, 2, 10, 3), 10, None, 10, "completed", 0.0, 0.0,
                     md5=md5, verified=journaled)
    assert _verified(Capabilities(part_size=10, verifies=verifies), done) == expected
