"""Priorities through the real daemon: one upload worker, a queue already in the journal."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
import yaml

from syncd.journal import Fingerprint, Journal
from tests.support.daemon import DaemonProcess, make_config
from tests.support.files import md5_of, write_random


@pytest.mark.parametrize(("batch", "order"), [
    (1, ["urgent:u-small.bin",   # priority 10; urgent and scans in turn, urgent smallest first
         "scans:s1.bin",         # scans oldest first
         "urgent:u-big.bin",
         "scans:s2.bin",
         "bulk:b1.bin",          # priority 0, oldest first
         "bulk:b2.bin"]),
    # with batches, a turn is a batch of a watch's small files (the first file goes alone:
    # the server says it takes batches in its first answer)
    (32, ["urgent:u-small.bin", "scans:s1.bin", "scans:s2.bin", "urgent:u-big.bin", "bulk:b1.bin", "bulk:b2.bin"]),
])
def test_the_daemon_starts_a_mixed_queue_in_priority_order(receiver, tmp_path, batch, order) -> None:
    files = [  # in the order they became ready
        ("bulk", "b1.bin", 3000), ("urgent", "u-big.bin", 2000), ("bulk", "b2.bin", 10),
        ("urgent", "u-small.bin", 1000), ("scans", "s1.bin", 500), ("scans", "s2.bin", 100),
    ]
    watches = [
        {"name": "bulk", "path": str(tmp_path / "bulk"), "target": "main"},
        {"name": "urgent", "path": str(tmp_path / "urgent"), "target": "main", "priority": 10,
         "order": "smallest"},
        {"name": "scans", "path": str(tmp_path / "scans"), "target": "main", "priority": 10},
    ]
    config = make_config(tmp_path, url=receiver.url, token=receiver.token, watches=watches,
                         concurrency={"uploads": 1, "small_uploads": 1})  # one worker, even for small files
    data = yaml.safe_load(config.read_text())
    data["targets"]["main"]["batch"] = batch
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    # The queue is in the journal before the daemon starts, so its first dispatch sees all of it.
    clock = [time.time() - 100]

    def tick() -> float:
        clock[0] += 1
        return clock[0]

    journal = Journal(tmp_path / "state" / "journal.db", clock=tick)
    try:
        for watch, name, size in files:
            path = write_random(tmp_path / watch / name, size)
            journal.mark_settled(watch, name, Fingerprint.of(os.stat(path)))
    finally:
        journal.close()

    with DaemonProcess(config) as daemon:
        daemon.wait_states({f"{w}:{n}": "done" for w, n, _ in files}, timeout=60)
    db = sqlite3.connect(f"file:{daemon.journal_path}?mode=ro", uri=True)
    try:
        started = [f"{w}:{r}" for w, r in db.execute(
            "SELECT f.watch, f.relpath FROM uploads u JOIN files f ON f.id = u.file_id ORDER BY u.id")]
    finally:
        db.close()
    assert started == order
    for watch, name, _ in files:
        assert receiver.stored_md5(name) == md5_of(tmp_path / watch / name)
