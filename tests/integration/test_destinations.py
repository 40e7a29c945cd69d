"""Issue 13, item 1: "done" means done to this target under this name. A watch moved to
another target or remote_dir uploads its files again; an unchanged one does not."""

from __future__ import annotations

import yaml

from tests.support.daemon import DaemonProcess, make_config, wait_until
from tests.support.files import md5_of, write_random
from tests.support.peers import ReceiverPeer


def test_a_watch_moved_to_another_target_or_folder_uploads_again(tmp_path):
    first, second = ReceiverPeer(tmp_path / "first"), ReceiverPeer(tmp_path / "second")
    try:
        config = make_config(tmp_path, url=first.url, token=first.token)
        path = write_random(tmp_path / "drop" / "a.bin", 100_000)
        with DaemonProcess(config) as daemon:
            daemon.wait_states({"drop:a.bin": "done"})
        assert first.stored_md5("a.bin") == md5_of(path)

        data = yaml.safe_load(config.read_text())  # the same target, unchanged: nothing is sent
        with DaemonProcess(config) as daemon:
            daemon.wait_states({"drop:a.bin": "done"})
            assert "uploading it again" not in daemon.log()
        assert first.completions("a.bin") == 1

        data["watches"][0]["remote_dir"] = "archive"  # another folder on the same server
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        with DaemonProcess(config) as daemon:
            daemon.wait_until_log("uploading it again", timeout=15)
            # (the row still reads `done` from before until the new upload takes it)
            wait_until(lambda: first.stored_md5("archive/a.bin") == md5_of(path), timeout=15, what="archive/a.bin")
            wait_until(lambda: daemon.rows()["drop:a.bin"]["dest"] == "archive/a.bin", timeout=15, what="new dest")
        assert daemon.rows()["drop:a.bin"]["state"] == "done"

        data["targets"]["second"] = {**data["targets"]["main"], "url": second.url, "token": second.token}
        data["watches"][0]["target"] = "second"  # another server
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        with DaemonProcess(config) as daemon:
            daemon.wait_until_log("target changed from main to second", timeout=15)
            wait_until(lambda: second.stored_md5("archive/a.bin") == md5_of(path), timeout=15, what="on second")
            wait_until(lambda: daemon.rows()["drop:a.bin"]["target"] == "second", timeout=15, what="new target")
        assert daemon.rows()["drop:a.bin"]["state"] == "done"
    finally:
        first.stop()
        second.stop()
