"""Idle cost: an idle daemon with N ``done`` files in its journal (and in its watch):
CPU seconds and wake-ups over a quiet minute.

    .venv/bin/python -m bench.idle [--files 10000] [--seconds 60] [--rounds 1] [--no-baseline]

The watch holds N files of 4 KiB; the journal is filled through syncd's own ``Journal``
API (``mark_settled``, ``start_upload``, ``finish_upload``, ``mark_done``: what a finished
upload writes), so every file is ``done`` with its current fingerprint and nothing is
uploaded again. ``syncd run`` starts as under systemd (notify socket, 60 s watchdog);
after READY=1 the harness waits until the start-up scan is over (CPU use under 2 % for
two seconds in a row, at most 120 s), then measures for ``--seconds``: CPU seconds (user +
system, all threads, /proc/PID/stat) and wake-ups (voluntary + involuntary context
switches of every thread, /proc/PID/task/*/status), plus the sd_notify datagrams sent.
The baseline is the same daemon on an empty watch and journal, alternated with it. No
server is running: an idle daemon must not talk to it (every file is checked to be still
``done`` at the end).
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
    dump_json,
    fmt_med,
    free_port,
    log,
    machine,
    proc_cpu,
    syncd_config,
    table,
    temp_dir,
    thread_ctx_switches,
)
from bench.smallfiles import write_files
from syncd.journal import Fingerprint, Journal


def prepare(base: Path, n: int) -> Path:
    """A config whose watch holds ``n`` files, all ``done`` in its journal."""
    url = f"http://127.0.0.1:{free_port()}/chunked_upload/"  # nothing listens: idle must not upload
    cfg = syncd_config(base, url=url, token="bench", part_size="50MiB", quiet="1s")
    drop = base / "drop"
    if n:
        write_files(drop, n, 4096)
        journal = Journal(base / "state" / "journal.db")
        try:
            for path in sorted(drop.rglob("*.bin")):
                rel = path.relative_to(drop).as_posix()
                fp = Fingerprint.of(os.stat(path))
                row = journal.mark_settled("drop", rel, fp)
                up = journal.start_upload(row.id, target="main", source=str(path), remote_name=rel, fp=fp,
                                          size=fp.size, part_size=50 * MiB)
                journal.finish_upload(up.id, state="completed", md5="0" * 32)
                journal.mark_done(row.id, md5="0" * 32, remote_name=rel)
        finally:
            journal.close()
    return cfg


def measure(cfg: Path, *, n: int, seconds: float) -> dict[str, Any]:
    daemon = DaemonRun(cfg)
    try:
        daemon.start()
        ready = daemon.wait_ready(timeout=120)
        # the start-up scan runs after READY=1: wait for it to end
        deadline = time.monotonic() + 120
        quiet_for = 0
        last = proc_cpu(daemon.pid)
        while quiet_for < 2 and time.monotonic() < deadline:
            time.sleep(1)
            now = proc_cpu(daemon.pid)
            quiet_for = quiet_for + 1 if now - last < 0.02 else 0
            last = now
        startup_cpu = last
        startup_seconds = time.time() - daemon.started_at
        cpu0, ctx0, msgs0, t0 = proc_cpu(daemon.pid), thread_ctx_switches(daemon.pid), daemon.listener.messages, \
            time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            daemon.sample()
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited:\n{daemon.log()[-2000:]}")
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        elapsed = time.monotonic() - t0
        cpu, ctx, msgs = proc_cpu(daemon.pid) - cpu0, thread_ctx_switches(daemon.pid) - ctx0, \
            daemon.listener.messages - msgs0
        threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
        counts = daemon.counts()
    finally:
        daemon.stop()
        daemon.kill()
    if n and counts != {"done": n}:
        raise RuntimeError(f"an idle daemon changed the journal: {counts}\n{daemon.log()[-2000:]}")
    vals = {"cpu": cpu, "cpu_per_min": cpu * 60 / elapsed, "wakeups": ctx, "wakeups_per_s": ctx / elapsed,
            "notify_msgs": msgs, "threads": threads, "rss": daemon.peak, "ready_seconds": ready,
            "startup_cpu": startup_cpu, "startup_seconds": startup_seconds, "seconds": elapsed}
    log(f"  {n:6d} files: {cpu:.2f} CPU s in {elapsed:.0f}s, {ctx / elapsed:.1f} wake-ups/s, {threads} threads, "
        f"rss {daemon.peak / MiB:.0f} MiB, start-up {startup_seconds:.1f}s / {startup_cpu:.1f} CPU s")
    return vals


def run(*, files: int = 10_000, seconds: float = 60.0, rounds: int = 1, baseline: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "idle", "files": files, "seconds": seconds, "rounds": rounds,
                              "machine": machine(), "runs": {files: []}}
    if baseline:
        result["runs"][0] = []
    with temp_dir("idle") as work:
        log(f"idle: preparing {files:,} done files")
        cfgs = {files: prepare(work / "full", files)}
        if baseline:
            cfgs[0] = prepare(work / "empty", 0)
        for rnd in range(rounds):
            order = list(cfgs) if rnd % 2 == 0 else list(reversed(cfgs))
            for n in order:
                result["runs"][n].append(measure(cfgs[n], n=n, seconds=seconds))
    return result


def render(result: dict[str, Any]) -> str:
    rows = []
    for n, runs in result["runs"].items():
        rows.append([f"{int(n):,} done files" if int(n) else "empty watch (baseline)",
                     fmt_med([r["cpu"] for r in runs], "{:.3f}"),
                     fmt_med([r["wakeups"] for r in runs], "{:.0f}"),
                     fmt_med([r["wakeups_per_s"] for r in runs], "{:.1f}"),
                     fmt_med([r["notify_msgs"] for r in runs], "{:.0f}"),
                     fmt_med([r["threads"] for r in runs], "{:.0f}"),
                     fmt_med([r["rss"] / MiB for r in runs], "{:.0f}"),
                     fmt_med([r["startup_seconds"] for r in runs], "{:.1f}"),
                     fmt_med([r["startup_cpu"] for r in runs], "{:.1f}")])
    return table(["journal", f"CPU s in {result['seconds']:g} s", "wake-ups", "wake-ups/s", "sd_notify msgs",
                  "threads", "peak RSS MiB", "start to idle s", "start-up CPU s"], rows,
                 title=f"Idle cost over {result['seconds']:g} s, {result['rounds']} round(s), median (min–max)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = run(files=args.files, seconds=args.seconds, rounds=args.rounds, baseline=not args.no_baseline)
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
