"""A real tus server (@tus/server 2.x with @tus/file-store) on 127.0.0.1, in a node subprocess.

The packages come from ``.ci/install-tus-server`` (into ``.ci/cache/tus``; another folder
through ``SYNCD_TUS_NODE_MODULES``); the server script is ``tests/support/tus_server.mjs``.
Without node or the packages a test skips, or fails under ``SYNCD_REQUIRE_TOOLS=1``.

What the server stored is read from the file store's folder: ``ID`` holds the bytes and
``ID.json`` the upload (its length and metadata).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.files import md5_of

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("tus_server.mjs")


def node_modules() -> Path:
    return Path(os.environ.get("SYNCD_TUS_NODE_MODULES") or REPO / ".ci" / "cache" / "tus" / "node_modules")


def require_tus_server() -> None:
    """Skip (or fail under SYNCD_REQUIRE_TOOLS=1) without node and @tus/server."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node on PATH")
    if not (node_modules() / "@tus" / "server").is_dir():
        missing.append(f"@tus/server in {node_modules()} (run .ci/install-tus-server)")
    if not missing:
        return
    message = f"needs {' and '.join(missing)}"
    if os.environ.get("SYNCD_REQUIRE_TOOLS") == "1":
        pytest.fail(message + " (SYNCD_REQUIRE_TOOLS=1)")
    pytest.skip(message)


@dataclass(frozen=True)
class StoredUpload:
    id: str
    filename: str | None
    length: int | None
    offset: int
    path: Path

    @property
    def finished(self) -> bool:
        return self.length is not None and self.offset == self.length


class TusServer:
    """``url`` is the creation endpoint (``http://127.0.0.1:PORT/files``); ``token`` the
    bearer token every request needs (None: no auth)."""

    def __init__(self, root: Path, *, token: str | None = None, max_size: int | None = None,
                 expire_ms: int | None = None, s3: dict[str, str] | None = None):
        self.root = root
        self.store = root / "store"
        self.token = token
        self.max_size = max_size
        self.expire_ms = expire_ms
        self.s3 = s3
        self.log_path = root / "tus-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @classmethod
    def start_in(cls, root: Path, **kw) -> TusServer:
        require_tus_server()
        root.mkdir(parents=True, exist_ok=True)
        return cls(root, **kw).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files"

    def start(self, *, timeout: float = 20.0) -> TusServer:
        options = {"modules": node_modules(), "dir": self.store, "port": self.port, "token": self.token,
                   "max-size": self.max_size, "expire-ms": self.expire_ms,
                   **{f"s3-{key}": value for key, value in (self.s3 or {}).items()}}
        # --key=value: a value may start with a dash
        args = ["node", str(SCRIPT)] + [f"--{key}={value}" for key, value in options.items() if value is not None]
        out = tempfile.TemporaryFile()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=out, stderr=log, cwd=self.root)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                out.seek(0)
                line = out.readline().decode()
                if line.startswith("listening "):
                    self.port = int(line.split()[1])
                    return self
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        finally:
            out.close()
        self.stop()
        raise RuntimeError(f"tus server did not start:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Stop and start on the same port (uploads live in the store folder)."""
        self.stop()
        self.start()

    # --- what the server holds (file store only) ----------------------------------------------

    def uploads(self) -> list[StoredUpload]:
        out = []
        for meta in sorted(self.store.glob("*.json")) if self.store.is_dir() else []:
            data_path = meta.with_suffix("")
            try:
                doc = json.loads(meta.read_text())
                offset = data_path.stat().st_size
            except (OSError, ValueError):
                continue  # being written or removed
            name = (doc.get("metadata") or {}).get("filename")
            out.append(StoredUpload(id=data_path.name, filename=name, length=doc.get("size"), offset=offset,
                                    path=data_path))
        return out

    def finished(self, filename: str) -> list[StoredUpload]:
        return [u for u in self.uploads() if u.filename == filename and u.finished]

    def stored_md5(self, filename: str) -> str | None:
        done = self.finished(filename)
        return md5_of(done[-1].path) if done else None

    def length_of(self, upload_id: str) -> int | None:
        try:
            return json.loads((self.store / f"{upload_id}.json").read_text()).get("size")
        except (OSError, ValueError):
            return None


def new_token() -> str:
    return secrets.token_urlsafe(16)


def decode_metadata(header: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = item.partition(" ")
        pairs[key] = base64.b64decode(value).decode() if value else ""
    return pairs
