"""SIGHUP applies log.level, log.format and metrics.listen in place, and names what changed
(issue 13, item 8); receiver changes are named as needing a restart."""

from __future__ import annotations

import json
import signal
import socket

import requests
import yaml

from tests.support.daemon import DaemonProcess, make_config, wait_until
from tests.support.files import write_random


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str | None:
    try:
        resp = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
    except requests.ConnectionError:
        return None
    return resp.text if resp.ok else None


def _reload(daemon: DaemonProcess, config, change) -> None:
    data = yaml.safe_load(config.read_text())
    change(data)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    before = daemon.log().count("reloaded ")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.log().count("reloaded ") > before or "reload refused" in daemon.log(), timeout=15,
               what="the reload")


def test_reload_applies_log_level_format_and_metrics_listen(tmp_path, receiver):
    first, second = _free_port(), _free_port()
    config = make_config(tmp_path, url=receiver.url, token=receiver.token, log={"level": "WARNING"},
                         metrics={"listen": f"127.0.0.1:{first}"})
    with DaemonProcess(config, log_level=None) as daemon:
        write_random(tmp_path / "drop" / "quiet.bin", 1000)
        daemon.wait_states({"drop:quiet.bin": "done"})
        assert wait_until(lambda: _scrape(first), timeout=10, what="metrics on the first port")
        assert "quiet.bin: uploaded" not in daemon.log()  # INFO, under log.level WARNING

        def louder_elsewhere(data):
            data["log"] = {"level": "INFO", "format": "json"}
            data["metrics"] = {"listen": f"127.0.0.1:{second}"}

        _reload(daemon, config, louder_elsewhere)
        text = wait_until(lambda: _scrape(second), timeout=10, what="metrics on the second port")
        assert "syncd_files_uploaded_total 1.0" in text  # counts survive the move
        assert _scrape(first) is None
        write_random(tmp_path / "drop" / "loud.bin", 1000)
        daemon.wait_states({"drop:loud.bin": "done"})
        records = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
        messages = [r["msg"] for r in records]
        assert any(m.startswith("reloaded ") and "changed: log.level, log.format, metrics.listen" in m
                   for m in messages), messages
        assert any(m.startswith("drop:loud.bin: uploaded as loud.bin") for m in messages), messages

        _reload(daemon, config, lambda data: data.update(metrics={"listen": None}))
        wait_until(lambda: _scrape(second) is None, timeout=10, what="the metrics endpoint to stop")


def test_reload_names_receiver_keys_that_need_a_restart(tmp_path, receiver):
    port = _free_port()
    config = make_config(tmp_path, url=receiver.url, token=receiver.token,
                         receiver={"root": str(tmp_path / "own"), "listen": f"127.0.0.1:{port}",
                                   "allow_anonymous": True})
    with DaemonProcess(config) as daemon:
        write_random(tmp_path / "drop" / "first.bin", 10)
        daemon.wait_states({"drop:first.bin": "done"})  # running: SIGHUP now reaches its handler

        def change(data):
            data["receiver"]["max_size"] = "1MiB"
            data["targets"]["main"]["part_size"] = "128KiB"

        _reload(daemon, config, change)
        log = daemon.log()
        assert "reload: receiver.max_size: applied only at the next restart" in log
        assert "changed: targets.main.part_size, receiver.max_size" in log
