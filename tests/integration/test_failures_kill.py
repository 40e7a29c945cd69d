"""The failure contract, crash row: the daemon SIGKILLed at random moments, again and again,
while files arrive and upload. Nothing may be lost, doubled or mixed, and each kill may
cost at most the parts that were in flight."""

from __future__ import annotations

import random
import sqlite3
import time

import pytest
import yaml

from tests.support.conformance import ReceiverTarget
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.failures import (
    Drop,
    KiB,
    MiB,
    assert_delivered,
    completed_uploads,
    failure_config,
    integrity,
    journal_rows,
)
from tests.support.fault_proxy import FaultProxy, Forward, Rule
from tests.support.peers import ReceiverPeer

PART = 256 * KiB
UPLOADS = 2
SMALL_UPLOADS = 4
"""files in flight at once while the extra ones are small: each sends at most one request,
of at most PART bytes, at a time"""
KILLS = 24


def the_drop(rng: random.Random) -> list[tuple[str, str, int]]:
    """102 files, ~90 MiB: boundary sizes, many small files, some of several parts, a few large."""
    files = []
    boundaries = [0, 1, PART - 1, PART, PART + 1, 2 * PART - 1, 2 * PART, 2 * PART + 1]
    for watch in ("keep", "del"):
        files += [(watch, f"edge/{size}.bin", size) for size in boundaries]
    for i in range(70):
        files.append((rng.choice(["keep", "del"]), f"small/{i % 7}/{i % 3}/s{i:03d}.dat", rng.randrange(0, 3 * PART)))
    for i in range(12):
        files.append((rng.choice(["keep", "del"]), f"medium/m{i:02d}.bin", rng.randrange(1 * MiB, 3 * MiB)))
    for i in range(4):
        files.append((("keep", "del")[i % 2], f"large/deep/er/l{i}.bin", rng.randrange(6 * MiB, 10 * MiB)))
    rng.shuffle(files)
    return files


@pytest.mark.slow
def test_sigkill_loop_nothing_lost_doubled_or_mixed(tmp_path):
    rng = random.Random(2024)
    peer = ReceiverPeer(tmp_path / "received")
    try:
        drop = Drop(tmp_path)
        files = the_drop(rng)
        sizes = {f"{w}:{p}": s for w, p, s in files}
        first_wave, later = files[:50], files[50:]  # 2 arrive per cycle, the last few after the last kill
        for watch, relpath, size in first_wave:
            drop.write(watch, relpath, size, rng=rng)

        with FaultProxy(peer.url, seed=7, rules=[Rule(Forward(bandwidth=5 * MiB))]) as proxy:
            config = failure_config(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size=PART,
                                    uploads=UPLOADS, small_uploads=SMALL_UPLOADS)
            daemon = DaemonProcess(config, log_level="INFO")
            kill_times = []
            try:
                for _ in range(KILLS):
                    daemon.start()
                    for watch, relpath, size in later[:2]:  # files keep arriving between crashes
                        drop.write(watch, relpath, size, rng=rng)
                    later = later[2:]
                    time.sleep(rng.uniform(0.2, 2.0))  # a random moment to crash at
                    assert daemon.proc.poll() is None, daemon.log()[-3000:]
                    daemon.kill()
                    kill_times.append(time.monotonic())
                daemon.start()
                assert later
                for watch, relpath, size in later:  # (so it is surely running, not starting, at its SIGTERM)
                    drop.write(watch, relpath, size, rng=rng)
                daemon.wait_states({k: "done" for k in drop.names()}, timeout=120)
                wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                           what="del files deleted")
                assert daemon.stop() == 0
            finally:
                daemon.kill()
            seen = list(proxy.seen)

        assert len(kill_times) == KILLS and len(drop.names()) >= 100
        assert_delivered(peer, drop, daemon)
        assert integrity(daemon.journal_path) == "ok"
        stale = [dict(r) for r in journal_rows(daemon.journal_path, "SELECT * FROM uploads WHERE state = 'open'")]
        assert not stale, f"upload rows still open although every file is done: {stale}"
        # no kill left an orphan session on the server: every session it made was completed
        # (upload keys let a restarted daemon find sessions whose first answer it never saw)
        orphans = ReceiverTarget.open_records(peer.root)
        assert orphans == [], f"{len(orphans)} orphan session(s) left on the receiver: {orphans[:3]}"

        # the kills landed in the middle of uploads...
        cut = [s for s in seen if s.outcome == "client-gone"]
        assert len(cut) >= KILLS // 4, f"only {len(cut)} requests were cut by a kill"
        # ...and each cost no more than the parts it caught in flight: what it cut off half-sent,
        # and what was sent whole again later because the kill came after the part left but
        # before the journal wrote its receipt down (charged to the first kill after it left)
        by_remote = {drop.remote(k): size for k, size in sizes.items()}
        waste = [0] * KILLS
        sent_whole: dict[tuple, float] = {}
        for s in sorted(seen, key=lambda s: s.started):
            if s.range is not None:
                lengths = {(s.filename, s.content_range): s.range[1] - s.range[0] + 1}
            elif s.method == "POST" and s.path.endswith("/chunked_upload/"):
                lengths = {(name, None): by_remote[name] for name in s.names}  # one file, or a batch's
            else:
                continue
            if s.outcome == "client-gone":
                overhead = (s.content_length or 0) - sum(lengths.values())
                waste[sum(t < s.started for t in kill_times)] += max(0, s.received - overhead)
                continue
            for key, length in lengths.items():  # a file sent again in another batch counts too
                if key in sent_whole:
                    after = sum(t < sent_whole[key] for t in kill_times)
                    assert after < KILLS and kill_times[after] < s.started, f"sent twice without a crash between: {s}"
                    waste[after] += length
                sent_whole[key] = s.started
        assert max(waste) <= max(UPLOADS, SMALL_UPLOADS) * PART, f"bytes sent again per kill: {waste}"
        assert sum(waste) > 0
    finally:
        peer.stop()


def test_after_action_cut_off_by_a_crash_is_redone_and_only_that(tmp_path):
    """A crash between `done` and its delete leaves the file in place: the next start deletes
    it. A file uploaded while the watch said `keep` is never deleted by switching to
    `delete` later (the server may have let it go since)."""
    peer = ReceiverPeer(tmp_path / "received")
    try:
        drop = Drop(tmp_path)
        for name in ("cut-off.bin", "kept.bin"):
            drop.write("keep", name, 3 * PART)
        config = failure_config(tmp_path, url=peer.url, token=peer.token, part_size=PART)
        with DaemonProcess(config) as daemon:
            daemon.wait_states({k: "done" for k in drop.names()})
        # what a SIGKILL between mark_done and the unlink leaves behind, in a delete watch
        db = sqlite3.connect(daemon.journal_path)
        with db:
            db.execute("UPDATE files SET after_action = 'pending' WHERE relpath = 'cut-off.bin'")
        db.close()
        data = yaml.safe_load(config.read_text())
        data["watches"][0]["after_upload"] = "delete"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        with DaemonProcess(config) as daemon:
            wait_until(lambda: not drop.local("keep:cut-off.bin").exists(), timeout=15, what="the cut-off delete")
            assert drop.local("keep:kept.bin").exists()  # decided by the same startup scan
            rows = daemon.rows()
        assert rows["keep:cut-off.bin"]["after_action"] == "deleted"
        assert rows["keep:kept.bin"]["after_action"] is None
        assert_delivered(peer, drop, daemon, keys=["keep:kept.bin"])
        assert peer.stored_md5("keep/cut-off.bin") == drop.md5["keep:cut-off.bin"]
        assert completed_uploads(daemon.journal_path, "keep:cut-off.bin") == 1
    finally:
        peer.stop()
