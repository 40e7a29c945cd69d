"""The failure contract, journal rows: its volume fills up; it is missing or corrupt at start.

Decisions these tests hold the daemon to:
- a journal that cannot be written stops the daemon with a clear error (exit 1, so systemd's
  Restart=on-failure starts it again); nothing is marked failed for it, the journal stays
  intact, and the next start resumes every upload from the server's offset;
- a corrupt journal is refused at start with a message saying to move it aside; nothing is
  uploaded, deleted or moved;
- a missing journal is created afresh and rebuilt from a scan: every file in the watches is
  uploaded again (the receiver keeps one copy of identical files), and deleted or moved only
  once the server confirmed it in this run.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import REPO, DaemonProcess, wait_until
from tests.support.failures import (
    Drop,
    KiB,
    MiB,
    assert_delivered,
    assert_no_unsafe_deletes,
    completed_uploads,
    failure_config,
    integrity,
    journal_rows,
    upload_offset,
)
from tests.support.fault_proxy import FaultProxy, Forward, Rule
from tests.support.peers import ReceiverPeer

PART = 256 * KiB

# The daemon, with every journal write failing as on a full disk while FLAG exists.
ENOSPC_WRAPPER = r"""
import os, sqlite3, sys
from contextlib import contextmanager
from syncd import journal

flag = os.environ["SYNCD_TEST_JOURNAL_FULL"]
_tx = journal.Journal._tx

@contextmanager
def full_tx(self, **kw):
    if os.path.exists(flag):
        raise sqlite3.OperationalError("database or disk is full")
    with _tx(self, **kw) as db:
        yield db

journal.Journal._tx = full_tx
from syncd.cli import main
sys.exit(main(sys.argv[1:]))
"""


class JournalFullDaemon(DaemonProcess):
    """``syncd run`` whose journal writes fail with SQLITE_FULL while ``flag`` exists."""

    def __init__(self, config: Path, *, flag: Path, **kw):
        super().__init__(config, env={"SYNCD_TEST_JOURNAL_FULL": str(flag)}, **kw)

    def start(self) -> JournalFullDaemon:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ENOSPC_WRAPPER, "run", "-c", str(self.config), "--log-level", self.log_level],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        log.close()
        return self


class Volume:
    """A small tmpfs for the journal, and a way to fill it up and free it again."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            path.rmdir()
            pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); the injected variant covers it")
        self.filler = path / "filler"

    def fill(self) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)
        self.path.rmdir()


@pytest.fixture
def receiver(tmp_path):
    peer = ReceiverPeer(tmp_path / "received")
    yield peer
    peer.stop()


@pytest.mark.parametrize("variant", ["tmpfs", "injected"])
def test_journal_volume_full_stops_cleanly_and_resumes(receiver, tmp_path, variant):
    volume = Volume(tmp_path / "jvol", "16m") if variant == "tmpfs" else None
    flag = tmp_path / "journal-full"
    journal = (volume.path if volume else tmp_path / "state") / "journal.db"
    drop = Drop(tmp_path)
    big = "del:big.bin"
    try:
        with FaultProxy(receiver.url, seed=1, rules=[Rule(Forward(bandwidth=2 * MiB))]) as proxy:
            config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token,
                                    part_size=PART, journal=str(journal))

            def daemon_() -> DaemonProcess:
                return JournalFullDaemon(config, flag=flag, log_level="INFO") if volume is None \
                    else DaemonProcess(config, log_level="INFO")

            daemon = daemon_().start()
            try:
                for n in (1, PART + 1):
                    drop.write("keep", f"before/{n}.bin", n)
                daemon.wait_states({k: "done" for k in drop.names()})
                drop.write("del", "big.bin", 6 * MiB)
                wait_until(lambda: upload_offset(journal, big) >= 1 * MiB, timeout=30, what="1 MiB of the big file")
                volume.fill() if volume else flag.touch()
                assert daemon.proc.wait(20) == 1, "the daemon must stop when it cannot write its journal"
            finally:
                daemon.kill()
            log = daemon.log()
            assert "cannot write journal" in log and "full" in log, log[-2000:]
            assert "move it aside" not in log  # full is not corrupt
            assert "failed:" not in log  # nothing was marked failed for it
            assert drop.local(big).exists()

            # restarting while still full: a clear refusal, not a crash or a half-written journal
            daemon = daemon_().start()
            try:
                assert daemon.proc.wait(20) == 1
            finally:
                daemon.kill()
            assert daemon.log().count("cannot write journal") >= 2

            volume.free() if volume else flag.unlink()
            assert integrity(journal) == "ok"
            held = upload_offset(journal, big)
            first_run = len(proxy.seen)
            proxy.set_rules([])
            with daemon_() as daemon:
                daemon.wait_states({k: "done" for k in drop.names()}, timeout=60)
                wait_until(lambda: not drop.local(big).exists(), timeout=10, what="big file deleted")
            later = [s for s in proxy.seen[first_run:] if s.filename == drop.remote(big)]
        assert_delivered(receiver, drop, daemon)
        assert integrity(journal) == "ok"
        assert all(completed_uploads(journal, k) == 1 for k in drop.names())
        assert later[0].method == "GET"  # resumed: the server's offset first
        sent = sum(s.range[1] - s.range[0] + 1 for s in later if s.method == "PUT")
        assert sent <= 6 * MiB - held + PART, (sent, held)
    finally:
        if volume is not None:
            volume.unmount()


# --- missing or corrupt journal at start ---------------------------------------------------

def _garbage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is not SQLite")


def _garbage_pages(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for offset in range(4096 * 2, size, 4096 * 2):
            f.seek(offset + 8)
            f.write(os.urandom(512))


def _truncated(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


CORRUPTIONS = {"garbage-header": _garbage_header, "garbage-pages": _garbage_pages, "truncated": _truncated}


def _first_run(receiver, tmp_path, proxy) -> tuple[Path, Drop, DaemonProcess]:
    """Files uploaded (the `del` ones deleted), then more files dropped while syncd is stopped."""
    drop = Drop(tmp_path)
    config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=PART)
    for watch in ("keep", "del"):
        for i in range(8):
            drop.write(watch, f"first/{i}.bin", i * PART // 2 + 1)
    with DaemonProcess(config) as daemon:
        daemon.wait_states({k: "done" for k in drop.names()})
        wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                   what="del files deleted")
    for watch in ("keep", "del"):
        for i in range(3):
            drop.write(watch, f"while-stopped/{i}.bin", i * PART + 7)
    return config, drop, daemon


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_journal_is_refused_and_nothing_local_is_touched(receiver, tmp_path, corruption):
    with FaultProxy(receiver.url, seed=1) as proxy:
        config, drop, daemon = _first_run(receiver, tmp_path, proxy)
        journal = daemon.journal_path
        CORRUPTIONS[corruption](journal)
        before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/**/*") if p.is_file()
                  and p.parts[len(tmp_path.parts)] in ("keep", "del")}
        asked = len(proxy.seen)
        daemon = DaemonProcess(config).start()
        try:
            assert daemon.proc.wait(20) == 1
        finally:
            daemon.kill()
        log = daemon.log().split("syncd: syncd")[-1]
        assert f"{journal}" in log and "move it aside" in log, log
        assert len(proxy.seen) == asked, "nothing may be uploaded from a corrupt journal"
        after = {p: p.stat().st_mtime_ns for p in before if p.exists()}
        assert after == before, "no local file may be touched from a corrupt journal"

        # the message's advice works: a new journal, rebuilt from a scan
        aside = journal.with_name("journal.db.corrupt")
        journal.rename(aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        with DaemonProcess(config) as daemon:
            daemon.wait_states({k: "done" for k in drop.names() if drop.local(k).exists()}, timeout=60)
            wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                       what="del files deleted")
    assert_delivered(receiver, drop, daemon)
    assert aside.exists()


def test_missing_journal_is_rebuilt_from_a_scan(receiver, tmp_path):
    with FaultProxy(receiver.url, seed=1) as proxy:
        config, drop, daemon = _first_run(receiver, tmp_path, proxy)
        journal = daemon.journal_path
        for suffix in ("", "-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        uploaded_before = len(proxy.seen)
        with DaemonProcess(config) as daemon:
            present = [k for k in drop.names() if drop.local(k).exists()]
            daemon.wait_states({k: "done" for k in present}, timeout=60)
            wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                       what="del files deleted")
        resent = {name for s in proxy.seen[uploaded_before:] for name in s.names}
    assert "starting a new journal" in daemon.log()
    # every file still in the watches went up again; identical ones are kept once by the receiver
    assert resent == {drop.remote(k) for k in present}
    assert_delivered(receiver, drop, daemon)
    assert_no_unsafe_deletes(receiver, drop, daemon)
    assert integrity(journal) == "ok"
    assert len(journal_rows(journal, "SELECT * FROM files")) == len(present)
