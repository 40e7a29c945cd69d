"""The same cases against every backend: the in-memory S3-like fake, the built-in receiver
and drf-chunked-upload (S3 and tus targets join through tests/conformance/conftest.py).

Each case drives the real engine and journal against the target's server and checks what
the server ended up holding, not what the client believes.
"""

from __future__ import annotations

import os

import pytest

from syncd.upload.base import AuthRejected, FileChanged, FileVanished, PermanentError, StorageFull, UploadItem
from tests.support.conformance import PART, unique_name
from tests.support.files import is_digest_of, md5_of, write_random

SIZES = [0, 1, PART - 1, PART, PART + 1, 3 * PART + 5]


def _upload_and_check(target, rig, path, name):
    remote, digest = rig.upload(path, name)
    assert is_digest_of(digest, path)
    assert target.stored_md5(name) == md5_of(path)
    assert target.completions(name) == 1
    assert target.open_sessions(name) == 0
    return remote


def _needs_resume(target):
    if target.cannot_resume:
        pytest.skip(target.cannot_resume)


def _assert_aborted(target, name):
    if target.can_abort:
        assert target.open_sessions(name) == 0
    else:  # the abort was asked for; the server keeps the session until it expires it
        assert target.abort_requests() >= 1


@pytest.mark.parametrize("size", SIZES)
def test_sizes_arrive_whole_once(target, tmp_path, size):
    if size == 0 and not target.accepts_empty:
        pytest.skip(f"{target.name} refuses empty files (tested in its own suite)")
    rig = target.rig(tmp_path)
    try:
        path = write_random(tmp_path / "f.bin", size)
        remote = _upload_and_check(target, rig, path, unique_name(tmp_path, f"size-{size}.bin"))
        assert remote.verified in ("md5", "sha256", "part-checksum", "read-back", "size")
    finally:
        rig.close()


def _interrupted(rig, tmp_path, name, *, parts_before_stop: int, total_parts: int = 6):
    """A file whose upload stopped after about ``parts_before_stop`` parts; its open journal row."""
    path = write_random(tmp_path / "big.bin", total_parts * PART + 11)
    job = rig.job(path, name)
    rig.interrupt_after(job, parts_before_stop * PART)
    upload = rig.journal.open_upload(job.file_id, target="t")
    assert upload is not None
    return path, job, upload


def _server_holds(rig, upload) -> int:
    """Bytes the server holds for an interrupted upload, as its own session listing says."""
    item = UploadItem(remote_name=upload.remote_name, size=upload.size, key=upload.upload_key or "",
                      part_size=upload.part_size)
    return sum(r.size for r in rig.backend.resume(item, upload.session).committed().values())


def test_resume_with_the_journal_behind_the_server(target, tmp_path):
    """Parts the server holds but the journal forgot (a crash before they were recorded)
    are kept under their own numbers, not sent again and never renumbered."""
    _needs_resume(target)
    rig = target.rig(tmp_path)
    try:
        name = unique_name(tmp_path, "behind.bin")
        path, job, upload = _interrupted(rig, tmp_path, name, parts_before_stop=3)
        assert rig.journal.get_upload(upload.id).offset >= 2 * PART
        held = _server_holds(rig, upload)  # the server's view (it may hold a part the stop cut off)
        rig.journal.forget_parts(upload.id, list(rig.journal.parts(upload.id)))
        sent: list[int] = []
        rig.engine.upload(job, on_read=sent.append)
        assert target.stored_md5(name) == md5_of(path)
        assert target.completions(name) == 1
        assert sum(sent) == os.path.getsize(path) - held  # what the server held was not sent again
    finally:
        rig.close()


def test_resume_with_the_journal_ahead_of_the_server(target, tmp_path):
    """The journal records parts the server does not hold (the server lost them): they are
    sent again; the server's view wins."""
    _needs_resume(target)
    rig = target.rig(tmp_path)
    try:
        name = unique_name(tmp_path, "ahead.bin")
        path, job, upload = _interrupted(rig, tmp_path, name, parts_before_stop=2)
        known = rig.journal.parts(upload.id)
        for number in range(max(known) + 1, max(known) + 3):  # two parts the server never got
            rig.journal.record_part(upload.id, number=number, offset=(number - 1) * PART, size=PART,
                                    etag="0" * 32)
        rig.engine.upload(job)
        assert target.stored_md5(name) == md5_of(path)
        assert target.completions(name) == 1
    finally:
        rig.close()


@pytest.mark.parametrize("lost_answer", [False, True], ids=["refused", "answer-lost"])
def test_a_failed_part_is_retried_alone(target, tmp_path, lost_answer):
    rig = target.rig(tmp_path)
    try:
        target.fail_part(2, lost_answer=lost_answer)
        path = write_random(tmp_path / "f.bin", 4 * PART + 3)
        _upload_and_check(target, rig, path, unique_name(tmp_path, "retry.bin"))
        assert len(rig.retries) >= 1
    finally:
        rig.close()


def test_lost_answer_to_the_completion(target, tmp_path):
    rig = target.rig(tmp_path)
    try:
        target.lose_completion_answer()
        path = write_random(tmp_path / "f.bin", 3 * PART + 1)
        _upload_and_check(target, rig, path, unique_name(tmp_path, "complete.bin"))
        assert len(rig.retries) >= 1
    finally:
        rig.close()


def test_session_gone_on_resume_starts_a_new_one(target, tmp_path):
    _needs_resume(target)
    rig = target.rig(tmp_path)
    try:
        name = unique_name(tmp_path, "gone.bin")
        path, job, upload = _interrupted(rig, tmp_path, name, parts_before_stop=2)
        target.lose_session()
        rig.engine.upload(job)
        assert target.stored_md5(name) == md5_of(path)
        assert target.completions(name) == 1
        assert rig.journal.get_upload(upload.id).state == "abandoned"
    finally:
        rig.close()


@pytest.mark.parametrize("change", ["append", "vanish"])
def test_a_file_that_changes_mid_upload_is_aborted_never_completed(target, tmp_path, change):
    rig = target.rig(tmp_path)
    try:
        name = unique_name(tmp_path, f"{change}.bin")
        path = write_random(tmp_path / "f.bin", 6 * PART)
        job = rig.job(path, name)
        read = 0

        def on_read(n: int) -> None:
            nonlocal read
            read += n
            if read >= 2 * PART and path.exists():
                if change == "append":
                    with path.open("ab") as f:
                        f.write(b"more")
                else:
                    path.unlink()

        with pytest.raises(FileChanged if change == "append" else FileVanished):
            rig.engine.upload(job, on_read=on_read)
        assert target.completions(name) == 0
        _assert_aborted(target, name)
        assert rig.journal.open_upload(job.file_id, target="t") is None
    finally:
        rig.close()


def test_authentication_rejected_fails_fast(target, tmp_path):
    rig = target.rig(tmp_path, wrong_token=True)
    try:
        path = write_random(tmp_path / "f.bin", 2 * PART + 1)
        with pytest.raises(AuthRejected, match="authentication rejected"):
            rig.upload(path, unique_name(tmp_path, "auth.bin"))
        assert rig.retries == []
    finally:
        rig.close()


def test_413_fails_fast_and_frees_the_session(target, tmp_path):
    rig = target.rig(tmp_path)
    try:
        name = unique_name(tmp_path, "large.bin")
        target.refuse_part(2, 413)
        path = write_random(tmp_path / "f.bin", 3 * PART + 1)
        with pytest.raises(PermanentError, match="413") as caught:
            rig.upload(path, name)
        assert not isinstance(caught.value, StorageFull)
        assert rig.retries == []
        _assert_aborted(target, name)
    finally:
        rig.close()


def test_507_fails_fast_keeps_the_session_and_resumes_later(target, tmp_path):
    """A full disk keeps what it received: the session stays, and a later attempt
    (``syncd retry``) sends only what the server lacks."""
    _needs_resume(target)
    rig = target.rig(tmp_path)
    try:
        name = unique_name(tmp_path, "full.bin")
        target.refuse_part(3, 507)
        path = write_random(tmp_path / "f.bin", 5 * PART + 1)
        job = rig.job(path, name)
        with pytest.raises(StorageFull, match="507"):
            rig.engine.upload(job)
        assert rig.retries == []
        upload = rig.journal.open_upload(job.file_id, target="t")
        assert upload is not None and upload.session is not None
        assert target.open_sessions(name) == 1
        # parts 1 and 2 on a serial protocol; with parts in parallel, the refusal stops the
        # parts in flight beside it (some may be cut, some done, some after part 3)
        held = upload.offset
        sent: list[int] = []
        rig.engine.upload(job, on_read=sent.append)
        assert target.stored_md5(name) == md5_of(path)
        assert sum(sent) == os.path.getsize(path) - held
    finally:
        rig.close()
