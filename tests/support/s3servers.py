"""Real S3 servers on 127.0.0.1 for tests: ``rclone serve s3``, the moto server and s3rver.

Each starts as a subprocess on a free port, is waited for until it answers, and is stopped
by its PID (its temporary folder removed). ``client()`` is a boto3 client straight to the
server (no proxy), for tests to look at what the server holds.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACCESS_KEY = "syncdtestkey"
SECRET_KEY = "syncd-test-secret-key"
BUCKET = "syncd-test"
S3RVER = REPO / ".ci" / "cache" / "node" / "node_modules" / "s3rver" / "bin" / "s3rver.js"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_client(url: str, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                        region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 2},
                                      request_checksum_calculation="when_required",
                                      response_checksum_validation="when_required"))


class S3Server:
    """A server subprocess; subclasses say how to start it and what it can do."""

    name = ""
    can_list_parts = True
    can_abort = True
    can_list_uploads = True
    min_part_size = 64 * 1024
    """the smallest part this server takes (moto is told to take 64 KiB parts)"""
    access_key = ACCESS_KEY
    secret_key = SECRET_KEY

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"syncd-{self.name}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._client: Any | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def start(self, *, timeout: float = 60.0) -> S3Server:
        log = (self.dir / "server.log").open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                                     env={**os.environ, **self.env()}, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not listen within {timeout}s: {self.log()[-2000:]}") \
                        from None
                time.sleep(0.1)
        try:
            self.ensure_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def ensure_bucket(self) -> None:
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.head_bucket(Bucket=BUCKET)
                return
            except Exception:
                try:
                    client.create_bucket(Bucket=BUCKET)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.url, access_key=self.access_key, secret_key=self.secret_key)
        return self._client

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- what the server holds -------------------------------------------------------------

    def stored_md5(self, key: str) -> str | None:
        try:
            body = self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return hashlib.md5(body).hexdigest()

    def head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client().head_object(Bucket=BUCKET, Key=key)
        except Exception as exc:
            if getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise

    def keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents") or []]
        return keys

    def open_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """Incomplete multipart uploads under ``prefix`` (rclone answers 404 when none)."""
        try:
            answer = self.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "NoSuchUpload":
                return []
            raise
        return list(answer.get("Uploads") or [])

    def abort_all(self, prefix: str = "") -> int:
        uploads = self.open_uploads(prefix)
        for upload in uploads:
            self.client().abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])
        return len(uploads)


class RcloneS3(S3Server):
    """``rclone serve s3`` over a local folder: path style, part ETags and whole-object HEAD
    ETags are MD5s (``--etag-hash MD5``), checks Content-MD5, keeps multipart uploads in
    memory only."""

    name = "rclone"

    def command(self) -> list[str]:
        root = self.dir / "data"
        (root / BUCKET).mkdir(parents=True, exist_ok=True)
        rclone = shutil.which("rclone", path=str(BIN)) or shutil.which("rclone") or "rclone"
        return [rclone, "serve", "s3", "--addr", f"127.0.0.1:{self.port}", "--auth-key",
                f"{ACCESS_KEY},{SECRET_KEY}", "--etag-hash", "MD5", "--config", "/dev/null",
                "--cache-dir", str(self.dir / "cache"), "--log-level", "ERROR", str(root)]


class MotoS3(S3Server):
    """The moto server: AWS's ``-N`` ETags for multipart objects, metadata kept, conditional
    writes honoured; told to take parts from 64 KiB (AWS: 5 MiB). It checks no signature."""

    name = "moto"

    def command(self) -> list[str]:
        return [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]

    def env(self) -> dict[str, str]:
        return {"S3_UPLOAD_PART_MIN_SIZE": str(self.min_part_size), "MOTO_ALLOW_NONEXISTENT_REGION": "1"}


class S3rver(S3Server):
    """s3rver (npm): fresh uploads only. It answers ListParts and AbortMultipartUpload with
    405 and ListMultipartUploads with 501, so nothing of a resume can be checked on it."""

    name = "s3rver"
    can_list_parts = False
    can_abort = False
    can_list_uploads = False
    access_key = secret_key = "S3RVER"  # its fixed credentials; it checks signatures

    def command(self) -> list[str]:
        (self.dir / "data").mkdir(exist_ok=True)
        return ["node", str(S3RVER), "--address", "127.0.0.1", "--port", str(self.port), "--silent",
                "--directory", str(self.dir / "data"), "--configure-bucket", BUCKET]

    def ensure_bucket(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client().head_bucket(Bucket=BUCKET)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


SERVERS = {cls.name: cls for cls in (RcloneS3, MotoS3, S3rver)}
