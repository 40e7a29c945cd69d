"""Receiver throughput and memory: one big upload in parts, the receiver in its own process.

    .venv/bin/python bench/receiver.py [--size 1GiB] [--part 50MiB] [--clients streaming,sdk]

The receiver runs as ``python -m syncd.server`` so its RSS is its own; its peak is the
kernel's high-water mark (``VmHWM``), sampled RSS as a cross-check. Clients:

* ``streaming``: how syncd uploads: each part streamed from the file through a
  requests-toolbelt MultipartEncoder over a bounded slice (never in memory whole);
* ``sdk``: what synapse-sdk does (tests/support/synapse_client.py): each part read
  into memory, then encoded by requests.

Prints one table row per client. Data is random, written to a temp dir first (not timed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import psutil
import requests
from requests.adapters import HTTPAdapter
from requests_toolbelt import MultipartEncoder

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from syncd.units import format_size, parse_size  # noqa: E402
from tests.support.synapse_client import upload_file as sdk_upload  # noqa: E402

MiB = 1024 * 1024


class FileSlice:
    """``length`` bytes of ``f`` from ``offset``, read on demand; feeds ``digest`` as it goes."""

    def __init__(self, f: BinaryIO, offset: int, length: int, digest: Any) -> None:
        self._f, self._left, self._digest = f, length, digest
        f.seek(offset)

    def __len__(self) -> int:  # requests-toolbelt sizes the body with it
        return self._left

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        self._digest.update(data)
        return data


class LargeBlocks(HTTPAdapter):
    """Sends a streamed body in 1 MiB blocks instead of http.client's 8 KiB."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["blocksize"] = MiB
        super().init_poolmanager(*args, **kwargs)


def streaming_upload(url: str, path: Path, *, part: int, name: str) -> dict[str, Any]:
    total = path.stat().st_size
    digest = hashlib.md5()
    with requests.Session() as http, path.open("rb") as f:
        http.mount("http://", LargeBlocks())
        offset = 0
        while offset < total:
            length = min(part, total - offset)
            encoder = MultipartEncoder(
                fields=[
                    ("filename", name),
                    ("file", (name, FileSlice(f, offset, length, digest), "application/octet-stream")),
                ]
            )
            answer = http.put(
                url,
                data=encoder,
                headers={
                    "Content-Type": encoder.content_type,
                    "Content-Range": f"bytes {offset}-{offset + length - 1}/{total}",
                },
                timeout=300,
            )
            answer.raise_for_status()
            url, offset = answer.json()["url"], answer.json()["offset"]
        done = http.post(url, json={"md5": digest.hexdigest()}, timeout=300)
        done.raise_for_status()
        return done.json()


def write_source(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 * MiB))
            f.write(block)
            left -= len(block)


class Receiver:
    """``python -m syncd.server`` on a free loopback port, watched for memory."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "syncd.server", "--root", str(root),
                "--listen", "127.0.0.1:0", "--no-auth", "--max-size", "none", "--min-free", "0",
            ],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        self.url = self._wait_for_url()
        self.ps = psutil.Process(self.proc.pid)
        self.idle_rss = self.ps.memory_info().rss
        self.sampled_peak = self.idle_rss
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler")
        self._sampler.start()

    def _wait_for_url(self) -> str:
        assert self.proc.stderr is not None
        fd, text = self.proc.stderr.fileno(), ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if match := re.search(r"listening on (http://\S+)", text):
                return match.group(1)
            if select.select([fd], [], [], 0.1)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                text += chunk.decode()
        self.proc.kill()
        raise SystemExit(f"the receiver did not start:\n{text}")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            try:
                self.sampled_peak = max(self.sampled_peak, self.ps.memory_info().rss)
            except psutil.Error:
                return

    def peak_rss(self) -> int:
        """The kernel's high-water mark of the receiver's RSS (sampled peak off Linux)."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
        except (OSError, AttributeError):
            return self.sampled_peak

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def run(client: str, source: Path, workdir: Path, *, part: int) -> dict[str, Any]:
    root = workdir / f"root-{client}"
    receiver = Receiver(root)
    try:
        started = time.perf_counter()
        if client == "streaming":
            answer = streaming_upload(receiver.url, source, part=part, name=f"{client}.bin")
        else:
            answer = sdk_upload(receiver.url, source, filename=f"{client}.bin", chunk_size=part, timeout=300)
        seconds = time.perf_counter() - started
        peak, sampled, idle = receiver.peak_rss(), receiver.sampled_peak, receiver.idle_rss
    finally:
        receiver.stop()
    stored = root / answer["path"]
    if answer["size"] != source.stat().st_size or not stored.is_file():
        raise SystemExit(f"{client}: upload did not store the whole file: {answer}")
    stored.unlink()  # free the disk before the next run
    return {"client": client, "seconds": seconds, "peak": peak, "sampled": sampled, "idle": idle}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="file size (default: %(default)s)")
    parser.add_argument("--part", default="50MiB", help="part size (default: %(default)s)")
    parser.add_argument("--clients", default="streaming,sdk", help="streaming, sdk or both (default: %(default)s)")
    parser.add_argument("--dir", default=None, help="where to put the temp data (default: the system temp dir)")
    args = parser.parse_args()
    size, part = parse_size(args.size), parse_size(args.part)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if unknown := set(clients) - {"streaming", "sdk"}:
        parser.error(f"--clients: unknown {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory(prefix="syncd-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        source = workdir / "source.bin"
        print(f"writing {format_size(size)} of random data to {source} ...", file=sys.stderr)
        write_source(source, size)
        rows = [run(client, source, workdir, part=part) for client in clients]

    print(f"\nreceiver: {format_size(size)} upload in {format_size(part)} parts, over loopback\n")
    header = f"{'client':<10} {'seconds':>8} {'MiB/s':>8} {'peak RSS':>10} {'sampled':>10} {'idle RSS':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['client']:<10} {row['seconds']:>8.2f} {size / MiB / row['seconds']:>8.1f} "
            f"{format_size(row['peak']):>10} {format_size(row['sampled']):>10} {format_size(row['idle']):>10}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
