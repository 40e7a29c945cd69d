"""tus throughput and memory: ``syncd upload`` against tuspy, to the same @tus/server.

    .venv/bin/python -m bench.tus [--size 1GiB] [--rounds 3] [--part 50MiB] [--json FILE]

One random file, the same chunk size for both, to one @tus/server with its file store
(``tests/support/tus_server.mjs``, packages from ``.ci/install-tus-server``), as its own
node process. Contenders, alternating inside each round in a rotated order:

- ``syncd upload -c CFG --target main FILE`` with a ``protocol: tus`` target,
  ``verify: server`` (the server checks the size): parts streamed from disk in 1 MiB
  blocks, hashed in the same read;
- the same with ``verify: read_back`` (one more pass over the bytes: the upload is
  downloaded and its MD5 compared), for what that policy costs;
- tuspy (``bench/_tuspy.py``): each chunk read whole into memory and PATCHed.

Figures as in ``bench.throughput``: MiB/s = size / wall time of the process (start-up
included), peak RSS (VmHWM), disk bytes read per byte (the file evicted from the page
cache before every run), CPU seconds; the server's peak RSS and CPU. Target (issue 12):
syncd (``verify: server``) at least tuspy's MiB/s (medians) at no more peak RSS.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    PYTHON,
    REPO,
    MiB,
    ServerProcess,
    _stop,
    child_env,
    dump_json,
    evict,
    fmt_med,
    free_port,
    log,
    machine,
    run_measured,
    summary,
    syncd_config,
    table,
    temp_dir,
    write_random,
)
from syncd.units import parse_size


class TusNode(ServerProcess):
    """@tus/server + @tus/file-store, storing under a temp dir."""

    name = "@tus/server"

    def __init__(self, root: Path):
        from tests.support.tus import SCRIPT, node_modules

        self.root = root
        self.store = root / "store"
        self.token = "bench-token"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/files"
        self._cmd = ["node", str(SCRIPT), f"--modules={node_modules()}", f"--dir={self.store}",
                     f"--port={self.port}", f"--token={self.token}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> TusNode:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening "):
            _stop(self.proc)
            raise RuntimeError("@tus/server did not start (run .ci/install-tus-server)")
        self.pid = self.proc.pid
        return self

    def stored(self) -> list[Path]:
        """The uploads' data files (@tus/file-store keeps a ``.json`` of metadata beside each)."""
        return [p for p in self.store.iterdir() if p.suffix != ".json"] if self.store.is_dir() else []

    def stored_sizes(self) -> list[int]:
        return [p.stat().st_size for p in self.stored()]

    def clear(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)

    def stop(self) -> None:
        _stop(self.proc)


def _timeout(size: int) -> float:
    return 120 + size / (2 * MiB)


def _syncd_config(base: Path, server: TusNode, *, part: int, verify: str) -> Path:
    path = syncd_config(base, url=server.url, token=server.token, part_size=part)
    data = yaml.safe_load(path.read_text())
    data["targets"]["main"].update(protocol="tus", verify=verify)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(*, size: int, rounds: int, part: int) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "tus", "size": size, "part": part, "rounds": rounds,
                              "machine": machine(), "rows": []}
    env = child_env()
    with temp_dir("tus") as work:
        server = TusNode(work / "tus").start()
        try:
            log(f"tus: writing a {size / MiB:.0f} MiB random file")
            path = write_random(work / "payload.bin", size)
            counter = iter(range(10**6))

            def syncd(verify: str):
                def go() -> Any:
                    base = work / f"syncd-{next(counter)}"
                    base.mkdir()
                    cfg = _syncd_config(base, server, part=part, verify=verify)
                    return run_measured([PYTHON, "-m", "syncd", "upload", "-c", str(cfg), "--target", "main",
                                         str(path)], timeout=_timeout(size), env=env)
                return go

            contenders = [
                ("syncd upload (verify: server)", syncd("server")),
                ("syncd upload (verify: read_back)", syncd("read_back")),
                ("tuspy", lambda: run_measured([PYTHON, "-m", "bench._tuspy", server.url, server.token, str(path),
                                                str(part)], timeout=_timeout(size), env=env)),
            ]
            runs: list[list[dict[str, Any]]] = [[] for _ in contenders]
            for rnd in range(rounds):
                order = list(range(len(contenders)))
                order = order[rnd % len(order):] + order[:rnd % len(order)]
                for i in order:
                    name, go = contenders[i]
                    evict(path)
                    server.reset_peak()
                    cpu0 = server.cpu()
                    r = go().check()
                    if size not in server.stored_sizes():
                        raise RuntimeError(f"{name}: no stored upload of {size} bytes ({server.stored_sizes()})")
                    server.clear()
                    vals = {"wall": r.wall, "mibs": size / MiB / r.wall, "rss": r.maxrss,
                            "disk_per_byte": r.read_bytes / size, "cpu": r.cpu,
                            "server_rss": server.peak_rss(), "server_cpu": server.cpu() - cpu0}
                    runs[i].append(vals)
                    log(f"  {name:34} {vals['mibs']:7.1f} MiB/s  rss {vals['rss'] / MiB:6.1f} MiB  "
                        f"disk/byte {vals['disk_per_byte']:.3f}  cpu {vals['cpu']:.1f}s")
            for (name, _), rs in zip(contenders, runs):
                result["rows"].append({"name": name, "runs": rs,
                                       "summary": {k: summary([r[k] for r in rs]) for k in rs[0]}})
        finally:
            server.stop()
    rows = {r["name"]: r["summary"] for r in result["rows"]}
    s, t = rows["syncd upload (verify: server)"], rows["tuspy"]
    result["targets"] = [
        {"target": "syncd MiB/s >= tuspy MiB/s (medians)",
         "value": f"{s['mibs']['median']:.1f} vs {t['mibs']['median']:.1f}",
         "ok": s["mibs"]["median"] >= t["mibs"]["median"]},
        {"target": "syncd peak RSS <= tuspy peak RSS (medians)",
         "value": f"{s['rss']['median'] / MiB:.1f} vs {t['rss']['median'] / MiB:.1f} MiB",
         "ok": s["rss"]["median"] <= t["rss"]["median"]},
    ]
    return result


def render(result: dict[str, Any]) -> str:
    rows = []
    for row in result["rows"]:
        rs = row["runs"]
        rows.append([row["name"], fmt_med([r["mibs"] for r in rs], "{:.0f}"),
                     fmt_med([r["rss"] / MiB for r in rs], "{:.0f}"),
                     fmt_med([r["disk_per_byte"] for r in rs], "{:.3f}"),
                     fmt_med([r["cpu"] for r in rs], "{:.1f}"),
                     fmt_med([r["server_rss"] / MiB for r in rs], "{:.0f}"),
                     fmt_med([r["server_cpu"] for r in rs], "{:.1f}")])
    title = (f"tus: one {result['size'] / MiB:.0f} MiB file to @tus/server (file store), "
             f"{result['part'] / MiB:g} MiB chunks, {result['rounds']} rounds, median (min–max)")
    text = table(["contender", "MiB/s", "client peak RSS MiB", "disk read/byte", "client CPU s",
                  "server peak RSS MiB", "server CPU s"], rows, title=title)
    lines = [text, ""] + [f"- {'ok' if t['ok'] else 'MISSED'}: {t['target']}: {t['value']}"
                          for t in result["targets"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tus", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--part", default="50MiB")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(size=parse_size(args.size), rounds=args.rounds, part=parse_size(args.part))
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    return 0 if all(t["ok"] for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
