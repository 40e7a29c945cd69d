"""The real daemon, as a subprocess, against real folders and a real server on 127.0.0.1
(the built-in receiver and drf-chunked-upload: the ``peer`` fixture)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time

import pytest

from tests.support.counting_proxy import CountingProxy
from tests.support.daemon import DaemonProcess, make_config, wait_until
from tests.support.files import md5_of, write_random

PART = 64 * 1024


def uploads_completed(daemon: DaemonProcess, key: str) -> int:
    watch, relpath = key.split(":", 1)
    db = sqlite3.connect(f"file:{daemon.journal_path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM uploads u JOIN files f ON f.id = u.file_id WHERE f.watch = ?"
                          " AND f.relpath = ? AND u.state = 'completed'", (watch, relpath)).fetchone()[0]
    finally:
        db.close()


def test_boundary_sizes_names_and_folders_arrive_once(peer, tmp_path):
    unique = tmp_path.name
    drop = tmp_path / "drop"
    files = {
        f"{unique}/one.bin": 1,
        f"{unique}/part-minus-1.bin": PART - 1,
        f"{unique}/part.bin": PART,
        f"{unique}/part-plus-1.bin": PART + 1,
        f"{unique}/Überweisung März 2026/scan 01 (final).pdf": 3 * PART + 5,
        f"{unique}/a/b/c/deep.bin": 2 * PART,
    }
    config = make_config(tmp_path, url=peer.url, token=peer.token)
    with DaemonProcess(config) as daemon:
        for name, size in files.items():
            write_random(drop / name, size)
        (drop / unique / "empty.bin").write_bytes(b"")
        expected = {f"drop:{n}": "done" for n in files}
        expected[f"drop:{unique}/empty.bin"] = "done" if peer.accepts_empty_files else "failed"
        daemon.wait_states(expected, timeout=60)
        for name in files:
            assert peer.stored_md5(name) == md5_of(drop / name), name
            assert uploads_completed(daemon, f"drop:{name}") == 1
            assert peer.completions(name) == 1
        if not peer.accepts_empty_files:
            row = daemon.rows()[f"drop:{unique}/empty.bin"]
            assert row["last_error"] == "HTTP 400: The submitted file is empty."
            assert row["attempts"] == 1
        else:
            assert peer.stored_md5(f"{unique}/empty.bin") == md5_of(drop / unique / "empty.bin")


@pytest.mark.slow
def test_large_file_arrives_with_matching_md5(peer, tmp_path):
    drop = tmp_path / "drop"
    config = make_config(tmp_path, url=peer.url, token=peer.token, part_size="50MiB")
    big = write_random(tmp_path / "staging-area" / "big.bin", 300 * 1024**2)
    name = f"{tmp_path.name}-big.bin"
    with DaemonProcess(config, log_level="INFO") as daemon:
        shutil.move(big, drop / name)  # arrives whole, by rename
        daemon.wait_states({f"drop:{name}": "done"}, timeout=120)
        assert peer.stored_md5(name) == md5_of(drop / name)
        assert uploads_completed(daemon, f"drop:{name}") == 1


def test_many_small_files(peer, tmp_path):
    drop = tmp_path / "drop" / tmp_path.name
    config = make_config(tmp_path, url=peer.url, token=peer.token, concurrency={"uploads": 4})
    expected = {}
    for i in range(1000):
        path = drop / f"d{i % 10}" / f"f{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(64 + i))
        expected[f"drop:{tmp_path.name}/d{i % 10}/f{i:04d}.txt"] = "done"
    with DaemonProcess(config, log_level="INFO") as daemon:
        daemon.wait_states(expected, timeout=180)
    for key in list(expected)[::97]:
        relpath = key.split(":", 1)[1]
        assert peer.stored_md5(relpath) == md5_of(tmp_path / "drop" / relpath)


def test_slow_writer_is_uploaded_once_complete(peer, tmp_path):
    drop = tmp_path / "drop"
    config = make_config(tmp_path, url=peer.url, token=peer.token, quiet="1s")
    name = f"{tmp_path.name}-slow.log"
    with DaemonProcess(config) as daemon:
        with open(drop / name, "ab") as f:
            for _ in range(40):  # 10 s of appends, 250 ms apart
                f.write(os.urandom(4096))
                f.flush()
                time.sleep(0.25)
        daemon.wait_states({f"drop:{name}": "done"}, timeout=30)
        assert peer.stored_md5(name) == md5_of(drop / name)
        assert uploads_completed(daemon, f"drop:{name}") == 1
        assert os.path.getsize(drop / name) == 40 * 4096


def test_moved_in_replaced_and_restart(peer, tmp_path):
    drop = tmp_path / "drop"
    config = make_config(tmp_path, url=peer.url, token=peer.token)
    moved, replaced, untouched = (f"{tmp_path.name}-{n}.bin" for n in ("moved", "replaced", "untouched"))
    outside = write_random(tmp_path / "outside.bin", PART + 10)
    with DaemonProcess(config) as daemon:
        write_random(drop / untouched, 1000)
        write_random(drop / replaced, 2000)
        os.rename(outside, drop / moved)
        daemon.wait_states({f"drop:{n}": "done" for n in (moved, replaced, untouched)})
        first_md5 = peer.stored_md5(replaced)
        # replace it after its upload: the new content is uploaded again
        write_random(tmp_path / "new.bin", 3000)
        os.replace(tmp_path / "new.bin", drop / replaced)
        wait_until(lambda: uploads_completed(daemon, f"drop:{replaced}") == 2, timeout=30, what="re-upload")
        daemon.wait_states({f"drop:{replaced}": "done"})
        # the server holds the new content where it says it put it (the receiver's default
        # on_conflict: rename keeps the first version and stores this one as "name (1).bin")
        remote_name = daemon.rows()[f"drop:{replaced}"]["remote_name"]
        assert peer.stored_md5(remote_name) == md5_of(drop / replaced) != first_md5
    # a restart does not upload untouched files again
    with DaemonProcess(config) as daemon:
        wait_until(lambda: "scan" in daemon.log() or daemon.states(), timeout=10)
        time.sleep(1.5)
        assert uploads_completed(daemon, f"drop:{untouched}") == 1
        assert uploads_completed(daemon, f"drop:{moved}") == 1
        assert uploads_completed(daemon, f"drop:{replaced}") == 2


@pytest.mark.slow
def test_stop_in_the_middle_resumes_from_server_offset(peer, tmp_path):
    drop = tmp_path / "drop"
    size, part = 300 * 1024**2, 8 * 1024**2
    big = write_random(tmp_path / "big.bin", size)
    name = f"{tmp_path.name}-resume.bin"
    with CountingProxy(peer.port) as proxy:
        config = make_config(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size=part)
        os.rename(big, drop / name)
        daemon = DaemonProcess(config, log_level="INFO").start()
        try:
            def acked():
                if not daemon.journal_path.exists():
                    return 0
                db = sqlite3.connect(f"file:{daemon.journal_path}?mode=ro", uri=True)
                try:
                    r = db.execute("SELECT max(offset) FROM uploads").fetchone()
                    return r[0] or 0
                except sqlite3.OperationalError:
                    return 0
                finally:
                    db.close()

            wait_until(lambda: acked() >= size // 3, timeout=60, what="a third uploaded")
            assert daemon.stop(timeout=10) == 0
        finally:
            daemon.kill()
        offset_at_stop = acked()
        assert offset_at_stop < size
        first_run = proxy.reset()
        with DaemonProcess(config, log_level="INFO") as daemon:
            daemon.wait_states({f"drop:{name}": "done"}, timeout=120)
        second_run = proxy.reset()
    assert peer.stored_md5(name) == md5_of(drop / name)
    # only what the server did not hold is sent again (plus small protocol overhead)
    resent_budget = size - offset_at_stop + 64 * 1024
    assert size - offset_at_stop <= second_run <= resent_budget, (second_run, offset_at_stop)
    assert first_run >= offset_at_stop
    assert "resuming upload session" in daemon.log()


def test_sigterm_with_idle_daemon_exits_quickly(peer, tmp_path):
    config = make_config(tmp_path, url=peer.url, token=peer.token)
    daemon = DaemonProcess(config).start()
    try:
        wait_until(lambda: daemon.journal_path.exists(), timeout=10)
        time.sleep(0.5)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        daemon.kill()


def test_folder_deleted_while_its_files_settle(peer, tmp_path):
    drop = tmp_path / "drop"
    config = make_config(tmp_path, url=peer.url, token=peer.token, quiet="2s")
    batch = drop / f"{tmp_path.name}-batch"
    with DaemonProcess(config) as daemon:
        wait_until(lambda: daemon.journal_path.exists(), timeout=10)
        batch.mkdir()
        for i in range(3):
            write_random(batch / f"f{i}.bin", 100)
        keys = {f"drop:{batch.name}/f{i}.bin": "settling" for i in range(3)}
        daemon.wait_states(keys, timeout=10)
        shutil.rmtree(batch)
        daemon.wait_states({k: "gone" for k in keys}, timeout=15)
        write_random(drop / f"{tmp_path.name}-after.bin", 10)
        daemon.wait_states({f"drop:{tmp_path.name}-after.bin": "done"}, timeout=15)


def test_after_upload_move_keeps_paths_and_never_overwrites(receiver, tmp_path):
    peer = receiver
    drop, done = tmp_path / "drop", tmp_path / "done"
    watch = {"name": "drop", "path": str(drop), "target": "main", "after_upload": "move",
             "done_dir": str(done), "settle": {"quiet": "0.3s", "max_wait": "30s"}}
    config = make_config(tmp_path, url=peer.url, token=peer.token, watches=[watch])
    with DaemonProcess(config) as daemon:
        first = write_random(drop / "sub" / "a.bin", 1000)
        first_md5 = md5_of(first)
        daemon.wait_states({"drop:sub/a.bin": "done"})
        wait_until(lambda: (done / "sub" / "a.bin").exists() and not first.exists(), timeout=10, what="moved")
        second = write_random(drop / "sub" / "a.bin", 2000)  # the same name again, other content
        second_md5 = md5_of(second)
        wait_until(lambda: (done / "sub" / "a (1).bin").exists(), timeout=20, what="second move")
    assert md5_of(done / "sub" / "a.bin") == first_md5
    assert md5_of(done / "sub" / "a (1).bin") == second_md5
    assert not (drop / "sub" / "a.bin").exists()
    row = daemon.rows()["drop:sub/a.bin"]
    assert row["after_action"] == f"moved to {done / 'sub' / 'a (1).bin'}"
