"""Bandwidth limits of the real daemon, measured in bytes on the wire by a counting proxy
between the daemon and the built-in receiver."""

from __future__ import annotations

import os
import select
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.support.counting_proxy import CountingProxy
from tests.support.daemon import REPO, DaemonProcess, make_config, wait_until
from tests.support.files import md5_of, write_random

MiB = 1024**2
RATE = 4 * MiB
WINDOW = 10.0
SETTLE_IN = 1.0
"""seconds skipped after the first byte: the first block and the bucket's initial fill"""


def slope(timeline: list[tuple[float, int]], start: float, seconds: float) -> float:
    """Bytes per second over [start, start + seconds]: the least-squares slope of the
    cumulative count, so the 1 MiB send blocks at the window's edges do not skew it."""
    points = [(t, n) for t, n in timeline if start <= t <= start + seconds]
    assert len(points) >= 10, f"only {len(points)} samples in the window"
    mean_t = sum(t for t, _ in points) / len(points)
    mean_n = sum(n for _, n in points) / len(points)
    cov = sum((t - mean_t) * (n - mean_n) for t, n in points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    return cov / var


def measure(proxy: CountingProxy, daemon: DaemonProcess) -> float:
    wait_until(lambda: proxy.timeline, timeout=30, what="the first byte")
    start = proxy.timeline[0][0] + SETTLE_IN

    def window_passed() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{daemon.log()[-3000:]}")
        return bool(proxy.timeline) and proxy.timeline[-1][0] >= start + WINDOW

    wait_until(window_passed, timeout=60, what="ten seconds of uploading")
    return slope(list(proxy.timeline), start, WINDOW)


def drop_files(tmp_path, names: list[str], size: int) -> None:
    for name in names:
        staged = write_random(tmp_path / f"staged-{name}", size)
        os.rename(staged, tmp_path / "drop" / name)  # appears whole: no settling on a half-written file


@pytest.mark.parametrize(("uploads", "where"), [(1, "target"), (4, "overall")])
def test_limit_holds_on_the_wire(receiver, tmp_path, uploads, where):
    """One upload limited by its target's bucket, four concurrent ones by the overall bucket:
    the bytes the proxy sees over ten seconds are within 5% of the limit."""
    total = int(RATE * (SETTLE_IN + WINDOW + 2))
    names = [f"{tmp_path.name}-{i}.bin" for i in range(uploads)]
    with CountingProxy(receiver.port) as proxy:
        config = make_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size="50MiB",
                             concurrency={"uploads": uploads})
        data = config.read_text()
        if where == "target":
            data = data.replace("  main:\n", "  main:\n    bandwidth: 4MiB/s\n", 1)
        else:
            data += "bandwidth: 4MiB/s\n"
        config.write_text(data)
        with DaemonProcess(config, log_level="INFO") as daemon:
            drop_files(tmp_path, names, total // uploads)
            rate = measure(proxy, daemon)
            daemon.wait_states({f"drop:{name}": "done" for name in names}, timeout=60)
    print(f"\n{uploads} upload(s), {where} limit: {rate / MiB:.4f} MiB/s on the wire")
    assert abs(rate / RATE - 1) < 0.05, f"{rate / MiB:.3f} MiB/s on the wire, limit {RATE / MiB:.0f} MiB/s"
    for name in names:
        assert receiver.stored_md5(name) == md5_of(tmp_path / "drop" / name)


def test_a_zero_limit_holds_uploads_until_a_reload_lifts_it(receiver, tmp_path):
    """``bandwidth: 0`` starts nothing (files settle and queue); a reload to ``off`` lets them go."""
    name = f"{tmp_path.name}-held.bin"
    config = make_config(tmp_path, url=receiver.url, token=receiver.token, part_size="256KiB")
    config.write_text(config.read_text().replace("  main:\n", "  main:\n    bandwidth: 0\n", 1))
    with DaemonProcess(config, log_level="DEBUG") as daemon:
        drop_files(tmp_path, [name], 1 * MiB)
        daemon.wait_states({f"drop:{name}": "ready"}, timeout=15)
        for _ in range(20):  # two seconds of loop steps: it stays queued, with no upload opened
            assert daemon.states()[f"drop:{name}"] == "ready"
            assert "handed to a worker" not in daemon.log()
            time.sleep(0.1)
        config.write_text(config.read_text().replace("    bandwidth: 0\n", "", 1))
        daemon.signal(signal.SIGHUP)
        daemon.wait_states({f"drop:{name}": "done"}, timeout=20)
    assert receiver.stored_md5(name) == md5_of(tmp_path / "drop" / name)


def sent_at(timeline: list[tuple[float, int]], when: float) -> int:
    """Bytes the proxy had seen at ``when``."""
    return max((n for t, n in timeline if t <= when), default=0)


def test_a_reload_changes_the_limit_of_a_running_upload(receiver, tmp_path):
    """SIGHUP with a higher limit speeds up the upload in progress: same session, no restart.
    (Rates here are coarse, over 1 MiB send blocks: 1 MiB/s before, 4 MiB/s after.)"""
    name = f"{tmp_path.name}-reload.bin"
    with CountingProxy(receiver.port) as proxy:
        config = make_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size="50MiB")
        config.write_text(config.read_text() + "bandwidth: 1MiB/s\n")
        with DaemonProcess(config, log_level="INFO") as daemon:
            drop_files(tmp_path, [name], 16 * MiB)
            wait_until(lambda: proxy.sent >= 4 * MiB, timeout=30, what="4 MiB on the wire")
            timeline = list(proxy.timeline)
            before = (timeline[-1][1] - timeline[0][1]) / (timeline[-1][0] - timeline[0][0])
            config.write_text(config.read_text().replace("bandwidth: 1MiB/s", "bandwidth: 4MiB/s"))
            daemon.signal(signal.SIGHUP)
            wait_until(lambda: "reloaded" in daemon.log(), timeout=10, what="the reload")
            reloaded_at = time.monotonic()
            wait_until(lambda: proxy.timeline[-1][0] >= reloaded_at + 2.5 or proxy.sent >= 16 * MiB, timeout=30,
                       what="2.5 s after the reload")
            timeline = list(proxy.timeline)
            after = (sent_at(timeline, reloaded_at + 2.5) - sent_at(timeline, reloaded_at + 0.5)) / 2.0
            daemon.wait_states({f"drop:{name}": "done"}, timeout=30)
    print(f"\nreload 1 -> 4 MiB/s: {before / MiB:.2f} MiB/s before, {after / MiB:.2f} MiB/s after")
    assert before < 1.5 * MiB and after > 2.5 * MiB, (before / MiB, after / MiB)
    db = sqlite3.connect(daemon.journal_path)
    assert db.execute("SELECT count(*) FROM uploads").fetchone() == (1,)  # one session, never restarted
    db.close()
    assert receiver.stored_md5(name) == md5_of(tmp_path / "drop" / name)


def test_syncd_upload_waits_on_a_zero_limit_and_stops_on_ctrl_c(receiver, tmp_path):
    config = make_config(tmp_path, url=receiver.url, token=receiver.token, part_size="64KiB")
    config.write_text(config.read_text() + "bandwidth: 0\n")
    path = write_random(tmp_path / "held.bin", 200 * 1024)
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "upload", "-c", str(config), "--target", "main",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert select.select([proc.stderr], [], [], 15)[0], "no message within 15 s"
        first = proc.stderr.readline()
        assert first.startswith("syncd upload: the bandwidth limit is 0 now (config.yaml: bandwidth)"), first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 1 and "held.bin: interrupted by shutdown (run again to resume)" in err
    assert receiver.stored_md5("held.bin") is None
    config.write_text(config.read_text().replace("bandwidth: 0\n", "bandwidth: 1MiB/s\n"))
    done = subprocess.run([sys.executable, "-m", "syncd", "upload", "-c", str(config), "--target", "main",
                           str(path)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert receiver.stored_md5("held.bin") == md5_of(path)
