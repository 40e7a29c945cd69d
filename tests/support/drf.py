"""A real drf-chunked-upload server (Django + DRF + waitress) on 127.0.0.1, in a subprocess.

Used by the ``drf_server`` fixture (tests/interop/conftest.py) and usable directly::

    with DrfServer.start() as server:
        upload_file(server.url, path, token=server.token)
        assert server.completed()[path.name] == md5_of(path)

The Django project lives in ``tests/interop/drf_project``. Everything (sqlite DB, media root,
Django's upload temp dir, the server's log) sits in one temp dir removed by ``stop()``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import requests

from tests.support.files import md5_of

PROJECT_PARENT = Path(__file__).resolve().parents[1] / "interop"  # holds drf_project/
TABLE = "drf_chunked_upload_chunkedupload"
UPLOADING, COMPLETE = 1, 2


@dataclass(frozen=True)
class DrfSession:
    """One ChunkedUpload row, as stored by the server."""

    id: str
    filename: str
    offset: int
    status: int  # 1 uploading, 2 complete
    path: Path | None  # the stored file (…/<id>.part, or <id>.done once complete)
    username: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DrfServer:
    """A running server. Attributes: ``url`` (``http://127.0.0.1:PORT/chunked_upload/``),
    ``token`` (DRF token of user ``syncd``), ``other_token`` (a second user, ``other``),
    ``media_root``, ``root`` (the temp dir), ``db_path``, ``port``, ``process``."""

    USERNAME = "syncd"
    OTHER_USERNAME = "other"

    def __init__(
        self,
        root: Path,
        *,
        expiration_seconds: float | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.root = root
        self.expiration_seconds = expiration_seconds
        self.max_bytes = max_bytes
        self.db_path = root / "db.sqlite3"
        self.media_root = root / "media"
        self.upload_tmp = root / "upload-tmp"
        self.log_path = root / "server.log"
        self.token = secrets.token_hex(20)
        self.other_token = secrets.token_hex(20)
        self.port = 0
        self.url = ""
        self.base_url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._threads = 8

    # ---------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        *,
        ready_timeout: float = 30.0,
        threads: int = 8,
        expiration_seconds: float | None = None,
        max_bytes: int | None = None,
    ) -> DrfServer:
        """Set up a fresh DB and start serving. ``expiration_seconds`` / ``max_bytes``
        override drf-chunked-upload's session lifetime (1 day) and size limit (none)."""
        root = Path(tempfile.mkdtemp(prefix="syncd-drf-"))
        server = cls(root, expiration_seconds=expiration_seconds, max_bytes=max_bytes)
        try:
            server._setup_db()
            server._serve(ready_timeout=ready_timeout, threads=threads)
        except BaseException:
            server.stop()
            raise
        return server

    def __enter__(self) -> DrfServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="drf_project.settings",
            SYNCD_DRF_DB=str(self.db_path),
            SYNCD_DRF_MEDIA_ROOT=str(self.media_root),
            SYNCD_DRF_UPLOAD_TMP=str(self.upload_tmp),
            PYTHONPATH=os.pathsep.join(
                [str(PROJECT_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            ),
            PYTHONDONTWRITEBYTECODE="1",
            PYTHONUNBUFFERED="1",
        )
        env.pop("SYNCD_DRF_EXPIRATION_SECONDS", None)
        env.pop("SYNCD_DRF_MAX_BYTES", None)
        if self.expiration_seconds is not None:
            env["SYNCD_DRF_EXPIRATION_SECONDS"] = repr(float(self.expiration_seconds))
        if self.max_bytes is not None:
            env["SYNCD_DRF_MAX_BYTES"] = str(int(self.max_bytes))
        return env

    def _setup_db(self) -> None:
        self.media_root.mkdir()
        self.upload_tmp.mkdir()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "drf_project.setup_db",
                f"{self.USERNAME}={self.token}",
                f"{self.OTHER_USERNAME}={self.other_token}",
            ],
            cwd=self.root,
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"drf-chunked-upload setup (migrate + token) failed, exit {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def _serve(self, *, ready_timeout: float, threads: int, port: int | None = None) -> None:
        self._threads = threads
        for attempt in range(3):
            self.port = port or _free_port()
            self.base_url = f"http://127.0.0.1:{self.port}"
            self.url = f"{self.base_url}/chunked_upload/"
            self._log = self.log_path.open("ab")
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "waitress",
                    f"--listen=127.0.0.1:{self.port}",
                    f"--threads={threads}",
                    "drf_project.wsgi:application",
                ],
                cwd=self.root,
                env=self._env(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready(ready_timeout):
                return
            exit_code = self.process.poll()
            self._kill()
            log = self.server_log()
            if "Address already in use" in log and port is None and attempt < 2:
                continue  # lost the port race; pick another
            state = "still running, terminated" if exit_code is None else f"exit code {exit_code}"
            raise RuntimeError(
                f"drf-chunked-upload server on 127.0.0.1:{self.port} did not become ready "
                f"within {ready_timeout}s ({state}); its output:\n{log}"
            )

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                # Unauthenticated: DRF's 401 proves Django (not some other listener) serves.
                with requests.get(self.url, timeout=2) as r:
                    if r.status_code == 401 and r.headers.get("WWW-Authenticate") == "Token":
                        return True
            except requests.RequestException:
                pass
            time.sleep(0.05)
        return False

    def _kill(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop_process(self) -> None:
        """Terminate the server process only (DB and media stay): clients now get
        connection refused. ``start_process()`` serves the same data again."""
        self._kill()

    def start_process(self, *, ready_timeout: float = 30.0) -> None:
        """Serve again on the same port, with the same DB, media and tokens."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server process is already running")
        self._serve(ready_timeout=ready_timeout, threads=self._threads, port=self.port)

    def stop(self) -> None:
        """Terminate the server, wait for it, remove the temp dir. Idempotent."""
        self._kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ---------------------------------------------------------------- helpers

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Token {self.token if token is None else token}"}

    def session_url(self, upload_id: str | uuid.UUID) -> str:
        return f"{self.url}{uuid.UUID(str(upload_id))}/"

    # ---------------------------------------------------------------- server state

    def sessions(self) -> list[DrfSession]:
        """Every ChunkedUpload row (any user, any status), oldest first."""
        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute(
                f"SELECT c.id, c.filename, c.offset, c.status, c.file, u.username "
                f"FROM {TABLE} c JOIN auth_user u ON u.id = c.user_id "
                f"ORDER BY c.created_at"
            ).fetchall()
        finally:
            con.close()
        return [
            DrfSession(
                id=str(uuid.UUID(str(row[0]))),
                filename=row[1],
                offset=row[2],
                status=row[3],
                path=(self.media_root / row[4]) if row[4] else None,
                username=row[5],
            )
            for row in rows
        ]

    def completed(self) -> dict[str, str]:
        """``filename`` -> MD5 of the stored file, for every completed upload (status 2).

        A filename completed twice maps to the later upload; tests use unique names.
        """
        return {
            s.filename: md5_of(s.path)
            for s in self.sessions()
            if s.status == COMPLETE and s.path is not None
        }

    def completed_sessions(self, filename: str) -> list[DrfSession]:
        """The completed uploads stored under ``filename`` (to check "exactly once")."""
        return [s for s in self.sessions() if s.status == COMPLETE and s.filename == filename]

    def session(self, upload_id: str) -> DrfSession:
        wanted = str(uuid.UUID(str(upload_id)))
        for s in self.sessions():
            if s.id == wanted:
                return s
        raise KeyError(upload_id)

    def as_dict(self) -> dict[str, Any]:  # for failure messages
        return {"url": self.url, "root": str(self.root), "pid": getattr(self.process, "pid", None)}
