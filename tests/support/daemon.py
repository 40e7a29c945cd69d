"""Run the real ``syncd run`` as a subprocess against real folders and a real server."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def make_config(base: Path, *, url: str, token: str | None, part_size: str | int = "64KiB",
                quiet: str = "0.3s", watches: list[dict] | None = None, **extra: Any) -> Path:
    """A config with one target ``main`` and, by default, one watch ``drop`` on ``base/drop``."""
    (base / "drop").mkdir(exist_ok=True)
    target: dict[str, Any] = {
        "url": url, "part_size": part_size,
        "timeout": {"connect": "2s", "read": "10s"},
        "retry": {"initial": "50ms", "max": "500ms", "budget": "3s", "waiting_initial": "500ms",
                  "waiting_max": "2s"},
    }
    if token:
        target["token"] = token
    data: dict[str, Any] = {
        "journal": str(base / "state" / "journal.db"),
        "staging_dir": str(base / "state" / "staging"),
        "targets": {"main": target},
        "watches": watches if watches is not None else [
            {"name": "drop", "path": str(base / "drop"), "target": "main",
             "settle": {"quiet": quiet, "max_wait": "30s"}}],
    }
    data.update(extra)
    path = base / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class DaemonProcess:
    def __init__(self, config: Path, *, env: dict[str, str] | None = None, log_level: str | None = "DEBUG"):
        """``log_level=None`` leaves the level to the config's ``log.level``."""
        self.config = config
        self.log_path = config.parent / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        self.env.pop("NOTIFY_SOCKET", None)
        self.log_level = log_level
        self.proc: subprocess.Popen | None = None
        self.journal_path = Path(yaml.safe_load(config.read_text())["journal"])

    def start(self) -> DaemonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "-c", str(self.config),
             *(["--log-level", self.log_level] if self.log_level else [])],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        log.close()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, *, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill() if exc[0] is not None else self.stop()

    # --- reading the journal like `syncd status` does ---------------------------------

    def rows(self) -> dict[str, dict[str, Any]]:
        if not self.journal_path.exists():
            return {}
        db = sqlite3.connect(f"file:{self.journal_path}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return {f"{r['watch']}:{r['relpath']}": dict(r) for r in db.execute("SELECT * FROM files")}
        except sqlite3.OperationalError:
            return {}
        finally:
            db.close()

    def states(self) -> dict[str, str]:
        return {k: v["state"] for k, v in self.rows().items()}

    def wait_until_log(self, text: str, *, timeout: float = 30.0) -> None:
        """Until ``text`` appears in the daemon's log."""
        try:
            wait_until(lambda: text in self.log(), timeout=timeout, what=repr(text))
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{self.log()[-4000:]}") from None

    def wait_states(self, expected: dict[str, str], *, timeout: float = 30.0) -> dict[str, str]:
        def check():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            states = self.states()
            return states if all(states.get(k) == v for k, v in expected.items()) else None

        try:
            return wait_until(check, timeout=timeout, what=f"states {expected}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; now {self.states()}\n--- daemon log ---\n{self.log()[-4000:]}") from None
