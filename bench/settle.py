"""Settle latency: how long after a file is closed its first byte reaches the server,
with the quiet gap alone and with the fast path for closed files (``settle.on_close``);
and a slow writer that must never be uploaded early.

    .venv/bin/python -m bench.settle [--files 8] [--quiet 2s] [--slow 30s] [--rounds 2]

Per round and mode (quiet gap only, then ``on_close`` with ``close_quiet`` 250ms), a fresh
``syncd run`` (as under systemd) watches an empty folder; then, at the same time:

- ``--files`` files per writer are written one after another, the writers shuffled, at
  random gaps of 0.1–1.5 s. Writers: ``python`` (48 KiB in three 16 KiB writes a few ms
  apart, then close), ``cp`` and ``rsync`` of a 256 KiB file (rsync writes a dot-named
  temporary and renames it into place), and ``ffmpeg`` encoding a 1 s test video to MP4.
  The close is when the harness's close() returns, or when the tool's process has exited;
- a slow writer keeps one file open for writing and appends 1 KiB at random gaps of
  0.1–0.5 × quiet for ``--slow`` seconds, each append through a second descriptor that it
  opens and closes (so every append is a close-after-write while the first descriptor
  still holds the file), then closes it (a gap never reaches the quiet gap, so the file is
  never quiet while written).

The server is a small HTTP stub in the harness speaking the chunked protocol's
whole-file ``POST`` (every file here is far below the part size); it notes the moment
each request's first line arrives, which is when the first byte of the file reaches the
server, and answers with the MD5 of what it received. Latency = that moment - the
close. A premature upload is any request for the slow file before its close or with
fewer bytes than its final size.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import (
    DaemonRun,
    dump_json,
    log,
    machine,
    save_figure,
    syncd_config,
    table,
    temp_dir,
)
from syncd.units import parse_duration


class StubServer:
    """Records (first-byte time, filename, size) per request; answers whole-file POSTs."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def parse_request(self) -> bool:
                self._arrived = time.time()  # the request line has just been read
                return super().parse_request()

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                          for part in msg.iter_parts()}
                name = (fields.get("filename") or b"").decode()
                data = fields.get("file") or b""
                with outer.lock:
                    outer.requests.append({"at": self._arrived, "filename": name, "size": len(data),
                                           "method": "POST"})
                self._answer(200, {"filename": name, "size": len(data), "md5": hashlib.md5(data).hexdigest(),
                                   "offset": len(data)})

            def do_PUT(self) -> None:  # a chunked part: not expected here; noted and refused
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                with outer.lock:
                    outer.requests.append({"at": self._arrived, "filename": "?", "size": length, "method": "PUT"})
                self._answer(400, {"detail": "the settle stub only takes whole-file POSTs"})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/chunked_upload/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="bench-stub", daemon=True)

    def start(self) -> StubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


WRITERS = ("python", "cp", "rsync", "ffmpeg")
MODES = ("quiet", "on_close")
CLOSE_QUIET = "250ms"


def available_writers() -> tuple[str, ...]:
    tools = {"cp": "cp", "rsync": "rsync", "ffmpeg": "ffmpeg"}
    return tuple(w for w in WRITERS if w not in tools or shutil.which(tools[w]) is not None)


def _write_one(kind: str, path: Path, source: Path, rng: random.Random) -> None:
    if kind == "python":
        block = os.urandom(16 * 1024)
        with open(path, "wb") as f:
            for _ in range(3):
                f.write(block)
                f.flush()
                time.sleep(rng.uniform(0.002, 0.02))
    elif kind == "cp":
        subprocess.run(["cp", str(source), str(path)], check=True, timeout=60)
    elif kind == "rsync":
        subprocess.run(["rsync", "--times", str(source), str(path)], check=True, timeout=60)
    elif kind == "ffmpeg":
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi",
                        "-i", f"testsrc=duration=1:size=320x240:rate=25,noise=alls={rng.randint(1, 50)}",
                        "-c:v", "mpeg4", "-y", str(path)], check=True, timeout=60)
    else:
        raise ValueError(kind)


def _writer(drop: Path, plan: list[str], source: Path, closes: dict[str, tuple[str, float]],
            rng: random.Random, stop: threading.Event) -> None:
    for i, kind in enumerate(plan):
        if stop.wait(rng.uniform(0.1, 1.5)):
            return
        name = f"{kind}{i:03d}.{'mp4' if kind == 'ffmpeg' else 'bin'}"
        _write_one(kind, drop / name, source, rng)
        closes[name] = (kind, time.time())


def _slow_writer(drop: Path, seconds: float, quiet: float, out: dict[str, Any], rng: random.Random,
                 stop: threading.Event) -> None:
    path = drop / "slow.bin"
    end = time.monotonic() + seconds
    appends = 0
    gaps = []
    with open(path, "wb"):  # held open for writing until the end
        out["opened"] = time.time()
        while time.monotonic() < end and not stop.is_set():
            with open(path, "ab") as f:  # closed after each append: a close-after-write every time
                f.write(os.urandom(1024))
            appends += 1
            gap = rng.uniform(0.1, 0.5) * quiet
            gaps.append(gap)
            time.sleep(gap)
    out.update(closed=time.time(), size=path.stat().st_size, appends=appends, max_gap=max(gaps or [0]))


def one_round(work: Path, *, files: int, quiet: str, slow: float, seed: int, mode: str,
              writers: tuple[str, ...]) -> dict[str, Any]:
    quiet_s = parse_duration(quiet)
    stub = StubServer().start()
    base = work / f"round-{seed}-{mode}"
    settle = {"quiet": quiet, "max_wait": f"{int(slow + 60)}s"}  # the slow writer is never `growing` here
    if mode == "on_close":
        settle.update(on_close=True, close_quiet=CLOSE_QUIET)
    cfg = syncd_config(base, url=stub.url, token="bench", part_size="50MiB", extra_watch={"settle": settle})
    source = base / "source.bin"
    source.write_bytes(os.urandom(256 * 1024))
    daemon = DaemonRun(cfg)
    closes: dict[str, tuple[str, float]] = {}
    slow_info: dict[str, Any] = {}
    stop = threading.Event()
    plan = [w for w in writers for _ in range(files)]
    random.Random(seed).shuffle(plan)
    threads = [threading.Thread(target=_writer, args=(base / "drop", plan, source, closes,
                                                      random.Random(seed + 1), stop)),
               threading.Thread(target=_slow_writer, args=(base / "drop", slow, quiet_s, slow_info,
                                                           random.Random(seed), stop))]
    try:
        daemon.start()
        daemon.wait_ready()
        for t in threads:
            t.start()
        deadline = time.monotonic() + slow + len(plan) * 4 + 60
        while any(t.is_alive() for t in threads):
            daemon.sample()
            if time.monotonic() > deadline:
                raise RuntimeError("the writers did not finish in time")
            time.sleep(0.1)
        daemon.wait_done(len(plan) + 1, timeout=60 + 4 * quiet_s, interval=0.1)
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(5)
        daemon.stop()
        daemon.kill()
        stub.stop()
    first: dict[str, float] = {}
    for req in stub.requests:
        first.setdefault(req["filename"], req["at"])
    missing = [name for name in closes if name not in first]
    if missing:
        raise RuntimeError(f"never uploaded: {missing}")
    latencies: dict[str, list[float]] = {}
    for name, (kind, closed) in closes.items():
        latencies.setdefault(kind, []).append(first[name] - closed)
    slow_reqs = [r for r in stub.requests if r["filename"] == "slow.bin"]
    premature = [r for r in slow_reqs if r["at"] < slow_info["closed"] or r["size"] != slow_info["size"]]
    early = [name for name, (_, closed) in closes.items() if first[name] < closed]
    result = {"mode": mode, "latencies": latencies, "slow_requests": len(slow_reqs), "premature": len(premature),
              "early": early, "slow_latency": (slow_reqs[0]["at"] - slow_info["closed"]) if slow_reqs else None,
              "slow_appends": slow_info["appends"], "slow_max_gap": slow_info["max_gap"],
              "slow_size": slow_info["size"], "uploads_per_file": len(stub.requests) / (len(plan) + 1),
              "peak_rss": daemon.peak}
    pooled = [x for v in latencies.values() for x in v]
    log(f"  round {seed} {mode}: p50 {_pct(pooled, 50):.2f}s p95 {_pct(pooled, 95):.2f}s max {max(pooled):.2f}s; "
        f"slow writer: {slow_info['appends']} appends, {len(slow_reqs)} upload(s), {len(premature)} premature")
    return result


def _pct(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if p < 100 else max(values)


def run(*, files: int = 8, quiet: str = "2s", slow: float = 30.0, rounds: int = 2) -> dict[str, Any]:
    writers = available_writers()
    result: dict[str, Any] = {"benchmark": "settle", "files": files, "quiet": quiet, "close_quiet": CLOSE_QUIET,
                              "quiet_seconds": parse_duration(quiet), "slow_seconds": slow, "writers": writers,
                              "missing_writers": [w for w in WRITERS if w not in writers], "rounds": []}
    result["machine"] = machine()
    with temp_dir("settle") as work:
        for rnd in range(rounds):
            # the modes alternate inside a round, and which goes first alternates between rounds
            for mode in (MODES if rnd % 2 == 0 else MODES[::-1]):
                result["rounds"].append(one_round(work, files=files, quiet=quiet, slow=slow, seed=rnd + 1,
                                                  mode=mode, writers=writers))
    result["pooled"] = {}
    for mode in MODES:
        runs = [r for r in result["rounds"] if r["mode"] == mode]
        by_writer: dict[str, Any] = {}
        for kind in [*writers, "all"]:
            values = [x for r in runs for k, v in r["latencies"].items() if kind in (k, "all") for x in v]
            by_writer[kind] = {"p50": _pct(values, 50), "p95": _pct(values, 95), "max": max(values),
                               "min": min(values), "n": len(values)}
        result["pooled"][mode] = by_writer
    result["premature"] = sum(r["premature"] + len(r["early"]) for r in result["rounds"])
    return result


def render(result: dict[str, Any]) -> str:
    q = result["quiet_seconds"]
    rows = []
    for kind in [*result["writers"], "all"]:
        for mode in MODES:
            p = result["pooled"][mode][kind]
            label = "quiet gap only" if mode == "quiet" else f"on_close ({result['close_quiet']})"
            rows.append([kind, label, p["n"], f"{p['p50']:.3f}", f"{p['p95']:.3f}", f"{p['max']:.3f}",
                         f"{p['min']:.3f}", f"{p['p95'] / q:.2f}"])
    runs = len(result["rounds"]) // len(MODES)
    title = (f"Settle latency: close → first byte at the server, seconds; {result['files']} files per writer "
             f"per round at random 0.1–1.5 s gaps, quiet gap {result['quiet']}, {runs} round(s) per mode")
    if result["missing_writers"]:
        title += f" (not installed: {', '.join(result['missing_writers'])})"
    a = table(["writer", "settle", "files", "p50", "p95", "max", "min", "p95 × quiet gap"], rows, title=title)
    slow = [[f"round {i // len(MODES) + 1}", r["mode"], r["slow_appends"], f"{r['slow_max_gap']:.2f}",
             r["slow_requests"], r["premature"],
             f"{r['slow_latency']:.2f}" if r["slow_latency"] is not None else "-"]
            for i, r in enumerate(result["rounds"])]
    b = table(["slow writer", "settle", "appends", "longest gap s", "uploads", "premature uploads",
               "close → first byte s"], slow,
              title=f"Slow writer: 1 KiB appends for {result['slow_seconds']:g} s, gaps 0.1–0.5 × quiet, each "
                    "through a descriptor opened and closed while another holds the file open for writing")
    return a + "\n\n" + b


def plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode in MODES:
        pooled = sorted(x for r in result["rounds"] if r["mode"] == mode
                        for v in r["latencies"].values() for x in v)
        label = "quiet gap only" if mode == "quiet" else f"on_close (close_quiet {result['close_quiet']})"
        ax.plot(pooled, [(i + 1) / len(pooled) for i in range(len(pooled))], drawstyle="steps-post", label=label)
    ax.axvline(result["quiet_seconds"], color="red", linestyle="--", label=f"quiet gap {result['quiet']}")
    ax.axvline(0.3, color="gray", linestyle=":", label="0.3 s")
    ax.set_xlabel("close → first byte at the server (s)")
    ax.set_ylabel("fraction of files")
    ax.set_xlim(left=0)
    ax.legend()
    ax.set_title(f"Settle latency, {len(result['writers'])} writers")
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.settle", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=8, help="files per writer per round (default 8)")
    p.add_argument("--quiet", default="2s")
    p.add_argument("--slow", type=parse_duration, default=30.0, help="slow writer's duration (default 30s)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    result = run(files=args.files, quiet=args.quiet, slow=args.slow, rounds=args.rounds)
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0 if result["premature"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
