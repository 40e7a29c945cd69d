"""The daemon as systemd sees it: sd_notify on a real AF_UNIX datagram socket, reload,
stop, journald-format logs, and the Prometheus endpoint during uploads."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import time

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import DaemonProcess, make_config, wait_until
from tests.support.files import write_random


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.messages: list[tuple[float, str]] = []

    def collect(self, *, until, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                data = None
            if data is not None:
                self.messages.append((time.monotonic(), data))
            if until(self.kinds()):
                return
        raise AssertionError(f"notify messages so far: {self.kinds()}")

    def kinds(self) -> list[str]:
        return [m.split("=", 1)[0] if not m.startswith("STATUS=") else "STATUS" for _, m in self.messages]

    def close(self):
        self.sock.close()


def test_notify_sequence_reload_and_stop(tmp_path, receiver):
    notify = NotifySocket(tmp_path / "notify.sock")
    config = make_config(tmp_path, url=receiver.url, token=receiver.token)
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"}
    daemon = DaemonProcess(config, env={})
    daemon.env.update(env)  # DaemonProcess hides NOTIFY_SOCKET by default; this test wants it
    daemon.start()
    try:
        notify.collect(until=lambda k: "READY" in k and k.count("WATCHDOG") >= 4, timeout=15)
        kinds = notify.kinds()
        assert kinds[0] == "READY"
        pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert all(0.3 <= g <= 0.8 for g in gaps), gaps  # half of WatchdogSec=1s
        write_random(tmp_path / "drop" / "a.bin", 1000)
        notify.collect(until=lambda k: any("done 1" in m for _, m in notify.messages), timeout=15)
        status = [m for _, m in notify.messages if m.startswith("STATUS=")]
        assert re.fullmatch(r"STATUS=uploading 0, queued 0, settling 0, waiting 0, failed 0, done 1, [0-9.]+ MiB/s",
                            status[-1]), status[-1]

        # a good config reloads: RELOADING=1 with MONOTONIC_USEC, then READY=1
        notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        notify.collect(until=lambda k: "RELOADING" in k and "READY" in k[k.index("RELOADING"):], timeout=10)
        reloading = next(m for _, m in notify.messages if m.startswith("RELOADING=1"))
        assert "MONOTONIC_USEC=" in reloading

        # a bad config is refused: the old one keeps running, and says why
        good = config.read_text()
        config.write_text(good.replace("quiet: 0.3s", "quiet: soon"))
        notify.messages.clear()
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused" in daemon.log(), timeout=10)
        assert "reload refused: config.yaml: watches[0].settle.quiet: 'soon' is not a duration" in daemon.log()
        config.write_text(good)
        write_random(tmp_path / "drop" / "b.bin", 1000)
        daemon.wait_states({"drop:b.bin": "done"}, timeout=15)

        notify.messages.clear()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0
        notify.collect(until=lambda k: "STOPPING" in k, timeout=2)
    finally:
        daemon.kill()
        notify.close()


def test_journald_format_and_no_token_anywhere(tmp_path, receiver):
    config = make_config(tmp_path, url=receiver.url, token=receiver.token)
    log_path = tmp_path / "daemon.log"
    log_path.touch()
    st = os.stat(log_path)
    daemon = DaemonProcess(config, env={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, log_level="DEBUG")
    with daemon:
        write_random(tmp_path / "drop" / "a.bin", 200 * 1024)
        daemon.wait_states({"drop:a.bin": "done"})
    lines = [line for line in daemon.log().splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert receiver.token not in line
        if not line.startswith(" ") and not line.startswith("Traceback"):
            assert line[:3] in ("<7>", "<6>", "<5>", "<4>", "<3>", "<2>"), line
            assert not line[3:5].isdigit(), line  # no timestamp: journald adds its own


def test_metrics_agree_with_the_journal(tmp_path, receiver):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(tmp_path, url=receiver.url, token=receiver.token,
                         metrics={"listen": f"127.0.0.1:{port}"})
    with DaemonProcess(config) as daemon:
        for i in range(5):
            write_random(tmp_path / "drop" / f"f{i}.bin", 100 * 1024 + i)
        daemon.wait_states({f"drop:f{i}.bin": "done" for i in range(5)})
        text = wait_until(lambda: _scrape(port), timeout=10, what="metrics endpoint")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        db = sqlite3.connect(f"file:{daemon.journal_path}?mode=ro", uri=True)
        try:
            journal_counts = dict(db.execute("SELECT state, count(*) FROM files GROUP BY state").fetchall())
        finally:
            db.close()
        by_state = {s.labels["state"]: s.value for s in families["syncd_files"].samples}
        assert by_state["done"] == journal_counts["done"] == 5
        uploaded = [s.value for s in families["syncd_files_uploaded"].samples if s.name.endswith("_total")]
        assert uploaded == [5]
        sent = [s.value for s in families["syncd_uploaded_bytes"].samples if s.name.endswith("_total")]
        assert sent == [sum(100 * 1024 + i for i in range(5))]
        assert families["syncd_queue_depth"].samples[0].value == 0


def _scrape(port: int) -> str | None:
    try:
        resp = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except requests.ConnectionError:
        return None
    return resp.text if resp.ok else None


def test_reload_with_journal_change_is_refused(tmp_path, receiver):
    config = make_config(tmp_path, url=receiver.url, token=receiver.token)
    with DaemonProcess(config) as daemon:
        wait_until(lambda: daemon.journal_path.exists(), timeout=10)
        data = yaml.safe_load(config.read_text())
        data["journal"] = str(tmp_path / "elsewhere.db")
        config.write_text(yaml.safe_dump(data))
        time.sleep(0.5)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: "reload refused: journal" in daemon.log(), timeout=10)
        write_random(tmp_path / "drop" / "still-works.bin", 10)
        daemon.wait_states({"drop:still-works.bin": "done"})
