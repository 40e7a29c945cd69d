"""`syncd pause` / `syncd resume` against the real daemon and the built-in receiver: a target
and a watch paused during uploads, across a restart, and refused for another user."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from syncd.journal import Journal
from tests.integration.test_service import NotifySocket
from tests.support.daemon import REPO, DaemonProcess, make_config, wait_until
from tests.support.files import md5_of, write_random

KiB, MiB = 1024, 1024**2


AS_USER = """
import os, sys
import syncd.cli, syncd.controls, syncd.status  # loaded as root: the interpreter lives under /root
syncd.config.load_config(sys.argv[-1], check=False)  # and whatever parsing the config imports
os.setgroups([]); os.setgid(int(sys.argv[1])); os.setuid(int(sys.argv[1]))
sys.exit(syncd.cli.main(sys.argv[2:]))
"""


def syncd(config: Path, *args: str, uid: int | None = None) -> subprocess.CompletedProcess:
    """``syncd ARGS -c CONFIG`` in a subprocess; with ``uid``, as that user (needs root)."""
    command = [sys.executable, "-m", "syncd"] if uid is None else [sys.executable, "-c", AS_USER, str(uid)]
    return subprocess.run([*command, *args, "-c", str(config)], capture_output=True, text=True, timeout=60,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def offset_of(daemon: DaemonProcess, relpath: str) -> int:
    """Bytes of the file's latest upload that the server acknowledged (journal view)."""
    if not daemon.journal_path.exists():
        return 0
    db = sqlite3.connect(f"file:{daemon.journal_path}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT u.offset FROM uploads u JOIN files f ON f.id = u.file_id"
                         " WHERE f.relpath = ? ORDER BY u.id DESC LIMIT 1", (relpath,)).fetchone()
        return row[0] if row else 0
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def drop(folder: Path, name: str, size: int) -> None:
    staged = write_random(folder.parent / f"staged-{name}", size)
    os.rename(staged, folder / name)


def limited_config(tmp_path: Path, receiver, *, watches: list[dict] | None = None) -> Path:
    """Parts of 256 KiB at 512 KiB/s: an upload of a few MiB lasts long enough to pause it."""
    config = make_config(tmp_path, url=receiver.url, token=receiver.token, part_size="256KiB",
                         watches=watches, concurrency={"uploads": 2})
    data = yaml.safe_load(config.read_text())
    data["targets"]["main"]["bandwidth"] = "512KiB/s"
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def unlimit(config: Path) -> None:
    data = yaml.safe_load(config.read_text())
    del data["targets"]["main"]["bandwidth"]
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def stays(predicate, *, seconds: float) -> bool:
    """The predicate holds on every look for ``seconds`` (what a pause must keep true)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.1)
    return True


def test_pause_a_target_during_an_upload_across_a_restart(receiver, tmp_path):
    config = limited_config(tmp_path, receiver)
    big, late = f"{tmp_path.name}-big.bin", f"{tmp_path.name}-late.bin"
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = DaemonProcess(config, log_level="INFO")
    daemon.env["NOTIFY_SOCKET"] = str(notify.path)
    try:
        daemon.start()
        drop(tmp_path / "drop", big, 4 * MiB)
        wait_until(lambda: offset_of(daemon, big) >= 256 * KiB, timeout=30, what="the first part acknowledged")
        result = syncd(config, "pause", "--target", "main")
        assert result.returncode == 0, result.stderr
        assert "paused target main" in result.stdout
        # the part in flight finishes, the next one is not sent: back in the queue, resumable
        daemon.wait_states({f"drop:{big}": "ready"}, timeout=10)
        held_at = offset_of(daemon, big)
        assert 256 * KiB <= held_at < 4 * MiB
        drop(tmp_path / "drop", late, 600 * KiB)  # still settles and queues while paused
        daemon.wait_states({f"drop:{late}": "ready"}, timeout=15)
        assert stays(lambda: offset_of(daemon, big) == held_at and offset_of(daemon, late) == 0
                     and daemon.states()[f"drop:{late}"] == "ready", seconds=2)
        notify.collect(until=lambda _: any("paused: target main" in m for _, m in notify.messages), timeout=10)
        status = next(m for _, m in reversed(notify.messages) if "paused: target main" in m)
        assert "limit main 512 KiB/s" in status
        assert "paused target main" not in daemon.log()  # the daemon's own line is:
        assert "paused: target main" in daemon.log()
        assert daemon.stop() == 0

        # a restart keeps the pause
        daemon.start()
        assert stays(lambda: offset_of(daemon, big) == held_at and offset_of(daemon, late) == 0, seconds=2)
        result = syncd(config, "status", "--json")
        assert json.loads(result.stdout)["paused"]["targets"] == ["main"]

        unlimit(config)
        daemon.signal(signal.SIGHUP)  # the new limit (none) applies in place
        wait_until(lambda: "reloaded" in daemon.log().rsplit("paused: target main", 1)[-1], timeout=10,
                   what="the reload")
        result = syncd(config, "resume", "--target", "main")
        assert result.returncode == 0 and "resumed target main" in result.stdout
        daemon.wait_states({f"drop:{big}": "done", f"drop:{late}": "done"}, timeout=30)
        assert "resuming upload session" in daemon.log()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        notify.close()
    for name in (big, late):
        assert receiver.stored_md5(name) == md5_of(tmp_path / "drop" / name)


def test_pause_a_watch_while_another_goes_on(receiver, tmp_path):
    for folder in ("cams", "scans"):
        (tmp_path / folder).mkdir()
    settle = {"quiet": "0.3s", "max_wait": "30s"}
    config = limited_config(tmp_path, receiver, watches=[
        {"name": "cams", "path": str(tmp_path / "cams"), "target": "main", "settle": settle},
        {"name": "scans", "path": str(tmp_path / "scans"), "target": "main", "settle": settle}])
    video, scan = f"{tmp_path.name}-video.bin", f"{tmp_path.name}-scan.bin"
    with DaemonProcess(config, log_level="INFO") as daemon:
        drop(tmp_path / "cams", video, 3 * MiB)
        wait_until(lambda: offset_of(daemon, video) >= 256 * KiB, timeout=30, what="the first part acknowledged")
        result = syncd(config, "pause", "--watch", "cams")
        assert result.returncode == 0, result.stderr
        daemon.wait_states({f"cams:{video}": "ready"}, timeout=10)
        held_at = offset_of(daemon, video)
        drop(tmp_path / "scans", scan, 512 * KiB)
        daemon.wait_states({f"scans:{scan}": "done"}, timeout=30)  # the other watch is not held
        assert offset_of(daemon, video) == held_at and daemon.states()[f"cams:{video}"] == "ready"
        result = syncd(config, "resume")  # no option: everything
        assert result.returncode == 0 and "resumed everything" in result.stdout
        daemon.wait_states({f"cams:{video}": "done"}, timeout=30)
    assert receiver.stored_md5(video) == md5_of(tmp_path / "cams" / video)
    assert receiver.stored_md5(scan) == md5_of(tmp_path / "scans" / scan)


@pytest.fixture
def shared_dir():
    """A folder another user can read (pytest's tmp_path is private to its user)."""
    path = Path(tempfile.mkdtemp(prefix="syncd-pause-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_pause_is_refused_for_a_user_who_cannot_write_the_journal(shared_dir):
    (shared_dir / "drop").mkdir()
    config = make_config(shared_dir, url="http://127.0.0.1:9/chunked_upload/", token="t")
    config.chmod(0o644)
    journal_path = shared_dir / "state" / "journal.db"
    Journal(journal_path).close()  # as the service's first start leaves it
    if os.geteuid() == 0:
        uid = 65534  # nobody: may read the config and the journal, not write them
        os.chmod(journal_path.parent, 0o755)
    else:
        uid = None
        journal_path.chmod(0o444)
        journal_path.parent.chmod(0o555)
    try:
        for command in ("pause", "resume"):
            result = syncd(config, command, "--watch", "drop", uid=uid)
            assert result.returncode == 1, result
            err = result.stderr.strip()
            assert "\n" not in err and err == (
                f"syncd {command}: {journal_path}: permission denied: only a user who can write the journal "
                f"(the service's user, or root) can {command}")
    finally:
        journal_path.parent.chmod(0o755)
    journal = Journal(journal_path)
    assert journal.pauses() == []
    journal.close()
