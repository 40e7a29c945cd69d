"""Part size sweep and ``concurrency.uploads`` sweep of the daemon, against ``syncd serve``.

    .venv/bin/python -m bench.sweep [--size 512MiB] [--rounds 3] [--parts 5,8,16,50,100]
                                    [--uploads 1,2,4] [--files 4] [--json FILE] [--plot FILE]

Part sweep: one file of ``--size``, ``concurrency.uploads: 1``, each part size in turn.
Concurrency sweep: ``--files`` files of ``--size / --files`` each, 50 MiB parts, each
``concurrency.uploads`` value in turn. Every run is a fresh ``syncd run`` (fresh journal)
that finds the files in its watch at start-up; the file(s) are evicted from the page cache
first. MiB/s = bytes / (last ``done_at`` in the journal - the first upload's start),
so the settle wait and interpreter start-up are left out (the start is when the harness,
polling the journal every 10 ms, first sees a file ``uploading``). Peak RSS is the daemon's VmHWM,
polled every 50 ms (a high-water mark: nothing is missed but growth in the last 50 ms).
Configurations alternate inside each round, in an order rotated every round.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    DaemonRun,
    MiB,
    Receiver,
    dump_json,
    evict,
    fmt_med,
    log,
    machine,
    median,
    proc_cpu,
    save_figure,
    summary,
    syncd_config,
    table,
    temp_dir,
    write_random,
)
from syncd.units import parse_size

DEFAULT_PARTS = (5, 8, 16, 50, 100)
DEFAULT_UPLOADS = (1, 2, 4)


def _one_run(work: Path, receiver: Receiver, files: list[Path], *, part: int, uploads: int, tag: str) -> dict:
    base = work / tag
    drop = base / "drop"
    drop.mkdir(parents=True)
    for f in files:
        os.link(f, drop / f.name)
        evict(f)
    total = sum(f.stat().st_size for f in files)
    cfg = syncd_config(base, url=receiver.url, token=receiver.token, part_size=part, uploads=uploads,
                       quiet="300ms")
    daemon = DaemonRun(cfg)
    cpu0 = receiver.cpu()
    receiver.reset_peak()
    try:
        daemon.start()
        # the first file leaving `ready` (polled every 10 ms): the whole-file path hashes
        # before it opens its journal upload row, so uploads.started_at would skip that
        daemon.wait_for(lambda: daemon.query("SELECT 1 FROM files WHERE state IN ('uploading', 'done') LIMIT 1"),
                        timeout=60, interval=0.01, what="the first upload")
        t0 = time.time()
        daemon.wait_done(len(files), timeout=120 + total / (2 * MiB), interval=0.05)
        cpu = proc_cpu(daemon.pid)
        (t1,), = daemon.query("SELECT max(done_at) FROM files")
    finally:
        daemon.stop()
        daemon.kill()
    stored = receiver.stored()
    if sorted(p.stat().st_size for p in stored) != sorted(f.stat().st_size for f in files):
        raise RuntimeError(f"{tag}: the receiver holds {[p.name for p in stored]}")
    receiver.clear()
    seconds = max(t1 - t0, 1e-6)
    vals = {"seconds": seconds, "mibs": total / MiB / seconds, "rss": daemon.peak, "cpu": cpu,
            "server_cpu": receiver.cpu() - cpu0, "server_rss": receiver.peak_rss()}
    log(f"  {tag:24} {vals['mibs']:7.1f} MiB/s  rss {vals['rss'] / MiB:6.1f} MiB  cpu {cpu:.1f}s")
    return vals


def run(*, size: int, rounds: int, parts: tuple[int, ...] = DEFAULT_PARTS,
        uploads: tuple[int, ...] = DEFAULT_UPLOADS, files: int = 4) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "sweep", "size": size, "rounds": rounds, "files": files,
                              "machine": machine(), "parts": [], "uploads": []}
    with temp_dir("sweep") as work:
        log(f"sweep: writing {size / MiB:.0f} MiB of files")
        big = write_random(work / "src" / "big.bin", size)
        small = [write_random(work / "src" / f"file{i}.bin", size // files) for i in range(files)]
        (work / "receiver").mkdir()
        receiver = Receiver(work / "receiver").start()
        try:
            configs = [("part", p) for p in parts] + [("uploads", u) for u in uploads]
            runs: dict[tuple[str, int], list[dict]] = {c: [] for c in configs}
            n = 0
            for rnd in range(rounds):
                shift = rnd % len(configs)
                for kind, value in configs[shift:] + configs[:shift]:
                    n += 1
                    if kind == "part":
                        vals = _one_run(work, receiver, [big], part=value * MiB, uploads=1,
                                        tag=f"r{rnd}-part-{value}MiB-{n}")
                    else:
                        vals = _one_run(work, receiver, small, part=50 * MiB, uploads=value,
                                        tag=f"r{rnd}-uploads-{value}-{n}")
                    runs[(kind, value)].append(vals)
        finally:
            receiver.stop()
    for (kind, value), rs in runs.items():
        entry = {"value": value, "runs": rs, "summary": {k: summary([r[k] for r in rs]) for k in rs[0]}}
        result["parts" if kind == "part" else "uploads"].append(entry)
    return result


def render(result: dict[str, Any]) -> str:
    def rows(entries, label):
        return [[label(e["value"]),
                 fmt_med([r["mibs"] for r in e["runs"]], "{:.0f}"),
                 fmt_med([r["rss"] / MiB for r in e["runs"]], "{:.0f}"),
                 fmt_med([r["cpu"] for r in e["runs"]], "{:.1f}"),
                 fmt_med([r["server_cpu"] for r in e["runs"]], "{:.1f}")] for e in entries]

    size = result["size"] / MiB
    heads = ["MiB/s", "daemon peak RSS MiB", "daemon CPU s", "server CPU s"]
    a = table(["part size"] + heads, rows(result["parts"], lambda v: f"{v} MiB"),
              title=f"Part size sweep: one {size:.0f} MiB file, concurrency.uploads 1, "
                    f"{result['rounds']} rounds, median (min–max)")
    b = table(["concurrency.uploads"] + heads, rows(result["uploads"], str),
              title=f"concurrency.uploads sweep: {result['files']} files of {size / result['files']:.0f} MiB, "
                    f"50 MiB parts, {result['rounds']} rounds, median (min–max)")
    return a + "\n\n" + b + ("\n\nMiB/s from the journal: first upload start to last done (settle and "
                             "start-up left out); syncd run against syncd serve.")


def plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, xlabel in ((axes[0], "parts", "part size (MiB)"), (axes[1], "uploads", "concurrency.uploads")):
        entries = result[key]
        xs = [e["value"] for e in entries]
        mibs = [median([r["mibs"] for r in e["runs"]]) for e in entries]
        lo = [m - min(r["mibs"] for r in e["runs"]) for m, e in zip(mibs, entries)]
        hi = [max(r["mibs"] for r in e["runs"]) - m for m, e in zip(mibs, entries)]
        rss = [median([r["rss"] / MiB for r in e["runs"]]) for e in entries]
        ax.errorbar(xs, mibs, yerr=[lo, hi], marker="o", capsize=3, color="tab:blue", label="MiB/s")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("MiB/s (median, bars min–max)", color="tab:blue")
        ax.set_ylim(bottom=0)
        if key == "parts":
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs, [str(x) for x in xs])
        ax2 = ax.twinx()
        ax2.plot(xs, rss, marker="s", color="tab:red", linestyle="--", label="peak RSS")
        ax2.set_ylabel("daemon peak RSS (MiB)", color="tab:red")
        ax2.set_ylim(bottom=0)
    axes[0].set_title(f"part size, one {result['size'] / MiB:.0f} MiB file")
    axes[1].set_title(f"{result['files']} files, 50 MiB parts")
    return save_figure(fig, out)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="512MiB")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", type=_ints, default=DEFAULT_PARTS, help="MiB, comma list (default 5,8,16,50,100)")
    p.add_argument("--uploads", type=_ints, default=DEFAULT_UPLOADS, help="comma list (default 1,2,4)")
    p.add_argument("--files", type=int, default=4, help="files for the concurrency sweep (default 4)")
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    t0 = time.monotonic()
    result = run(size=parse_size(args.size), rounds=args.rounds, parts=args.parts, uploads=args.uploads,
                 files=args.files)
    result["seconds"] = time.monotonic() - t0
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
