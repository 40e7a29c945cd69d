"""The tus target against a real @tus/server (file store) on 127.0.0.1: what the
conformance suite does not cover. The checksum extension, which neither @tus/server nor
tusd offers, is exercised through tests/support/tus_checksum_proxy.py, a proxy that stands
in for a server offering it (and that can damage a body on its way)."""

from __future__ import annotations

import time

import pytest
import yaml

from syncd.upload.base import ChecksumMismatch, Part, PermanentError, SessionGone, UploadItem
from syncd.upload.body import MemoryBody
from syncd.upload.tus import TusBackend
from tests.support.daemon import DaemonProcess, make_config, wait_until
from tests.support.engine import EngineRig
from tests.support.failures import syncd_status
from tests.support.fault_proxy import FaultProxy
from tests.support.files import md5_of, write_random
from tests.support.tus import TusServer, new_token
from tests.support.tus_checksum_proxy import TusChecksumProxy

PART = 64 * 1024


@pytest.fixture
def server(tmp_path):
    made = TusServer.start_in(tmp_path / "tus", token=new_token())
    yield made
    made.stop()


def backend_for(url: str, server: TusServer, *, verify: str = "server", **kw) -> TusBackend:
    return TusBackend("t", url=url, part_size=PART, headers={"Authorization": f"Bearer {server.token}"},
                      verify=verify, connect_timeout=2, read_timeout=10, **kw)


@pytest.fixture
def checksum_proxy(server, request):
    options = getattr(request, "param", {})
    proxy = TusChecksumProxy(server.url, **options).start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("checksum_proxy, algorithm", [
    ({"algorithms": ("md5", "sha1")}, "md5"),
    ({"algorithms": ("crc32", "sha1")}, "sha1"),
    ({"algorithms": ("sha256",)}, "sha256"),
], indirect=["checksum_proxy"], ids=["md5", "sha1", "sha256"])
def test_checksum_extension_checks_every_patch(server, checksum_proxy, tmp_path, algorithm):
    rig = EngineRig(tmp_path, backend=backend_for(checksum_proxy.url, server))
    try:
        small = write_random(tmp_path / "small.bin", 1000)  # created first, then one PATCH
        big = write_random(tmp_path / "big.bin", 3 * PART + 7)
        for path in (small, big):
            remote, md5 = rig.upload(path, path.name)
            assert md5 == md5_of(path) == server.stored_md5(path.name)
            assert remote.verified == "part-checksum"
        assert len(checksum_proxy.log.checksums) == 5  # one PATCH for the small file, four for the big one
        assert all(c is not None and c.startswith(f"{algorithm} ") for c in checksum_proxy.log.checksums)
        assert checksum_proxy.log.mismatches == 0
    finally:
        rig.close()


def test_a_460_sends_that_patch_again(server, checksum_proxy, tmp_path):
    rig = EngineRig(tmp_path, backend=backend_for(checksum_proxy.url, server))
    try:
        checksum_proxy.corrupt(1)  # the first body is damaged on the way: the server answers 460
        path = write_random(tmp_path / "f.bin", 4 * PART + 1)
        remote, md5 = rig.upload(path, "f.bin")
        assert checksum_proxy.log.mismatches == 1
        assert rig.retries == ["checksum"]
        assert server.stored_md5("f.bin") == md5 == md5_of(path)
        assert len(server.finished("f.bin")) == 1 and remote.verified == "part-checksum"
    finally:
        rig.close()


@pytest.mark.parametrize("checksum_proxy", [{"offer_checksum": False}], indirect=True)
def test_read_back_catches_a_corrupted_upload_that_the_server_took(server, checksum_proxy, tmp_path):
    path = write_random(tmp_path / "f.bin", 3 * PART + 5)
    # verify: server takes the damaged copy: the server checks only the byte count
    trusting = EngineRig(tmp_path / "a", backend=backend_for(checksum_proxy.url, server))
    try:
        checksum_proxy.corrupt(1)
        remote, md5 = trusting.upload(path, "trusted.bin")
        assert remote.verified == "size"
        assert server.stored_md5("trusted.bin") not in (None, md5)
    finally:
        trusting.close()

    rig = EngineRig(tmp_path / "b", backend=backend_for(checksum_proxy.url, server, verify="read_back"))
    try:
        checksum_proxy.corrupt(1)
        job = rig.job(path, "checked.bin")
        with pytest.raises(ChecksumMismatch, match="read back"):
            rig.engine.upload(job)
        assert server.uploads() and not [u for u in server.uploads() if u.filename == "checked.bin"]  # deleted
        assert rig.journal.open_upload(job.file_id, target="t") is None
        remote, md5 = rig.engine.upload(job)  # the next attempt: a new upload, whole
        assert (remote.verified, remote.md5) == ("read-back", md5_of(path))
        assert server.stored_md5("checked.bin") == md5 and len(server.finished("checked.bin")) == 1
        # found completed in the journal (as after a crash before the file was marked done):
        # still what verified it, not the target's static "size"
        again, again_md5 = rig.engine.upload(job)
        assert (again.verified, again.md5, again_md5) == ("read-back", md5, md5)
        assert len(server.finished("checked.bin")) == 1
    finally:
        rig.close()


def test_a_file_over_tus_max_size_fails_before_sending(tmp_path):
    server = TusServer.start_in(tmp_path / "tus", token=new_token(), max_size=2 * PART)
    try:
        with FaultProxy(server.url) as proxy:
            rig = EngineRig(tmp_path, backend=backend_for(proxy.url_for(server.url), server))
            try:
                path = write_random(tmp_path / "f.bin", 2 * PART + 1)
                with pytest.raises(PermanentError, match="Tus-Max-Size"):
                    rig.upload(path, "f.bin")
                assert [s.method for s in proxy.seen] == ["OPTIONS"]
                ok = write_random(tmp_path / "ok.bin", 2 * PART)
                rig.upload(ok, "ok.bin")
                assert server.stored_md5("ok.bin") == md5_of(ok)
            finally:
                rig.close()
    finally:
        server.stop()


def test_an_upload_past_its_expiry_starts_anew(tmp_path):
    """The server expires uploads (410 on HEAD after Upload-Expires); a session that knows its
    Upload-Expires has passed sends nothing more."""
    server = TusServer.start_in(tmp_path / "tus", token=new_token(), expire_ms=1500)
    now = [time.time()]
    rig = EngineRig(tmp_path, backend=backend_for(server.url, server, clock=lambda: now[0]))
    try:
        path = write_random(tmp_path / "f.bin", 6 * PART + 1)
        job = rig.job(path, "f.bin")
        created = time.time()
        rig.interrupt_after(job, 2 * PART)
        first = rig.journal.open_upload(job.file_id, target="t")
        wait_until(lambda: time.time() > created + 2.0, timeout=10, what="the upload's expiry")
        remote, md5 = rig.engine.upload(job)
        assert rig.journal.get_upload(first.id).state == "abandoned"
        assert server.stored_md5("f.bin") == md5 == md5_of(path)

        session = rig.backend.create(UploadItem(remote_name="g.bin", size=10, part_size=PART))
        now[0] += 3600  # past the Upload-Expires the server sent with the creation
        with pytest.raises(SessionGone, match="expired"):
            session.send_part(Part(number=1, offset=0, size=10, body=MemoryBody(b"0123456789")))
    finally:
        rig.close()
        server.stop()


def _tus_config(base, url: str, token: str, *, verify: str, after_upload: str = "delete") -> None:
    config = make_config(base, url=url, token=token, part_size="64KiB", watches=[
        {"name": "drop", "path": str(base / "drop"), "target": "main", "after_upload": after_upload,
         "settle": {"quiet": "0.3s", "max_wait": "30s"}}])
    data = yaml.safe_load(config.read_text())
    data["targets"]["main"].update(protocol="tus", verify=verify)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


@pytest.mark.parametrize("checksum_proxy", [{"offer_checksum": False}], indirect=True)
def test_daemon_never_deletes_on_a_bad_copy_and_uploads_again(server, checksum_proxy, tmp_path):
    config = _tus_config(tmp_path, checksum_proxy.url, server.token, verify="read_back")
    checksum_proxy.corrupt(None)  # every body is damaged until the link is repaired
    local = write_random(tmp_path / "drop" / "clip.mov", 3 * PART + 9)
    md5 = md5_of(local)
    with DaemonProcess(config) as daemon:
        row = wait_until(lambda: (r := daemon.rows().get("drop:clip.mov")) and r["state"] == "waiting"
                         and r["attempts"] >= 2 and r, timeout=30, what="two failed read-backs")
        assert "read back" in row["last_error"]
        assert local.exists() and md5_of(local) == md5
        assert server.stored_md5("clip.mov") is None  # every bad copy was deleted on the server
        checksum_proxy.corrupt(0)
        wait_until(lambda: daemon.states().get("drop:clip.mov") == "done", timeout=30, what="done")
        wait_until(lambda: not local.exists(), timeout=10, what="the local file deleted")
    assert server.stored_md5("clip.mov") == md5 and len(server.finished("clip.mov")) == 1
    status = syncd_status(config, as_json=True)
    assert status["verified"] == {"read-back": 1}
    assert status["done"][0]["verified"] == "read-back"



def test_a_part_the_server_holds_in_part_is_finished_from_its_offset(server, tmp_path):
    """The server holds the start of a part (a PATCH cut short, on servers that keep what
    arrived): HEAD tells the offset and only the rest of that part is sent."""
    import requests

    with FaultProxy(server.url) as proxy:
        rig = EngineRig(tmp_path, backend=backend_for(proxy.url_for(server.url), server))
        try:
            path = write_random(tmp_path / "f.bin", 4 * PART + 1)
            job = rig.job(path, "f.bin")
            rig.interrupt_after(job, 2 * PART)
            upload = rig.journal.open_upload(job.file_id, target="t")
            start = rig.journal.get_upload(upload.id).offset  # whole parts the server acknowledged
            with open(path, "rb") as f:
                f.seek(start)
                piece = f.read(10_000)
            resp = requests.patch(upload.session, data=piece, timeout=10, headers={
                "Tus-Resumable": "1.0.0", "Upload-Offset": str(start),
                "Content-Type": "application/offset+octet-stream", "Authorization": f"Bearer {server.token}"})
            assert resp.status_code == 204, resp.text
            before = len(proxy.seen)
            remote, md5 = rig.engine.upload(job)
            patches = [(s.upload_offset, s.content_length) for s in proxy.seen[before:] if s.method == "PATCH"]
        finally:
            rig.close()
    assert server.stored_md5("f.bin") == md5 == md5_of(path)
    assert patches[0] == (start + 10_000, PART - 10_000), patches
