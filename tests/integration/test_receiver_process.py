"""``python -m syncd.server`` (what ``syncd serve`` runs) as a real process: exit codes,
signals, sd_notify, and a token that never reaches its output."""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.receiver import (
    RawPart,
    complete,
    get,
    md5_hex,
    refuses_connections,
    running,
    stored_files,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
TOKEN = "process-test-token-91c2"


class Serve:
    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.server", *args],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Reads stderr (raw, so no line hides in a buffer select cannot see) until ``pattern``."""
        assert self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.text):
                return match
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.output.append(chunk.decode())
        raise AssertionError(f"no {pattern!r} in output: {self.text}")

    def finish(self, timeout: float = 10.0) -> int:
        try:
            _, rest = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        self.output.append(rest or "")
        return self.proc.returncode

    @property
    def text(self) -> str:
        return "".join(self.output)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def test_serves_until_sigterm_and_tells_systemd(tmp_path: Path, notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    root = tmp_path / "root"
    serve = Serve(
        "--root", str(root), "--listen", "127.0.0.1:0",
        env={"SYNCD_RECEIVER_TOKEN": TOKEN, "NOTIFY_SOCKET": path},
    )  # fmt: skip
    try:
        url = serve.wait_for(r"listening on (http://\S+)").group(1)
        assert sock.recv(1024) == b"READY=1"
        assert requests.get(url.replace("chunked_upload/", "healthz"), timeout=10).ok
        answer = requests.post(
            url,
            files={"file": ("x", b"hello")},
            data={"filename": "hello.txt", "md5": md5_hex(b"hello")},
            headers={"Authorization": f"Token {TOKEN}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        refused = requests.get(url + "x/", headers={"Authorization": "Token nope"}, timeout=10)
        assert refused.status_code == 401
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0
    finally:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.communicate()
    assert sock.recv(1024) == b"STOPPING=1"
    assert "stored hello.txt: 5 B" in serve.text
    assert TOKEN not in serve.text
    assert stored_files(root) == {"hello.txt": b"hello"}


def test_sigint_stops_it_cleanly(tmp_path: Path) -> None:
    serve = Serve("--root", str(tmp_path / "root"), "--listen", "127.0.0.1:0", "--no-auth")
    serve.wait_for(r"listening on")
    serve.proc.send_signal(signal.SIGINT)
    assert serve.finish() == 0
    assert "Traceback" not in serve.text


def test_a_bad_flag_exits_2_with_one_line(tmp_path: Path) -> None:
    serve = Serve("--root", str(tmp_path), "--no-auth", "--expire", "soon")
    assert serve.finish() == 2
    assert serve.text == "syncd serve: --expire: 'soon' is not a duration (e.g. 5s, 2m)\n"


def test_a_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = Serve("--root", str(tmp_path / "root"), "--listen", f"127.0.0.1:{port}", "--no-auth")
        assert serve.finish() == 1
    assert f"cannot start the receiver on 127.0.0.1:{port}" in serve.text
    assert "Traceback" not in serve.text


def test_no_auth_serves_anyone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    serve = Serve("--root", str(root), "--listen", "127.0.0.1:0", "--no-auth", "--base-path", "in")
    try:
        url = serve.wait_for(r"listening on (http://\S+)").group(1)
        assert url.endswith("/in/chunked_upload/")
        answer = requests.post(
            url, files={"file": ("x", b"hi")}, data={"filename": "a.txt", "md5": md5_hex(b"hi")}, timeout=10
        )
        assert answer.status_code == 200, answer.text
    finally:
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0
    assert stored_files(root) == {"a.txt": b"hi"}


def test_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    serve = Serve("--root", str(tmp_path / "root"), "--listen", "127.0.0.1:0", "--token-file", str(tmp_path / "token"))
    try:
        url = serve.wait_for(r"listening on (http://\S+)").group(1)
        assert requests.get(url + "x/", timeout=10).status_code == 401
        data = b"x" * 10
        headers = {"Authorization": f"Bearer {TOKEN}"}
        answer = requests.post(
            url, files={"file": ("x", data)}, data={"filename": "t", "md5": md5_hex(data)}, headers=headers, timeout=10
        )
        assert answer.status_code == 200
    finally:
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.finish() == 0
    assert TOKEN not in serve.text


def test_sigterm_lets_a_part_in_flight_finish(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first, part = os.urandom(1000), os.urandom(4 << 20)
    total = len(first) + len(part)
    serve = Serve("--root", str(root), "--listen", "127.0.0.1:0", "--no-auth")
    raw: RawPart | None = None
    try:
        url = serve.wait_for(r"listening on (http://\S+)").group(1)
        port = int(re.search(r":(\d+)/", url).group(1))  # type: ignore[union-attr]
        doc = requests.put(
            url,
            files={"file": ("x", first)},
            data={"filename": "f.bin"},
            headers={"Content-Range": f"bytes 0-999/{total}"},
            timeout=10,
        ).json()
        raw = RawPart(port, f"/chunked_upload/{doc['id']}/", part, start=1000, total=total)
        raw.send(len(part) // 2)
        data_file = root / ".incoming" / f"{doc['id']}.part"
        wait_until(lambda: data_file.stat().st_size > 1000, what="the part is being written")
        serve.proc.send_signal(signal.SIGTERM)
        serve.wait_for(r"waiting up to 10s for 1 request\(s\) in flight")
        assert refuses_connections(port)
        status, answer = raw.finish()
        assert (status, answer["offset"]) == (200, total)
        assert serve.finish() == 0
    finally:
        if raw is not None:
            raw.close()
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.communicate()
    assert "Traceback" not in serve.text and "cut off" not in serve.text
    with running(root) as again:
        resumed = f"{again.url}{doc['id']}/"
        assert get(resumed).json()["offset"] == total
        assert complete(resumed, md5_hex(first + part)).status_code == 200
    assert stored_files(root) == {"f.bin": first + part}
