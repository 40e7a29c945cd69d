"""Settle latency: how long after a file is closed its first byte reaches the server,
against the configured quiet gap; and a slow writer that must never be uploaded early.

    .venv/bin/python -m bench.settle [--files 30] [--quiet 2s] [--slow 30s] [--rounds 2]

Per round, a fresh ``syncd run`` (as under systemd) watches an empty folder; then, at
the same time:

- ``--files`` files (48 KiB, written in three 16 KiB writes a few ms apart) are written
  and closed one after another at random gaps of 0.1–1.5 s; the harness notes each
  close time;
- a slow writer keeps one file open and appends 1 KiB at random gaps of 0.1–0.5 × quiet
  for ``--slow`` seconds, then closes it (a gap never reaches the quiet gap, so the file
  is never quiet while written).

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
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.common import (
    DaemonRun,
    dump_json,
    fmt_med,
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


def _writer(drop: Path, n: int, closes: dict[str, float], rng: random.Random, stop: threading.Event) -> None:
    block = os.urandom(16 * 1024)
    for i in range(n):
        if stop.wait(rng.uniform(0.1, 1.5)):
            return
        name = f"file{i:03d}.bin"
        with open(drop / name, "wb") as f:
            for _ in range(3):
                f.write(block)
                f.flush()
                time.sleep(rng.uniform(0.002, 0.02))
        closes[name] = time.time()


def _slow_writer(drop: Path, seconds: float, quiet: float, out: dict[str, Any], rng: random.Random,
                 stop: threading.Event) -> None:
    path = drop / "slow.bin"
    end = time.monotonic() + seconds
    appends = 0
    gaps = []
    with open(path, "wb") as f:
        out["opened"] = time.time()
        while time.monotonic() < end and not stop.is_set():
            f.write(os.urandom(1024))
            f.flush()
            appends += 1
            gap = rng.uniform(0.1, 0.5) * quiet
            gaps.append(gap)
            time.sleep(gap)
    out.update(closed=time.time(), size=path.stat().st_size, appends=appends, max_gap=max(gaps or [0]))


def one_round(work: Path, *, files: int, quiet: str, slow: float, seed: int) -> dict[str, Any]:
    quiet_s = parse_duration(quiet)
    stub = StubServer().start()
    base = work / f"round-{seed}"
    # max_wait above the slow writer's time, so it is never reported `growing` here
    cfg = syncd_config(base, url=stub.url, token="bench", part_size="50MiB", quiet=quiet,
                       max_wait=f"{int(slow + 60)}s")
    daemon = DaemonRun(cfg)
    closes: dict[str, float] = {}
    slow_info: dict[str, Any] = {}
    stop = threading.Event()
    rng = random.Random(seed)
    threads = [threading.Thread(target=_writer, args=(base / "drop", files, closes, random.Random(seed + 1), stop)),
               threading.Thread(target=_slow_writer, args=(base / "drop", slow, quiet_s, slow_info, rng, stop))]
    try:
        daemon.start()
        daemon.wait_ready()
        for t in threads:
            t.start()
        deadline = time.monotonic() + slow + files * 1.5 + 60
        while any(t.is_alive() for t in threads):
            daemon.sample()
            if time.monotonic() > deadline:
                raise RuntimeError("the writers did not finish in time")
            time.sleep(0.1)
        daemon.wait_done(files + 1, timeout=60 + 4 * quiet_s, interval=0.1)
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
    latencies = [first[name] - closed for name, closed in closes.items()]
    missing = [name for name in closes if name not in first]
    if missing:
        raise RuntimeError(f"never uploaded: {missing}")
    slow_reqs = [r for r in stub.requests if r["filename"] == "slow.bin"]
    premature = [r for r in slow_reqs if r["at"] < slow_info["closed"] or r["size"] != slow_info["size"]]
    result = {"latencies": latencies, "slow_requests": len(slow_reqs), "premature": len(premature),
              "slow_latency": (slow_reqs[0]["at"] - slow_info["closed"]) if slow_reqs else None,
              "slow_appends": slow_info["appends"], "slow_max_gap": slow_info["max_gap"],
              "slow_size": slow_info["size"], "uploads_per_file": len(stub.requests) / (files + 1),
              "peak_rss": daemon.peak}
    log(f"  round {seed}: p50 {_pct(latencies, 50):.2f}s p95 {_pct(latencies, 95):.2f}s max {max(latencies):.2f}s; "
        f"slow writer: {slow_info['appends']} appends, {len(slow_reqs)} upload(s), {len(premature)} premature")
    return result


def _pct(values: list[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1] if p < 100 else max(values)


def run(*, files: int = 30, quiet: str = "2s", slow: float = 30.0, rounds: int = 2) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "settle", "files": files, "quiet": quiet,
                              "quiet_seconds": parse_duration(quiet), "slow_seconds": slow, "rounds": []}
    result["machine"] = machine()
    with temp_dir("settle") as work:
        for rnd in range(rounds):
            result["rounds"].append(one_round(work, files=files, quiet=quiet, slow=slow, seed=rnd + 1))
    pooled = [x for r in result["rounds"] for x in r["latencies"]]
    result["pooled"] = {"p50": _pct(pooled, 50), "p95": _pct(pooled, 95), "max": max(pooled), "min": min(pooled),
                        "n": len(pooled)}
    result["premature"] = sum(r["premature"] for r in result["rounds"])
    return result


def render(result: dict[str, Any]) -> str:
    q = result["quiet_seconds"]
    rounds = result["rounds"]

    def per_round(fn, fmt="{:.2f}"):
        return fmt_med([fn(r) for r in rounds], fmt)

    pooled = result["pooled"]
    rows = [
        ["p50", f"{pooled['p50']:.2f}", f"{pooled['p50'] / q:.2f}", per_round(lambda r: _pct(r["latencies"], 50))],
        ["p95", f"{pooled['p95']:.2f}", f"{pooled['p95'] / q:.2f}", per_round(lambda r: _pct(r["latencies"], 95))],
        ["max", f"{pooled['max']:.2f}", f"{pooled['max'] / q:.2f}", per_round(lambda r: max(r["latencies"]))],
        ["min", f"{pooled['min']:.2f}", f"{pooled['min'] / q:.2f}", per_round(lambda r: min(r["latencies"]))],
    ]
    a = table(["close → first byte at server", "seconds (all files)", "× quiet gap", "per round: median (min–max)"],
              rows, title=f"Settle latency: {result['files']} files per round at random 0.1–1.5 s gaps, "
                          f"quiet gap {result['quiet']}, {len(rounds)} round(s), {pooled['n']} files")
    slow = [[f"round {i + 1}", r["slow_appends"], f"{r['slow_max_gap']:.2f}", r["slow_requests"], r["premature"],
             f"{r['slow_latency']:.2f}" if r["slow_latency"] is not None else "-"] for i, r in enumerate(rounds)]
    b = table(["slow writer", "appends", "longest gap s", "uploads", "premature uploads", "close → first byte s"],
              slow, title=f"Slow writer: 1 KiB appends for {result['slow_seconds']:g} s, gaps 0.1–0.5 × quiet")
    return a + "\n\n" + b


def plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pooled = sorted(x for r in result["rounds"] for x in r["latencies"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(pooled, [(i + 1) / len(pooled) for i in range(len(pooled))], drawstyle="steps-post")
    ax.axvline(result["quiet_seconds"], color="red", linestyle="--", label=f"quiet gap {result['quiet']}")
    ax.axvline(2 * result["quiet_seconds"], color="gray", linestyle=":", label="2 × quiet gap")
    ax.set_xlabel("close → first byte at the server (s)")
    ax.set_ylabel("fraction of files")
    ax.set_xlim(left=0)
    ax.legend()
    ax.set_title(f"Settle latency, {len(pooled)} files")
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.settle", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=30)
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
