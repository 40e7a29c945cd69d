"""The fast path for closed files (``settle.on_close``), through the real daemon and the
built-in receiver, with real writers: cp, rsync, ffmpeg and slow writers.

The quiet gap is 30 s, so a file that is done well before it was uploaded by the fast path.
Every test checks that the server holds exactly the final local content, once.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import DaemonProcess, make_config, wait_until
from tests.support.failures import MiB, journal_rows, upload_offset
from tests.support.fault_proxy import FaultProxy, Forward, Rule
from tests.support.files import md5_of, write_random
from tests.support.tools import require_tools

QUIET = "30s"
FAST = 20.0
"""Generous bound for the fast path: anything under the quiet gap can only be the fast path."""


def on_close_config(tmp_path: Path, receiver, *, close_quiet: str = "250ms") -> Path:
    return make_config(tmp_path, url=receiver.url, token=receiver.token, watches=[
        {"name": "drop", "path": str(tmp_path / "drop"), "target": "main",
         "settle": {"quiet": QUIET, "max_wait": "2m", "on_close": True, "close_quiet": close_quiet}}])


def wait_watching(daemon: DaemonProcess) -> None:
    """Until the daemon's watcher runs: a sentinel file written now reaches its journal."""
    sentinel = daemon.config.parent / "drop" / "sentinel.txt"
    sentinel.write_text("watching?")
    wait_until(lambda: "drop:sentinel.txt" in daemon.states(), timeout=30, what="the watcher to start")


def assert_arrived_once(receiver, local: Path) -> None:
    assert receiver.stored_md5(local.name) == md5_of(local)
    assert receiver.completions(local.name) == 1


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_random(tmp_path / "outside" / "clip.bin", 300 * 1024)


def test_cp(receiver, tmp_path, source) -> None:
    with DaemonProcess(on_close_config(tmp_path, receiver)) as daemon:
        wait_watching(daemon)
        subprocess.run(["cp", str(source), str(tmp_path / "drop" / "clip.bin")], check=True, timeout=30)
        daemon.wait_states({"drop:clip.bin": "done"}, timeout=FAST)
    assert_arrived_once(receiver, tmp_path / "drop" / "clip.bin")


def test_rsync_renames_into_place(receiver, tmp_path, source) -> None:
    require_tools("rsync")
    with DaemonProcess(on_close_config(tmp_path, receiver)) as daemon:
        wait_watching(daemon)
        subprocess.run(["rsync", "--times", str(source), str(tmp_path / "drop") + "/"], check=True, timeout=30)
        daemon.wait_states({"drop:clip.bin": "done"}, timeout=FAST)
    assert_arrived_once(receiver, tmp_path / "drop" / "clip.bin")


def test_ffmpeg_writing_a_video(receiver, tmp_path) -> None:
    require_tools("ffmpeg")
    out = tmp_path / "drop" / "clip.mp4"
    with DaemonProcess(on_close_config(tmp_path, receiver)) as daemon:
        wait_watching(daemon)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi",
                        "-i", "testsrc=duration=3:size=320x240:rate=25", "-c:v", "mpeg4", "-y", str(out)],
                       check=True, timeout=60)
        daemon.wait_states({"drop:clip.mp4": "done"}, timeout=FAST)
    assert_arrived_once(receiver, out)


def test_slow_writer_that_closes_and_reopens(receiver, tmp_path) -> None:
    """Closed, reopened at once and appended to for a while: only the final content is sent."""
    path = tmp_path / "drop" / "log.bin"
    # close_quiet 1s: the reopen 50 ms after the first close lands inside it even on a busy machine
    with DaemonProcess(on_close_config(tmp_path, receiver, close_quiet="1s")) as daemon:
        wait_watching(daemon)
        path.write_bytes(b"a" * 64 * 1024)
        time.sleep(0.05)
        with open(path, "ab") as f:
            for _ in range(15):
                f.write(b"b" * 4096)
                f.flush()
                time.sleep(0.1)
        daemon.wait_states({"drop:log.bin": "done"}, timeout=FAST)
    assert_arrived_once(receiver, path)
    assert path.stat().st_size == 64 * 1024 + 15 * 4096


def test_closed_but_held_open_by_another_writer_waits(receiver, tmp_path) -> None:
    """A close through one descriptor while another still holds the file open for writing is
    no completion; the last close is."""
    path = tmp_path / "drop" / "shared.bin"
    with DaemonProcess(on_close_config(tmp_path, receiver)) as daemon:
        wait_watching(daemon)
        with open(path, "ab") as holder:
            with open(path, "ab") as other:
                other.write(b"x" * 10_000)
            wait_until(lambda: daemon.states().get("drop:shared.bin") == "settling", timeout=10,
                       what="the file to be seen")
            time.sleep(3.0)  # twelve close_quiet windows; a fast path here would be a bug
            assert daemon.states()["drop:shared.bin"] == "settling"
            assert receiver.stored_md5("shared.bin") is None
            holder.write(b"y" * 10_000)
        daemon.wait_states({"drop:shared.bin": "done"}, timeout=FAST)
    assert_arrived_once(receiver, path)
    assert path.stat().st_size == 20_000


def test_a_writer_that_reopens_during_the_upload_is_caught(receiver, tmp_path) -> None:
    """Found ready on its close, then appended to while it uploads (slowed by a bandwidth
    cap): that upload is abandoned, never completed, and the final content follows."""
    path = tmp_path / "drop" / "reopened.bin"
    with FaultProxy(receiver.url, seed=1, rules=[Rule(Forward(bandwidth=1.5 * MiB))]) as proxy:
        config = make_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token,
                             part_size="256KiB", watches=[
                                 {"name": "drop", "path": str(tmp_path / "drop"), "target": "main",
                                  "settle": {"quiet": QUIET, "max_wait": "2m", "on_close": True}}])
        with DaemonProcess(config) as daemon:
            wait_watching(daemon)
            write_random(path, 3 * MiB)
            wait_until(lambda: upload_offset(daemon.journal_path, "drop:reopened.bin") >= MiB, timeout=FAST,
                       what="a third sent")
            with open(path, "ab") as f:
                f.write(b"z" * 100 * 1024)
            daemon.wait_states({"drop:reopened.bin": "done"}, timeout=FAST)
        states = [r[0] for r in journal_rows(daemon.journal_path, "SELECT state FROM uploads ORDER BY id")]
    assert states == ["abandoned", "completed"], states
    assert_arrived_once(receiver, path)
