"""The crash row for tus: the daemon SIGKILLed again and again while files arrive and go to a
real @tus/server with ``after_upload: delete`` and ``verify: read_back``. Every file must end
on the server whole (every finished copy with its MD5), and be deleted locally only then."""

from __future__ import annotations

import random
import time

import pytest
import yaml

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.failures import Drop, KiB, MiB, failure_config, integrity, journal_rows
from tests.support.fault_proxy import FaultProxy, Forward, Rule
from tests.support.files import md5_of
from tests.support.tus import TusServer, new_token

PART = 64 * KiB
KILLS = 20


def the_drop(rng: random.Random) -> list[tuple[str, int]]:
    """36 files, ~12 MiB: boundary sizes, small ones, a few of many parts."""
    files = [(f"edge/{size}.bin", size) for size in (0, 1, PART - 1, PART, PART + 1, 2 * PART + 1)]
    files += [(f"small/s{i:02d}.dat", rng.randrange(0, 3 * PART)) for i in range(22)]
    files += [(f"large/l{i}.bin", rng.randrange(1 * MiB, 2 * MiB)) for i in range(8)]
    rng.shuffle(files)
    return files


@pytest.mark.slow
def test_sigkill_loop_with_read_back_and_delete(tmp_path):
    rng = random.Random(12)
    server = TusServer.start_in(tmp_path / "tus", token=new_token())
    try:
        drop = Drop(tmp_path)
        files = the_drop(rng)
        first_wave, later = files[:14], files[14:]
        for relpath, size in first_wave:
            drop.write("del", relpath, size, rng=rng)
        with FaultProxy(server.url, seed=3, rules=[Rule(Forward(bandwidth=1 * MiB))]) as proxy:
            config = failure_config(tmp_path, url=proxy.url_for(server.url), token=server.token, part_size=PART)
            data = yaml.safe_load(config.read_text())
            data["targets"]["main"].update(protocol="tus", verify="read_back")
            config.write_text(yaml.safe_dump(data, sort_keys=False))
            daemon = DaemonProcess(config, log_level="INFO")
            try:
                for _ in range(KILLS):
                    daemon.start()
                    for relpath, size in later[:1]:  # files keep arriving between crashes
                        drop.write("del", relpath, size, rng=rng)
                    later = later[1:]
                    time.sleep(rng.uniform(0.6, 1.6))  # a random moment to crash at
                    assert daemon.proc.poll() is None, daemon.log()[-3000:]
                    daemon.kill()
                daemon.start()
                for relpath, size in later:
                    drop.write("del", relpath, size, rng=rng)
                daemon.wait_states({k: "done" for k in drop.names()}, timeout=120)
                wait_until(lambda: not any(drop.local(k).exists() for k in drop.names()), timeout=10,
                           what="files deleted")
                assert daemon.stop() == 0
            finally:
                daemon.kill()
            seen = list(proxy.seen)

        problems = []
        duplicates = {}
        for key in drop.names():
            copies = server.finished(drop.remote(key))
            if not copies:
                problems.append(f"{key}: no finished upload on the server")
            bad = [c.id for c in copies if md5_of(c.path) != drop.md5[key]]
            if bad:
                problems.append(f"{key}: finished uploads with other bytes: {bad}")
            if len(copies) > 1:
                duplicates[key] = len(copies)
        assert not problems, "\n".join(problems) + "\n--- daemon log ---\n" + daemon.log()[-3000:]
        # tus has no upload keys, so syncd never sends bytes with a creation: a kill before the
        # creation's answer was journaled leaves an empty unfinished upload, never a second
        # finished copy. Only an empty file (finished by its creation) can be there twice.
        sizes = dict(files)
        assert all(sizes[key.split(":", 1)[1]] == 0 for key in duplicates), duplicates
        assert integrity(daemon.journal_path) == "ok"
        assert not journal_rows(daemon.journal_path, "SELECT * FROM uploads WHERE state = 'open'")
        verified = {r["verified"] for r in journal_rows(daemon.journal_path, "SELECT verified FROM files")}
        assert verified == {"read-back"}
        cut = [s for s in seen if s.outcome == "client-gone"]
        assert len(cut) >= KILLS // 4, f"only {len(cut)} requests were cut by a kill"
        print(f"tus kill loop: {KILLS} kills, {len(cut)} requests cut, duplicate small copies: {duplicates}")
    finally:
        server.stop()
