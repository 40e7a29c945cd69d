"""Soak: a steady trickle of files of mixed sizes into a running daemon for ``--minutes``,
the receiver restarted every ``--restart-every``; the daemon's RSS and open file
descriptors sampled every ``--sample`` and plotted.

    .venv/bin/python -m bench.soak [--minutes 60] [--rate 4] [--restart-every 10m]
                                   [--sample 60s] [--json FILE] [--plot FILE]

``syncd run`` (as under systemd: notify socket, 60 s watchdog) watches a folder with
``after_upload: delete`` (a drop folder that stays small, as in production) and uploads to
``syncd serve`` (its own process, on a fixed port, 1 MiB parts) with two uploads at once.
The harness writes ``--rate`` files a second: mostly small (1-64 KiB), some of a few
MiB (chunked sessions that a receiver restart interrupts), a few of 8-16 MiB. Every
``--restart-every`` the receiver is stopped (SIGTERM) and started again on the same
port, so uploads in flight fail, wait, and resume. What the receiver stored is deleted
as the run goes, so the disk stays small.

Each sample: the daemon's RSS (``VmRSS``), its peak so far (``VmHWM``), open file
descriptors (``/proc/PID/fd``, and how many of them are sockets: pooled HTTP connections),
threads, CPU seconds and the journal's counts. At the
end the writer stops, the backlog drains (bounded), and the verdict compares the samples
after the first ``--warmup`` (default 10 min) with the one at its end: RSS and fds must
not grow beyond ``--rss-slack`` (default 4 MiB) and 0, and the peak must stay under
80 MiB. Exit status 1 if not, or if a file did not end ``done``. The trend (the slope of
every sample after the warm-up) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    DaemonRun,
    MiB,
    Receiver,
    dump_json,
    log,
    machine,
    proc_cpu,
    syncd_config,
    temp_dir,
)
from syncd.units import parse_duration

KiB = 1024
PEAK_LIMIT = 80 * MiB
SIZES = [  # (share, low, high)
    (0.80, 1 * KiB, 64 * KiB),
    (0.17, 256 * KiB, 4 * MiB),
    (0.03, 8 * MiB, 16 * MiB),
]


def pick_size(rng: random.Random) -> int:
    roll, acc = rng.random(), 0.0
    for share, low, high in SIZES:
        acc += share
        if roll < acc:
            return rng.randint(low, high)
    return rng.randint(SIZES[-1][1], SIZES[-1][2])


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0]) * (KiB if key != "Threads" else 1)
    return out


def _sockets(pid: int) -> int:
    """How many of the process's open descriptors are sockets (its HTTP connections, mostly)."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass  # closed meanwhile
    return n


def sample(daemon: DaemonRun, t0: float) -> dict[str, Any]:
    st = _status(daemon.pid)
    return {"minute": (time.time() - t0) / 60, "rss": st["VmRSS"], "hwm": st["VmHWM"],
            "threads": st["Threads"], "fds": len(os.listdir(f"/proc/{daemon.pid}/fd")),
            "sockets": _sockets(daemon.pid), "cpu": proc_cpu(daemon.pid), "counts": daemon.counts()}


class Trickle:
    """Writes ``rate`` files a second into ``folder`` (on its own thread) until stopped."""

    def __init__(self, folder: Path, *, rate: float, seed: int):
        self.folder = folder
        self.rate = rate
        self.rng = random.Random(seed)
        self.written = 0
        self.bytes = 0
        self.stop = threading.Event()
        self.block = os.urandom(1 * MiB)
        self._thread = threading.Thread(target=self._run, name="soak-trickle", daemon=True)

    def start(self) -> Trickle:
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            size = pick_size(self.rng)
            sub = self.folder / f"m{self.written // 500:04d}"
            sub.mkdir(exist_ok=True)
            with open(sub / f"f{self.written:07d}.bin", "wb") as f:
                f.write(str(self.written).encode())  # every file's content differs
                left = size
                while left > 0:
                    n = min(left, len(self.block))
                    f.write(self.block[:n])
                    left -= n
            self.written += 1
            self.bytes += size
            next_at += self.rng.expovariate(self.rate)
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def join(self) -> None:
        self.stop.set()
        self._thread.join(30)


def verdict(samples: list[dict[str, Any]], *, warmup: float, rss_slack: int) -> dict[str, Any]:
    after = [s for s in samples if s["minute"] >= warmup - 1e-6]
    if len(after) < 2:
        return {"judged": False, "why": f"fewer than two samples after minute {warmup:g}"}
    base, last = after[0], after[-1]
    rss_growth = last["rss"] - base["rss"]
    fd_growth = last["fds"] - base["fds"]
    peak = max(s["hwm"] for s in samples)
    slope = _slope([s["minute"] for s in after], [s["rss"] for s in after])
    return {"judged": True, "from_minute": base["minute"], "to_minute": last["minute"],
            "rss_trend_per_hour": slope * 60,
            "rss_at_warmup": base["rss"], "rss_at_end": last["rss"], "rss_growth": rss_growth,
            "rss_max_after_warmup": max(s["rss"] for s in after),
            "fds_at_warmup": base["fds"], "fds_at_end": last["fds"], "fd_growth": fd_growth,
            "fds_max_after_warmup": max(s["fds"] for s in after), "peak": peak,
            "rss_ok": rss_growth <= rss_slack, "fds_ok": fd_growth <= 0, "peak_ok": peak < PEAK_LIMIT}


def _slope(xs: list[float], ys: list[float]) -> float:
    """The least-squares slope of ys over xs. The trend of all samples after the warm-up,
    beside the two-point growth: a sample can land on either side of the daemon's minutely
    hand-back of free heap pages (``allocator.release_free_memory``)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def run(*, minutes: float, rate: float, restart_every: float, sample_every: float, warmup: float,
        rss_slack: int, seed: int, drain_timeout: float = 600.0) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "soak", "minutes": minutes, "rate": rate,
                              "restart_every": restart_every, "sample_every": sample_every, "warmup": warmup,
                              "machine": machine(), "samples": [], "restarts": []}
    with temp_dir("soak") as work:
        (work / "receiver").mkdir()
        receiver = Receiver(work / "receiver").start()
        daemon = None
        trickle = None
        try:
            cfg = syncd_config(work / "syncd", url=receiver.url, token=receiver.token, part_size="1MiB", uploads=2,
                               quiet="1s", extra_watch={"after_upload": "delete"})
            daemon = DaemonRun(cfg)
            daemon.start()
            daemon.wait_ready()
            t0 = time.time()
            trickle = Trickle(work / "syncd" / "drop", rate=rate, seed=seed).start()
            result["samples"].append(sample(daemon, t0))
            end = t0 + minutes * 60
            next_sample = t0 + sample_every
            next_restart = t0 + restart_every
            while True:
                now = time.time()
                if now >= end:
                    break
                daemon.sample()  # also fails the run at once if the daemon died
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited:\n{daemon.log()[-3000:]}")
                if now >= next_restart:
                    log("  restarting the receiver")
                    receiver.stop()
                    receiver.start()
                    result["restarts"].append((time.time() - t0) / 60)
                    next_restart += restart_every
                if now >= next_sample:
                    s = sample(daemon, t0)
                    result["samples"].append(s)
                    c = s["counts"]
                    log(f"  minute {s['minute']:5.1f}: rss {s['rss'] / MiB:5.1f} MiB (peak {s['hwm'] / MiB:5.1f}), "
                        f"fds {s['fds']}, threads {s['threads']}, cpu {s['cpu']:.0f}s, written {trickle.written}, "
                        f"done {c.get('done', 0)}, waiting {c.get('waiting', 0)}, failed {c.get('failed', 0)}")
                    for p in receiver.stored():  # keep the disk small
                        p.unlink(missing_ok=True)
                    next_sample += sample_every
                time.sleep(min(1.0, max(0.0, min(next_sample, next_restart, end) - time.time())))
            trickle.join()
            log(f"  writer stopped after {trickle.written} files ({trickle.bytes / MiB:.0f} MiB); draining")
            n = trickle.written
            daemon.wait_for(lambda: sum(daemon.counts().get(s, 0) for s in ("done", "failed", "gone")) >= n,
                            timeout=drain_timeout, interval=1.0, what=f"{n} files finished")
            result["samples"].append(sample(daemon, t0))
            result["files"] = n
            result["bytes"] = trickle.bytes
            result["final_counts"] = daemon.counts()
        finally:
            if trickle is not None:
                trickle.join()
            if daemon is not None:
                daemon.stop()
                daemon.kill()
            receiver.stop()
    result["verdict"] = verdict(result["samples"], warmup=warmup, rss_slack=rss_slack)
    return result


def render(result: dict[str, Any]) -> str:
    lines = [f"#### Soak: {result['minutes']:g} min, {result['rate']:g} files/s of mixed sizes, receiver restarted "
             f"every {result['restart_every'] / 60:g} min, {result.get('files', 0):,} files "
             f"({result.get('bytes', 0) / MiB:,.0f} MiB)", "",
             "| minute | RSS MiB | peak MiB | open fds | of them sockets | threads | CPU s | done | waiting |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in result["samples"]:
        c = s["counts"]
        lines.append(f"| {s['minute']:.1f} | {s['rss'] / MiB:.1f} | {s['hwm'] / MiB:.1f} | {s['fds']} "
                     f"| {s.get('sockets', '-')} | {s['threads']} | {s['cpu']:.0f} | {c.get('done', 0)} "
                     f"| {c.get('waiting', 0)} |")
    v = result["verdict"]
    lines.append("")
    if not v["judged"]:
        lines.append(f"not judged: {v['why']}")
    else:
        lines.append(
            f"after minute {v['from_minute']:.0f}: RSS {v['rss_at_warmup'] / MiB:.1f} -> "
            f"{v['rss_at_end'] / MiB:.1f} MiB (max {v['rss_max_after_warmup'] / MiB:.1f}; grew "
            f"{v['rss_growth'] / MiB:+.1f}: {'ok' if v['rss_ok'] else 'GROWS'}; trend "
            f"{v['rss_trend_per_hour'] / MiB:+.2f} MiB/hour), open fds {v['fds_at_warmup']} -> "
            f"{v['fds_at_end']} (max {v['fds_max_after_warmup']}: {'ok' if v['fds_ok'] else 'GROWS'}), peak RSS "
            f"{v['peak'] / MiB:.1f} MiB ({'< 80: ok' if v['peak_ok'] else '>= 80 MiB: too much'})")
    counts = result.get("final_counts", {})
    lines.append(f"final journal: {', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}")
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.common import save_figure

    s = result["samples"]
    minutes = [x["minute"] for x in s]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(minutes, [x["rss"] / MiB for x in s], marker="o", label="RSS")
    ax1.plot(minutes, [x["hwm"] / MiB for x in s], linestyle="--", label="peak RSS so far")
    ax1.axhline(PEAK_LIMIT / MiB, color="red", linewidth=0.8, label="80 MiB")
    ax1.set_ylabel("MiB")
    ax1.legend(loc="lower right")
    ax2.plot(minutes, [x["fds"] for x in s], marker="o", color="tab:green", label="open fds")
    ax2.plot(minutes, [x["threads"] for x in s], marker=".", color="tab:gray", label="threads")
    ax2.set_ylabel("count")
    ax2.set_xlabel("minutes")
    ax2.legend(loc="lower right")
    for ax in (ax1, ax2):
        for r in result["restarts"]:
            ax.axvline(r, color="orange", linewidth=0.8)
    ax1.set_title(f"syncd run soak ({result['rate']:g} files/s; orange: receiver restarts)")
    return save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=4.0, help="files written per second (default 4)")
    p.add_argument("--restart-every", default="10m", help="receiver restart interval (default 10m)")
    p.add_argument("--sample", default="60s", help="sampling interval (default 60s)")
    p.add_argument("--warmup", type=float, default=10.0, help="minutes before growth is judged (default 10)")
    p.add_argument("--rss-slack", type=float, default=4.0, help="MiB of RSS growth tolerated after warm-up")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, default=REPO / "bench" / "results" / "soak.png")
    args = p.parse_args(argv)
    result = run(minutes=args.minutes, rate=args.rate, restart_every=parse_duration(args.restart_every),
                 sample_every=parse_duration(args.sample), warmup=args.warmup, rss_slack=int(args.rss_slack * MiB),
                 seed=args.seed)
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    try:
        log(f"plot: {plot(result, args.plot)}")
    except ImportError:
        log("plot: matplotlib is not installed (pip install -e .[bench])")
    v = result["verdict"]
    counts = result.get("final_counts", {})
    ok = v.get("judged") and v["rss_ok"] and v["fds_ok"] and v["peak_ok"] and set(counts) <= {"done"}
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
