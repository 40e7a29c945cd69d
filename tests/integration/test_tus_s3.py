"""tus -> object store, end to end: the daemon uploads to @tus/server with @tus/s3-store, whose
bucket is ``rclone serve s3`` over a local folder, with ``verify: read_back`` and
``after_upload: delete``."""

from __future__ import annotations

import yaml

from tests.support.daemon import DaemonProcess, make_config, wait_until
from tests.support.failures import syncd_status
from tests.support.files import md5_of, write_random
from tests.support.tus import TusServer, new_token
from tests.support.tus_s3 import RcloneS3

MiB = 1024 * 1024


def test_drop_to_tus_s3_store_read_back_then_delete(tmp_path):
    store = RcloneS3.start_in(tmp_path / "rclone")
    server = None
    try:
        server = TusServer.start_in(tmp_path / "tus", token=new_token(), s3=store.tus_options())
        config = make_config(tmp_path, url=server.url, token=server.token, part_size="1MiB", watches=[
            {"name": "drop", "path": str(tmp_path / "drop"), "target": "main", "after_upload": "delete",
             "settle": {"quiet": "0.3s", "max_wait": "30s"}}])
        data = yaml.safe_load(config.read_text())
        data["targets"]["main"].update(protocol="tus", verify="read_back")
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        files = {"note.txt": 1000, "clip.mp4": 6 * MiB + 3}  # one with its creation; one of 7 PATCHes, 2 S3 parts
        md5 = {}
        for name, size in files.items():
            md5[name] = md5_of(write_random(tmp_path / "drop" / name, size))
        with DaemonProcess(config) as daemon:
            daemon.wait_states({f"drop:{name}": "done" for name in files}, timeout=60)
            wait_until(lambda: not any((tmp_path / "drop" / name).exists() for name in files), timeout=10,
                       what="the local files deleted")
        for name in files:
            assert store.finished_md5s(name) == [md5[name]]
        assert syncd_status(config, as_json=True)["verified"] == {"read-back": 2}
    finally:
        if server is not None:
            server.stop()
        store.stop()


def test_read_back_catches_an_upload_the_store_lost_while_the_server_says_it_is_whole(tmp_path):
    """rclone keeps multipart uploads in memory: restarted mid-upload, it loses the S3 parts
    @tus/s3-store sent, yet the tus server's HEAD then reports every byte. ``verify: server``
    calls that done (by size) with nothing in the store; ``read_back`` catches it and the
    next attempt uploads the file again, whole."""
    from syncd.upload.base import ChecksumMismatch
    from syncd.upload.tus import TusBackend
    from tests.support.engine import EngineRig

    store = RcloneS3.start_in(tmp_path / "rclone")
    server = None
    try:
        server = TusServer.start_in(tmp_path / "tus", token=new_token(), s3=store.tus_options())
        outcomes = {}
        for verify in ("server", "read_back"):
            backend = TusBackend("t", url=server.url, part_size=MiB, verify=verify,
                                 headers={"Authorization": f"Bearer {server.token}"})
            rig = EngineRig(tmp_path / verify, backend=backend)
            try:
                path = write_random(tmp_path / verify / "f.bin", 7 * MiB + 5)
                job = rig.job(path, f"{verify}.bin")
                rig.interrupt_after(job, 6 * MiB)  # one 5 MiB S3 part sent, 1 MiB waiting as .part
                store.stop()
                store.start()
                try:
                    remote, _ = rig.engine.upload(job)
                    outcomes[verify] = (remote.verified, store.finished_md5s(f"{verify}.bin"))
                except ChecksumMismatch as exc:
                    assert "read back failed" in str(exc)
                    remote, md5 = rig.engine.upload(job)
                    assert md5 == md5_of(path)
                    outcomes[verify] = ("caught", remote.verified, store.finished_md5s(f"{verify}.bin") == [md5])
            finally:
                rig.close()
        assert outcomes == {"server": ("size", []), "read_back": ("caught", "read-back", True)}
    finally:
        if server is not None:
            server.stop()
        store.stop()
