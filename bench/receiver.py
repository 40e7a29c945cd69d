"""Receiver throughput, CPU and memory: one big upload in parts, the receiver in its own process.

    .venv/bin/python bench/receiver.py [--size 1GiB] [--part 50MiB] [--clients streaming,sdk,raw]
        [--rounds 3] [--code before=/path/to/old/checkout,after=.] [--profile DIR]

The receiver runs as ``python -m syncd.server`` so its RSS and CPU are its own; its peak is
the kernel's high-water mark (``VmHWM``), sampled RSS as a cross-check; its CPU is user +
system time spent from the first request to the completion's answer. Clients:

* ``streaming``: how syncd uploads: each part streamed from the file through a
  requests-toolbelt MultipartEncoder over a bounded slice (never in memory whole);
* ``sdk``: what synapse-sdk does (tests/support/synapse_client.py): each part read
  into memory, then encoded by requests;
* ``raw``: the first part as a form, every later part as a raw body
  (``application/offset+octet-stream``) once the receiver advertises ``Syncd-Raw-Parts``;
  against a receiver that does not, it falls back to forms;
* ``sendfile`` / ``sendfile-raw``: the same two shapes sent with ``sendfile`` over one
  connection, the MD5 computed beforehand: a client that costs almost no CPU, so the
  receiver's CPU and speed are measured with the machine nearly to itself.

``--small N`` measures small files instead: N whole-file POSTs of ``--small-size`` over
``--concurrency`` keep-alive connections, receiver CPU per file.

``--code NAME=DIR,...`` runs the receiver from each checkout in turn (PYTHONPATH=DIR),
alternating inside every round, so a before/after comparison shares one sitting.
``--profile DIR`` runs each receiver under ``py-spy record`` (collapsed stacks per run;
CPU figures of profiled runs are not comparable). Prints one row per run, then medians
with the spread (min-max). Data is random, written to a temp dir first (not timed).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

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


def _form_part(http: requests.Session, url: str, f: BinaryIO, offset: int, length: int, total: int,
               digest: Any, name: str) -> requests.Response:
    encoder = MultipartEncoder(
        fields=[
            ("filename", name),
            ("file", (name, FileSlice(f, offset, length, digest), "application/octet-stream")),
        ]
    )
    return http.put(
        url,
        data=encoder,
        headers={
            "Content-Type": encoder.content_type,
            "Content-Range": f"bytes {offset}-{offset + length - 1}/{total}",
        },
        timeout=300,
    )


def _raw_part(http: requests.Session, url: str, f: BinaryIO, offset: int, length: int, total: int,
              digest: Any) -> requests.Response:
    return http.put(
        url,
        data=FileSlice(f, offset, length, digest),
        headers={
            "Content-Type": "application/offset+octet-stream",
            "Content-Range": f"bytes {offset}-{offset + length - 1}/{total}",
        },
        timeout=300,
    )


def streaming_upload(url: str, path: Path, *, part: int, name: str, raw: bool = False) -> dict[str, Any]:
    total = path.stat().st_size
    digest = hashlib.md5()
    with requests.Session() as http, path.open("rb") as f:
        http.mount("http://", LargeBlocks())
        offset, raw_ok = 0, False
        while offset < total:
            length = min(part, total - offset)
            if raw and raw_ok and offset:
                answer = _raw_part(http, url, f, offset, length, total, digest)
            else:
                answer = _form_part(http, url, f, offset, length, total, digest, name)
            answer.raise_for_status()
            raw_ok = answer.headers.get("Syncd-Raw-Parts") == "1"
            url, offset = answer.json()["url"], answer.json()["offset"]
        done = http.post(url, json={"md5": digest.hexdigest()}, timeout=300)
        done.raise_for_status()
        return done.json()


def sendfile_upload(url: str, path: Path, *, part: int, name: str, md5: str, raw: bool) -> dict[str, Any]:
    """Parts sent with ``sendfile`` over one connection, the MD5 known beforehand: a client
    that costs almost no CPU, so the receiver's share of the machine is what is measured."""
    total = path.stat().st_size
    parsed = urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
    boundary = "sendfile-boundary-7d1f"
    try:
        with path.open("rb") as f:
            offset, raw_ok, target = 0, False, parsed.path
            while offset < total:
                length = min(part, total - offset)
                if raw and raw_ok and offset:
                    head, tail, content_type = b"", b"", "application/offset+octet-stream"
                else:
                    head = (
                        f'--{boundary}\r\nContent-Disposition: form-data; name="filename"\r\n\r\n{name}\r\n'
                        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                        "Content-Type: application/octet-stream\r\n\r\n"
                    ).encode()
                    tail = f"\r\n--{boundary}--\r\n".encode()
                    content_type = f"multipart/form-data; boundary={boundary}"
                conn.putrequest("PUT", target, skip_accept_encoding=True)
                conn.putheader("Content-Type", content_type)
                conn.putheader("Content-Range", f"bytes {offset}-{offset + length - 1}/{total}")
                conn.putheader("Content-Length", str(len(head) + length + len(tail)))
                conn.endheaders()
                assert conn.sock is not None
                conn.sock.sendall(head)
                conn.sock.sendfile(f, offset, length)
                conn.sock.sendall(tail)
                answer = conn.getresponse()
                doc = json.loads(answer.read())
                if answer.status != 200:
                    raise SystemExit(f"part at {offset}: {answer.status} {doc}")
                raw_ok = answer.getheader("Syncd-Raw-Parts") == "1"
                target, offset = urlsplit(doc["url"]).path, doc["offset"]
        body = json.dumps({"md5": md5}).encode()
        conn.request("POST", target, body=body, headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        doc = json.loads(answer.read())
        if answer.status != 200:
            raise SystemExit(f"completion: {answer.status} {doc}")
        return doc
    finally:
        conn.close()


def write_source(path: Path, size: int) -> str:
    digest = hashlib.md5()
    with path.open("wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 16 * MiB))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


class Receiver:
    """``python -m syncd.server`` from ``code`` on a free loopback port, watched for memory
    (and profiled by py-spy into ``profile`` when given)."""

    def __init__(self, root: Path, *, code: Path = REPO, profile: Path | None = None) -> None:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "syncd.server", "--root", str(root),
                "--listen", "127.0.0.1:0", "--no-auth", "--max-size", "none", "--min-free", "0",
            ],
            cwd=code,  # ``-m`` puts the working folder first on sys.path
            env={**os.environ, "PYTHONPATH": str(code)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,  # a file: a pipe nobody reads would stall it at 64 KiB of log
        )  # fmt: skip
        self.url = self._wait_for_url()
        self.ps = psutil.Process(self.proc.pid)
        self.idle_rss = self.ps.memory_info().rss
        self.sampled_peak = self.idle_rss
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler")
        self._sampler.start()
        self._spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            spy = Path(sys.executable).with_name("py-spy")
            self._spy = subprocess.Popen(
                [str(spy), "record", "--pid", str(self.proc.pid), "--format", "raw", "--rate", "250",
                 "--threads", "--output", str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # attached before the upload starts

    def minor_faults(self) -> int:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return int(fields[7])

    def cpu_seconds(self) -> tuple[float, float]:
        """User and system CPU seconds so far."""
        times = self.ps.cpu_times()
        return times.user, times.system

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            self._log.seek(0)
            text = self._log.read().decode(errors="replace")
            if match := re.search(r"listening on (http://\S+)", text):
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
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
        if self._spy is not None:
            self._spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
            try:
                self._spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._spy.kill()
                self._spy.wait()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def run(
    client: str, source: Path, workdir: Path, *, part: int, code: Path, profile: Path | None, md5: str
) -> dict[str, Any]:
    root = workdir / f"root-{client}"
    receiver = Receiver(root, code=code, profile=profile)
    try:
        cpu_before, faults_before = receiver.cpu_seconds(), receiver.minor_faults()
        started = time.perf_counter()
        if client == "sdk":
            answer = sdk_upload(receiver.url, source, filename=f"{client}.bin", chunk_size=part, timeout=300)
        elif client.startswith("sendfile"):
            answer = sendfile_upload(
                receiver.url, source, part=part, name=f"{client}.bin", md5=md5, raw=client == "sendfile-raw"
            )
        else:
            answer = streaming_upload(receiver.url, source, part=part, name=f"{client}.bin", raw=client == "raw")
        seconds = time.perf_counter() - started
        cpu_after = receiver.cpu_seconds()
        faults = receiver.minor_faults() - faults_before
        user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
        peak, sampled, idle = receiver.peak_rss(), receiver.sampled_peak, receiver.idle_rss
    finally:
        receiver.stop()
    stored = root / answer["path"]
    if answer["size"] != source.stat().st_size or not stored.is_file():
        raise SystemExit(f"{client}: upload did not store the whole file: {answer}")
    stored.unlink()  # free the disk before the next run
    return {
        "client": client, "seconds": seconds, "cpu": user + system, "user": user, "system": system,
        "faults": faults, "peak": peak, "sampled": sampled, "idle": idle,
    }  # fmt: skip


def small_files_run(
    workdir: Path, *, count: int, size: int, concurrency: int, code: Path, name: str
) -> dict[str, Any]:
    """``count`` whole-file POSTs of ``size`` bytes over ``concurrency`` keep-alive connections."""
    root = workdir / f"root-small-{name}-{len(list(workdir.glob(f'root-small-{name}-*')))}"
    receiver = Receiver(root, code=code)
    boundary = "small-boundary-3c5a"
    data = os.urandom(size)
    md5 = hashlib.md5(data).hexdigest()

    def body(n: int) -> bytes:
        return (
            f'--{boundary}\r\nContent-Disposition: form-data; name="filename"\r\n\r\nd{n % 50}/f{n}.bin\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="md5"\r\n\r\n{md5}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()

    parsed = urlsplit(receiver.url)
    failures: list[str] = []

    def worker(first: int) -> None:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        try:
            for n in range(first, count, concurrency):
                conn.request("POST", parsed.path, body=body(n),
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
                answer = conn.getresponse()
                text = answer.read()
                if answer.status != 200:
                    failures.append(f"{answer.status} {text[:200]!r}")
                    return
        finally:
            conn.close()

    try:
        cpu_before = receiver.cpu_seconds()
        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
        cpu_after = receiver.cpu_seconds()
        peak = receiver.peak_rss()
    finally:
        receiver.stop()
    if failures:
        raise SystemExit(f"small files: {failures[0]}")
    stored = sum(1 for p in root.rglob("*.bin"))
    if stored != count:
        raise SystemExit(f"small files: {stored} of {count} stored")
    # kept until the end: files created within a minute or two of a mass deletion were up to
    # 30x slower to create here (see bench/smallfiles.py), which would time the clean-up
    user, system = cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1]
    return {"seconds": seconds, "cpu": user + system, "user": user, "system": system, "peak": peak}


def small_files_main(args: argparse.Namespace, codes: dict[str, Path]) -> int:
    size = parse_size(args.small_size)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="syncd-bench-", dir=args.dir) as tmp:
        names = list(codes)
        for n in range(args.rounds):
            for name in names if n % 2 == 0 else names[::-1]:
                row = small_files_run(Path(tmp), count=args.small, size=size, concurrency=args.concurrency,
                                      code=codes[name], name=name)
                row.update(code=name, round=n + 1)
                rows.append(row)
                print(
                    f"round {n + 1}: {name:<8} {args.small / row['seconds']:7.0f} files/s  receiver CPU "
                    f"{row['cpu'] / args.small * 1000:.2f} ms/file (user {row['user']:.2f} s, "
                    f"system {row['system']:.2f} s)",
                    file=sys.stderr,
                )
    print(f"\nreceiver: {args.small} whole-file POSTs of {format_size(size)}, {args.concurrency} connections, "
          f"{args.rounds} round(s), median (min-max)\n")
    header = f"{'code':<8} {'files/s':>18} {'receiver CPU ms/file':>22} {'peak RSS':>10}"
    print(header)
    print("-" * len(header))
    for name in codes:
        mine = [r for r in rows if r["code"] == name]
        print(
            f"{name:<8} {_spread([args.small / r['seconds'] for r in mine], '.0f'):>18} "
            f"{_spread([r['cpu'] / args.small * 1000 for r in mine], '.2f'):>22} "
            f"{format_size(max(r['peak'] for r in mine)):>10}"
        )
    return 0


def _spread(values: list[float], fmt: str) -> str:
    mid = statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt)
    return f"{format(mid, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1GiB", help="file size (default: %(default)s)")
    parser.add_argument("--part", default="50MiB", help="part size (default: %(default)s)")
    parser.add_argument(
        "--clients", default="streaming,sdk", help="streaming, sdk, raw, sendfile, sendfile-raw (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds, contenders alternating (default: 1)")
    parser.add_argument("--code", default=f"this={REPO}", help="NAME=DIR,... receiver checkouts to compare")
    parser.add_argument("--profile", default=None, metavar="DIR", help="py-spy collapsed stacks per run into DIR")
    parser.add_argument("--dir", default=None, help="where to put the temp data (default: the system temp dir)")
    parser.add_argument("--small", type=int, default=0, metavar="N",
                        help="instead: N whole-file POSTs of --small-size each (receiver CPU per file)")
    parser.add_argument("--small-size", default="4KiB", help="size of each small file (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="connections for --small (default: %(default)s)")
    args = parser.parse_args()
    size, part = parse_size(args.size), parse_size(args.part)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if unknown := set(clients) - {"streaming", "sdk", "raw", "sendfile", "sendfile-raw"}:
        parser.error(f"--clients: unknown {', '.join(sorted(unknown))}")
    codes: dict[str, Path] = {}
    for item in args.code.split(","):
        name, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "syncd" / "server").is_dir():
            parser.error(f"--code: {item!r} is not NAME=DIR with DIR a syncd checkout")
        codes[name.strip()] = Path(folder).resolve()
    if args.small:
        return small_files_main(args, codes)
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="syncd-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        source = workdir / "source.bin"
        print(f"writing {format_size(size)} of random data to {source} ...", file=sys.stderr)
        md5 = write_source(source, size)
        contenders = [(code, client) for code in codes for client in clients]
        for n in range(args.rounds):
            order = contenders if n % 2 == 0 else contenders[::-1]
            for code, client in order:
                profile = profile_dir / f"{code}-{client}-{n + 1}.txt" if profile_dir else None
                row = run(client, source, workdir, part=part, code=codes[code], profile=profile, md5=md5)
                row.update(code=code, round=n + 1)
                rows.append(row)
                print(
                    f"round {n + 1}: {code:<8} {client:<12} {size / MiB / row['seconds']:7.1f} MiB/s  "
                    f"receiver CPU {row['cpu']:.2f} s ({row['cpu'] / (size / 1024**3):.2f} s/GiB: "
                    f"user {row['user']:.2f}, system {row['system']:.2f}; {row['faults']} minor faults)",
                    file=sys.stderr,
                )

    gib = size / 1024**3
    print(f"\nreceiver: {format_size(size)} upload in {format_size(part)} parts, over loopback, "
          f"{args.rounds} round(s), median (min-max)\n")
    header = (f"{'code':<8} {'client':<12} {'MiB/s':>20} {'receiver CPU s/GiB':>20} "
              f"{'peak RSS':>10} {'idle RSS':>10}")
    print(header)
    print("-" * len(header))
    for code, client in contenders:
        mine = [r for r in rows if r["code"] == code and r["client"] == client]
        print(
            f"{code:<8} {client:<12} {_spread([size / MiB / r['seconds'] for r in mine], '.0f'):>20} "
            f"{_spread([r['cpu'] / gib for r in mine], '.2f'):>20} "
            f"{format_size(max(r['peak'] for r in mine)):>10} {format_size(max(r['idle'] for r in mine)):>10}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
