"""Issue 13, item 9: what the daemon's log says about its own decisions."""

from __future__ import annotations

import os

from tests.support.daemon import DaemonProcess, make_config
from tests.support.files import write_random


def test_debug_shows_the_daemons_decisions_and_a_first_start_is_not_alarming(tmp_path, receiver):
    config = make_config(tmp_path, url=receiver.url, token=receiver.token, part_size="64KiB")
    write_random(tmp_path / "drop" / "a.bin", 200_000)
    with DaemonProcess(config, log_level="DEBUG") as daemon:
        daemon.wait_states({"drop:a.bin": "done"})
        log = daemon.log()
    for decision in ("watch drop: scanning", "drop:a.bin: new file, settling", "drop:a.bin: settled; ready to upload",
                     "drop:a.bin: handed to a worker", "drop:a.bin: part 1 acknowledged",
                     "drop:a.bin: uploaded as a.bin (200000 bytes"):
        assert decision in log, decision
    assert "INFO     syncd: " in log and "starting a new journal" in log
    assert "again, if an earlier journal was lost" not in log  # never a journal here: not a warning

    os.unlink(daemon.journal_path)  # a journal lost: now it is worth a warning
    with DaemonProcess(config, log_level="INFO") as daemon:
        daemon.wait_states({"drop:a.bin": "done"})
        assert "WARNING  syncd: " in daemon.log() and "again, if an earlier journal was lost" in daemon.log()
