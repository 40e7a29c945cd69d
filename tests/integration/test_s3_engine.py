"""The upload engine with the ``s3`` protocol against real S3 servers, for what the shared
conformance suite does not cover: object metadata, ``on_conflict``, and answers lost at the
S3-specific moments (CreateMultipartUpload, PutObject)."""

from __future__ import annotations

import hashlib
import os

import pytest

from syncd.upload.base import PermanentError
from syncd.upload.s3 import format_mtime
from tests.support.conformance import PART, S3Target
from tests.support.fault_proxy import Match, Respond, Rule
from tests.support.files import md5_of, write_random

pytestmark = pytest.mark.s3

SMALL, LARGE = PART - 10, 3 * PART + 5
"""a file sent whole (PutObject) and one sent in parts"""


@pytest.fixture(params=["moto", "rclone"])
def s3(request):
    target = S3Target(request.getfixturevalue(f"{request.param}_s3"))
    yield target
    target.close()


def _rig(s3: S3Target, tmp_path, **keys):
    from syncd.upload.registry import build_backend
    from tests.support.engine import EngineRig

    return EngineRig(tmp_path, backend=build_backend("t", s3.settings(tmp_path, **keys)))


@pytest.mark.parametrize("size", [0, SMALL, LARGE])
def test_objects_carry_the_md5_and_mtime_as_metadata(s3, tmp_path, size):
    rig = _rig(s3, tmp_path)
    try:
        path = write_random(tmp_path / "f.bin", size)
        remote, md5 = rig.upload(path, "meta.bin")
        head = s3.server.head(s3.key("meta.bin"))
        meta = {k.lower(): v for k, v in head["Metadata"].items()}
        assert meta["mtime"] == format_mtime(os.stat(path).st_mtime_ns)
        etag = head["ETag"].strip('"')
        if size > SMALL and s3.name == "moto":  # AWS's "-N" ETag: the MD5 is added by a copy onto itself
            assert meta["md5"] == md5 and remote.verified == "part-checksum"
        elif size > SMALL:  # rclone's HEAD says the plain MD5: no copy needed
            assert etag == md5 and remote.verified == "md5"
        else:
            assert meta["md5"] == md5 and remote.verified == "md5"
        assert s3.completions("meta.bin") == 1
    finally:
        rig.close()


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_on_conflict_fail_never_overwrites_other_content(s3, tmp_path, size):
    key = s3.key("taken.bin")
    s3.server.client().put_object(Bucket="syncd-test", Key=key, Body=os.urandom(size))
    before = s3.server.stored_md5(key)
    rig = _rig(s3, tmp_path, on_conflict="fail")
    try:
        path = write_random(tmp_path / "f.bin", size)
        with pytest.raises(PermanentError, match="already exists with other content"):
            rig.upload(path, "taken.bin")
        assert s3.server.stored_md5(key) == before
        assert s3.open_sessions("taken.bin") == 0
        assert rig.retries == []
    finally:
        rig.close()


@pytest.mark.parametrize("on_conflict", ["fail", "skip_identical", "overwrite"])
@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_an_identical_object_counts_as_uploaded(s3, tmp_path, on_conflict, size):
    """The same bytes already under the key: ``fail`` and ``skip_identical`` write nothing;
    ``overwrite`` writes a small file again (one PutObject), but never completes a second
    multipart upload of the same bytes."""
    path = write_random(tmp_path / "f.bin", size)
    (tmp_path / "first").mkdir()
    first = _rig(s3, tmp_path / "first")  # another machine's journal, or a journal that was lost
    try:
        first.upload(path, "same.bin")
    finally:
        first.close()
    rig = _rig(s3, tmp_path, on_conflict=on_conflict)
    try:
        remote, md5 = rig.upload(path, "same.bin")
        assert md5 == md5_of(path) == s3.server.stored_md5(s3.key("same.bin"))
        writes = s3.completions("same.bin")
        assert writes == (2 if on_conflict == "overwrite" and size == SMALL else 1)
        assert s3.open_sessions("same.bin") == 0
    finally:
        rig.close()


def test_skip_identical_overwrites_other_content(s3, tmp_path):
    key = s3.key("other.bin")
    s3.server.client().put_object(Bucket="syncd-test", Key=key, Body=b"old")
    rig = _rig(s3, tmp_path, on_conflict="skip_identical")
    try:
        path = write_random(tmp_path / "f.bin", LARGE)
        rig.upload(path, "other.bin")
        assert s3.server.stored_md5(key) == md5_of(path)
    finally:
        rig.close()


def test_lost_answer_to_create_leaves_no_orphan_upload(s3, tmp_path):
    """CreateMultipartUpload made an upload but its answer was lost: the retry aborts the
    upload nobody knows before it makes the one it uses."""
    s3._add(Rule(Respond(504, forward=True), match=Match(method="POST", when=lambda i: i.query == "uploads"),
                 times=1))
    rig = _rig(s3, tmp_path)
    try:
        path = write_random(tmp_path / "f.bin", LARGE)
        rig.upload(path, "created.bin")
        assert s3.server.stored_md5(s3.key("created.bin")) == md5_of(path)
        assert rig.retries and s3.open_sessions("created.bin") == 0
    finally:
        rig.close()


def test_lost_answer_to_a_put_is_retried_and_the_object_is_whole(s3, tmp_path):
    s3._add(Rule(Respond(504, forward=True), match=Match(method="PUT", when=lambda i: i.query == ""), times=1))
    rig = _rig(s3, tmp_path)
    try:
        path = write_random(tmp_path / "f.bin", SMALL)
        rig.upload(path, "put.bin")
        assert s3.server.stored_md5(s3.key("put.bin")) == hashlib.md5(path.read_bytes()).hexdigest()
        assert rig.retries == ["server"]
    finally:
        rig.close()


@pytest.mark.parametrize("checksum", ["crc32", "sha256"])
def test_a_flexible_checksum_goes_with_every_part_and_survives_a_resume(s3, tmp_path, checksum):
    """Besides Content-MD5, each part and the upload carry the flexible checksum (none of the
    servers here verifies it: moto echoes it, rclone ignores it); a resumed upload completes."""
    rig = _rig(s3, tmp_path, checksum=checksum)
    try:
        path = write_random(tmp_path / "f.bin", 6 * PART + 1)
        job = rig.job(path, "flex.bin")
        rig.interrupt_after(job, 3 * PART)
        rig.engine.upload(job)
        assert s3.server.stored_md5(s3.key("flex.bin")) == md5_of(path)
        parts = [s for s in s3.proxy.seen if s.method == "PUT" and "partNumber=" in s.query]
        assert len(parts) >= 7
        assert all(f"x-amz-checksum-{checksum}" in s.headers and "content-md5" in s.headers for s in parts)
    finally:
        rig.close()


def test_a_bad_digest_on_rclone_ends_its_upload_and_a_new_one_completes(rclone_s3, tmp_path, monkeypatch):
    """rclone checks Content-MD5, and a BadDigest on a part drops the whole multipart
    upload (the part sent again gets NoSuchUpload): the file completes in a new upload."""
    from syncd.upload import s3 as s3_module

    real, wrong = s3_module._b64, []

    def one_wrong_digest(md5_hex: str) -> str:
        if not wrong:
            wrong.append(md5_hex)
            return real("0" * 32)
        return real(md5_hex)

    monkeypatch.setattr(s3_module, "_b64", one_wrong_digest)
    target = S3Target(rclone_s3)
    rig = _rig(target, tmp_path)
    try:
        path = write_random(tmp_path / "f.bin", LARGE)
        job = rig.job(path, "digest.bin")
        rig.engine.upload(job)
        assert wrong and "checksum" in rig.retries
        assert rclone_s3.stored_md5(target.key("digest.bin")) == md5_of(path)
        assert target.completions("digest.bin") == 1 and target.open_sessions("digest.bin") == 0
        states = [r.state for r in (rig.journal.get_upload(i) for i in (1, 2))]
        assert states == ["abandoned", "completed"], states
    finally:
        rig.close()
        target.close()
