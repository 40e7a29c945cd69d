"""Throughput and memory of one big file: syncd against the synapse-sdk-style client.

    .venv/bin/python -m bench.throughput [--size 1GiB] [--rounds 3] [--part 50MiB]
                                         [--servers receiver,drf,tus] [--no-limits] [--drop-caches]
                                         [--md5-too] [--code NAME=DIR,...] [--json FILE]

Against the same servers in one run (``syncd serve`` as its own process, and the real
drf-chunked-upload under waitress), each round uploads the same random file with:

- ``syncd upload -c CFG --target main FILE`` (the one-shot command: the same journal,
  engine and chunked backend as the daemon; a fresh journal each run). To ``syncd serve``
  both sides hash every byte with SHA-256, to drf-chunked-upload with MD5; ``--md5-too``
  adds a run to ``syncd serve`` with the target's ``checksum: md5``; ``--code before=DIR,after=DIR``
  runs ``syncd upload`` and ``syncd serve`` of each checkout instead, and each checkout's
  ``syncd upload`` to drf-chunked-upload (an A/B in one sitting);
- the naive client (``tests/support/synapse_client.py``, what synapse-sdk's
  ``create_chunked_upload`` does: each part read whole into memory, ``requests.put(files=)``);
- to drf-chunked-upload, the real synapse-sdk client (``bench/_sdk.py``) where
  ``bench/install-sdk`` has made its virtualenv (or ``--sdk-python`` names another);

and, with ``tus`` in ``--servers``, tuspy to @tus/server (``bench/_tuspy.py``: a protocol that
hashes nothing on either side, the yardstick of issue 14); and, unless ``--no-limits``, the
machine's limits in the same run: ``curl -T`` of the whole
file to a plain HTTP sink (the loopback transport ceiling), ``cat`` to /dev/null from a cold
cache (disk read), and ``md5sum`` and ``sha256sum`` from a warm cache (MD5's and SHA-256's
speed on one core).

Each contender is its own process, measured from spawn to exit (interpreter start-up
included): MiB/s = file size / wall time; peak RSS (``wait4``'s ru_maxrss = VmHWM at exit);
disk bytes read per uploaded byte (``read_bytes`` of ``/proc/PID/io``; the file is evicted
from the page cache before every run with ``posix_fadvise(DONTNEED)``, or with
``--drop-caches`` by ``echo 3 > /proc/sys/vm/drop_caches``); ``rchar`` per byte (every byte
passed through read(), cached or not); CPU seconds. Servers: peak RSS during the run (VmHWM,
reset before each run through ``/proc/PID/clear_refs``) and CPU seconds.

Contenders alternate inside each round and the order rotates between rounds; the table
shows the median and the spread (min–max). Targets (issue 3): syncd's MiB/s at least the
naive client's; at most 1.02 disk bytes read per uploaded byte; peak RSS under 80 MiB with
50 MiB parts. Issue 14: syncd -> syncd serve at least tuspy -> @tus/server, and at least 0.7x
md5sum's rate, while both sides of syncd hash every byte.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    REPO,
    Drf,
    MiB,
    ProcResult,
    Receiver,
    ServerProcess,
    Sink,
    child_env,
    drop_all_caches,
    dump_json,
    evict,
    fmt_med,
    log,
    machine,
    median,
    parse_code,
    run_measured,
    save_figure,
    summary,
    syncd_config,
    table,
    temp_dir,
    write_random,
)
from syncd.units import parse_size


def _tus_node(root: Path) -> ServerProcess:
    from bench.tus import TusNode

    return TusNode(root)


SERVERS = {"receiver": Receiver, "drf": Drf, "tus": _tus_node}
ROOTED = ("receiver", "tus")  # servers that store under a folder of the run
MD5SUM_SHARE = 0.7
RSS_TARGET = 80 * MiB
DISK_TARGET = 1.02


@dataclass
class Contender:
    name: str
    server: str  # "receiver", "drf", "sink" or "" (no server)
    run: Callable[[Path], ProcResult]
    uploads: bool = True  # a real upload: check the stored file, count against targets


SDK_PYTHON = REPO / "bench" / ".sdk-venv" / "bin" / "python"
SDK_NAME = "synapse-sdk client"
SDK_SPEED = 1.3  # issue 14, goal 2: syncd -> drf at least 1.3x the SDK's MiB/s ...
SDK_RSS_SHARE = 1 / 3  # ... at no more than a third of its peak RSS


def _timeout(size: int) -> float:
    return 120 + size / (2 * MiB)  # never slower than 2 MiB/s unless something is wrong


def build_contenders(work: Path, servers: dict[str, ServerProcess], sink: Sink | None, *,
                     size: int, part: int, limits: bool, md5_too: bool = False,
                     code: dict[str, Path] | None = None, sdk_python: Path | None = None) -> list[Contender]:
    env = child_env()
    counter = iter(range(10**6))
    contenders: list[Contender] = []

    def syncd_upload(path: Path, server: ServerProcess, *, tree: Path = REPO,
                     target: dict | None = None) -> ProcResult:
        """``syncd upload`` of the checkout ``tree`` with a fresh journal. It runs in that
        tree: ``python -m`` puts the working folder ahead of PYTHONPATH."""
        base = work / f"syncd-{next(counter)}"
        base.mkdir()
        cfg = syncd_config(base, url=server.url, token=server.token, part_size=part, extra_target=target)
        return run_measured([PYTHON, "-m", "syncd", "upload", "-c", str(cfg), "--target", "main", str(path)],
                            timeout=_timeout(size), env=child_env(tree), cwd=tree)

    for name, tree in (code or {}).items():
        contenders.append(Contender(f"syncd upload [{name}]", f"receiver:{name}", partial(
            syncd_upload, server=servers[f"receiver:{name}"], tree=tree)))

    for key, server in servers.items():
        if key.startswith("receiver:"):
            continue
        if key == "tus":
            def tuspy(path: Path, server=server) -> ProcResult:
                return run_measured([PYTHON, "-m", "bench._tuspy", server.url, server.token, str(path), str(part)],
                                    timeout=_timeout(size), env=env)

            contenders.append(Contender("tuspy", key, tuspy))
            continue

        def naive(path: Path, server=server) -> ProcResult:
            return run_measured([PYTHON, "-m", "bench._naive", server.url, server.token, str(path), str(part)],
                                timeout=_timeout(size), env=env)

        if code and key == "drf":  # each checkout's syncd upload to the one drf-chunked-upload
            for name, tree in code.items():
                contenders.append(Contender(f"syncd upload [{name}]", key, partial(
                    syncd_upload, server=server, tree=tree)))
        else:
            contenders.append(Contender("syncd upload", key, partial(syncd_upload, server=server)))
        if md5_too and key == "receiver":
            contenders.append(Contender("syncd upload, checksum: md5", key, partial(
                syncd_upload, server=server, target={"checksum": "md5"})))
        contenders.append(Contender("naive client", key, naive))
        if key == "drf" and sdk_python is not None:
            def sdk(path: Path, server=server) -> ProcResult:
                return run_measured([str(sdk_python), "-m", "bench._sdk", server.server.base_url, server.token,
                                     str(path), str(part)], timeout=_timeout(size), env=env)

            contenders.append(Contender(SDK_NAME, key, sdk))

    if limits and sink is not None:
        contenders.append(Contender("curl -T (whole file)", "sink", lambda path: run_measured(
            ["curl", "-sS", "-f", "-o", "/dev/null", "-H", "Expect:", "-T", str(path), sink.url],
            timeout=_timeout(size), env=env), uploads=False))
    if limits:
        contenders.append(Contender("cat > /dev/null (disk read)", "", lambda path: run_measured(
            ["sh", "-c", 'exec cat "$1" > /dev/null', "sh", str(path)], timeout=_timeout(size)), uploads=False))
    return contenders


def _hashsum_warm(tool: str, path: Path, size: int) -> ProcResult:
    run_measured(["sh", "-c", 'exec cat "$1" > /dev/null', "sh", str(path)], timeout=_timeout(size)).check()
    return run_measured([tool, str(path)], timeout=_timeout(size))


HASH_TOOLS = ("md5sum", "sha256sum")


def run(*, size: int, rounds: int, part: int, servers: tuple[str, ...] = ("receiver", "drf", "tus"),
        limits: bool = True, drop_caches: bool = False, md5_too: bool = False,
        code: dict[str, Path] | None = None, sdk_python: Path | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "throughput", "size": size, "part": part, "rounds": rounds,
                              "cache": "drop_caches" if drop_caches else "fadvise(DONTNEED) on the file",
                              "machine": machine(), "rows": [],
                              "code": {name: str(tree) for name, tree in (code or {}).items()}}
    if code:  # each checkout's own receiver instead of this one's
        servers = tuple(s for s in servers if s != "receiver")
    started: list[ServerProcess] = []
    with temp_dir("throughput") as work:
        try:
            log(f"throughput: writing a {size / MiB:.0f} MiB random file")
            path = write_random(work / "payload.bin", size)
            running: dict[str, ServerProcess] = {}
            for key in servers:
                srv = SERVERS[key](work / key) if key in ROOTED else SERVERS[key]()
                if key == "receiver":
                    (work / key).mkdir()
                log(f"throughput: starting {srv.name}")
                running[key] = srv.start()
                started.append(srv)
            for name, tree in (code or {}).items():
                (work / f"receiver-{name}").mkdir()
                srv = Receiver(work / f"receiver-{name}", code=tree)
                log(f"throughput: starting {srv.name} [{name}]")
                running[f"receiver:{name}"] = srv.start()
                started.append(srv)
            sink = None
            if limits:
                sink = Sink().start()
                started.append(sink)
            contenders = build_contenders(work, running, sink, size=size, part=part, limits=limits,
                                          md5_too=md5_too, code=code, sdk_python=sdk_python)
            runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(contenders) + len(HASH_TOOLS))}
            for rnd in range(rounds):
                order = list(range(len(contenders)))
                shift = rnd % len(order)
                order = order[shift:] + order[:shift]
                for i in order:
                    c = contenders[i]
                    server = running.get(c.server) or (sink if c.server == "sink" else None)
                    runs[i].append(_measure(c, path, size, server, drop_caches=drop_caches))
                if limits:
                    for n, tool in enumerate(HASH_TOOLS):
                        r = _hashsum_warm(tool, path, size).check()
                        runs[len(contenders) + n].append(_row_values(r, size, None, 0.0))
                        log(f"  round {rnd + 1}: {tool} (warm) {size / MiB / r.wall:.0f} MiB/s")
            for i, c in enumerate(contenders):
                result["rows"].append({"name": c.name, "server": c.server, "uploads": c.uploads,
                                       "runs": runs[i], "summary": _summarize(runs[i])})
            if limits:
                for n, tool in enumerate(HASH_TOOLS):
                    result["rows"].append({"name": f"{tool} (warm cache)", "server": "", "uploads": False,
                                           "runs": runs[len(contenders) + n],
                                           "summary": _summarize(runs[len(contenders) + n])})
        finally:
            for srv in reversed(started):
                srv.stop()
    result["targets"] = check_targets(result)
    return result


def _measure(c: Contender, path: Path, size: int, server: ServerProcess | None, *,
             drop_caches: bool) -> dict[str, Any]:
    if drop_caches:
        drop_all_caches()
    else:
        evict(path)
    cpu0 = 0.0
    if server is not None:
        server.reset_peak()
        cpu0 = server.cpu()
    r = c.run(path).check()
    vals = _row_values(r, size, server, cpu0)
    if c.uploads and server is not None and hasattr(server, "stored"):
        stored = server.stored()
        sizes = [p.stat().st_size for p in stored]
        if size not in sizes:
            raise RuntimeError(f"{c.name} -> {server.name}: no stored file of {size} bytes (found {sizes})")
        server.clear()
    log(f"  {c.name:28} -> {c.server or '-':9} {vals['mibs']:7.1f} MiB/s  rss {vals['rss'] / MiB:6.1f} MiB  "
        f"disk/byte {vals['disk_per_byte']:.3f}  cpu {vals['cpu']:.1f}s")
    return vals


def _row_values(r: ProcResult, size: int, server: ServerProcess | None, cpu0: float) -> dict[str, Any]:
    return {
        "wall": r.wall, "mibs": size / MiB / r.wall, "rss": r.maxrss,
        "disk_per_byte": r.read_bytes / size, "rchar_per_byte": r.rchar / size, "cpu": r.cpu,
        "server_rss": server.peak_rss() if server is not None else None,
        "server_cpu": (server.cpu() - cpu0) if server is not None else None,
    }


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("wall", "mibs", "rss", "disk_per_byte", "rchar_per_byte", "cpu", "server_rss", "server_cpu")
    return {k: summary([r[k] for r in runs if r.get(k) is not None]) for k in keys}


def _syncd_row(result: dict[str, Any], server: str) -> tuple[str, str]:
    """The row of ``syncd upload`` to ``server``; with ``--code``, the last checkout's (the
    "after" of an A/B), to its own receiver."""
    if not result.get("code"):
        return ("syncd upload", server)
    last = list(result["code"])[-1]
    return (f"syncd upload [{last}]", f"receiver:{last}" if server == "receiver" else server)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = {(r["name"], r["server"]): r["summary"] for r in result["rows"]}
    checks = []
    for server in ("receiver", "drf"):
        s, n = rows.get(_syncd_row(result, server)), rows.get(("naive client", server))
        if s is None or n is None:
            continue
        checks.append({"target": f"{server}: syncd MiB/s >= naive MiB/s (medians)",
                       "value": f"{s['mibs']['median']:.1f} vs {n['mibs']['median']:.1f}",
                       "ok": s["mibs"]["median"] >= n["mibs"]["median"]})
        checks.append({"target": f"{server}: syncd disk bytes read per byte <= {DISK_TARGET} (max of runs)",
                       "value": f"{s['disk_per_byte']['max']:.3f}", "ok": s["disk_per_byte"]["max"] <= DISK_TARGET})
        if result["part"] == 50 * MiB:
            checks.append({"target": f"{server}: syncd peak RSS < 80 MiB with 50 MiB parts (max of runs)",
                           "value": f"{s['rss']['max'] / MiB:.1f} MiB", "ok": s["rss"]["max"] < RSS_TARGET})
    s, k = rows.get(_syncd_row(result, "drf")), rows.get((SDK_NAME, "drf"))
    if s is not None and k is not None:
        speed = s["mibs"]["median"] / k["mibs"]["median"]
        checks.append({"target": f"drf: syncd >= {SDK_SPEED}x the synapse-sdk client's MiB/s (medians)",
                       "value": f"{s['mibs']['median']:.1f} vs {k['mibs']['median']:.1f} ({speed:.2f}x)",
                       "ok": speed >= SDK_SPEED})
        share = s["rss"]["max"] / k["rss"]["median"]
        checks.append({"target": "drf: syncd peak RSS <= 1/3 of the synapse-sdk client's (max vs median)",
                       "value": f"{s['rss']['max'] / MiB:.1f} vs {k['rss']['median'] / MiB:.1f} MiB ({share:.2f})",
                       "ok": share <= SDK_RSS_SHARE})
    s, t = rows.get(_syncd_row(result, "receiver")), rows.get(("tuspy", "tus"))
    m = rows.get(("md5sum (warm cache)", ""))
    if s is not None and t is not None:
        checks.append({"target": "syncd -> syncd serve >= tuspy -> @tus/server (MiB/s, medians)",
                       "value": f"{s['mibs']['median']:.1f} vs {t['mibs']['median']:.1f}",
                       "ok": s["mibs"]["median"] >= t["mibs"]["median"]})
    if s is not None and m is not None:
        share = s["mibs"]["median"] / m["mibs"]["median"]
        checks.append({"target": f"syncd -> syncd serve >= {MD5SUM_SHARE}x md5sum's MiB/s (medians)",
                       "value": f"{s['mibs']['median']:.1f} vs {m['mibs']['median']:.1f} ({share:.2f}x)",
                       "ok": share >= MD5SUM_SHARE})
    return checks


def _server_label(key: str) -> str:
    """``receiver:NAME`` (a checkout's own receiver, ``--code``) reads ``syncd serve [NAME]``."""
    if key.startswith("receiver:"):
        return f"syncd serve [{key.partition(':')[2]}]"
    return SERVER_LABEL[key]


SERVER_LABEL = {"receiver": "syncd serve", "drf": "drf-chunked-upload", "tus": "@tus/server", "sink": "plain sink",
                "": "-"}


def render(result: dict[str, Any]) -> str:
    rows = []
    for row in result["rows"]:
        s = row["summary"]
        runs = row["runs"]
        rows.append([
            row["name"], _server_label(row["server"]),
            fmt_med([r["mibs"] for r in runs], "{:.0f}"),
            fmt_med([r["rss"] / MiB for r in runs], "{:.0f}"),
            fmt_med([r["disk_per_byte"] for r in runs], "{:.3f}"),
            fmt_med([r["rchar_per_byte"] for r in runs], "{:.3f}"),
            fmt_med([r["cpu"] for r in runs], "{:.1f}"),
            fmt_med([r["server_rss"] / MiB for r in runs if r["server_rss"] is not None], "{:.0f}"),
            fmt_med([r["server_cpu"] for r in runs if r["server_cpu"] is not None], "{:.1f}"),
        ])
        del s
    title = (f"Throughput: one {result['size'] / MiB:.0f} MiB file, {result['part'] / MiB:g} MiB parts, "
             f"{result['rounds']} rounds, median (min–max)")
    text = table(["contender", "server", "MiB/s", "client peak RSS MiB", "disk read/byte", "rchar/byte",
                  "client CPU s", "server peak RSS MiB", "server CPU s"], rows, title=title)
    if result.get("targets"):
        text += "\n\n" + table(["target", "measured", "ok"],
                               [[t["target"], t["value"], "yes" if t["ok"] else "NO"] for t in result["targets"]])
    text += (f"\n\nPage cache: {result['cache']} before each run. MiB/s = file size / wall time of the "
             "process, interpreter start-up included.")
    if result["cache"] == "drop_caches":
        text += (" With the whole cache dropped, disk read/byte also counts the interpreter's own start-up "
                 "reads (Python modules and libraries), not only the uploaded file.")
    if result.get("code"):
        text += "\n\nCode: " + ", ".join(f"{k} = {v}" for k, v in result["code"].items())
    return text


def plot(result: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [f"{r['name']}\n→ {_server_label(r['server'])}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, scale, xlabel in ((ax1, "mibs", 1, "MiB/s"), (ax2, "rss", MiB, "client peak RSS (MiB)")):
        meds = [median([x[key] / scale for x in r["runs"]]) for r in rows]
        lo = [m - min(x[key] / scale for x in r["runs"]) for m, r in zip(meds, rows)]
        hi = [max(x[key] / scale for x in r["runs"]) - m for m, r in zip(meds, rows)]
        colors = ["tab:blue" if r["name"].startswith("syncd") else "tab:orange" if r["name"].startswith("naive")
                  else "tab:gray" for r in rows]
        ax.barh(range(len(rows)), meds, xerr=[lo, hi], color=colors, capsize=3)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel + " — median, bars: min–max")
    ax2.axvline(RSS_TARGET / MiB, color="red", linestyle="--", linewidth=1, label="80 MiB target")
    ax2.legend(fontsize=8)
    fig.suptitle(f"{result['size'] / MiB:.0f} MiB file, {result['part'] / MiB:g} MiB parts, {result['rounds']} rounds")
    return save_figure(fig, out)


def _sdk_python(path: Path, servers: tuple[str, ...]) -> Path | None:
    if "drf" not in servers:
        return None
    if not path.is_file():
        log(f"no {path}: the synapse-sdk client is left out (bench/install-sdk makes it)")
        return None
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1GiB", help="file size (default 1GiB)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--part", default="50MiB", help="part size for syncd and the naive client (default 50MiB)")
    p.add_argument("--servers", default="receiver,drf,tus",
                   help="comma list of receiver, drf, tus (tuspy to @tus/server; default all three)")
    p.add_argument("--no-limits", action="store_true", help="skip curl / cat / md5sum / sha256sum")
    p.add_argument("--md5-too", action="store_true",
                   help="also run syncd -> syncd serve with the target's `checksum: md5` (MD5 on both sides)")
    p.add_argument("--drop-caches", action="store_true",
                   help="drop the whole page cache before each run (root) instead of evicting the file")
    p.add_argument("--code", default="", help="NAME=DIR,...: syncd upload and syncd serve of each checkout "
                   "instead of this one's, alternating within every round (an A/B comparison in one sitting)")
    p.add_argument("--sdk-python", type=Path, default=SDK_PYTHON,
                   help="the interpreter with synapse-sdk installed, for its client to drf-chunked-upload "
                   "(default: bench/.sdk-venv's, made by bench/install-sdk; left out where it is missing)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--plot", type=Path, help="also draw a PNG here")
    args = p.parse_args(argv)
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    bad = [s for s in servers if s not in SERVERS]
    if bad or not 1 <= args.rounds <= 20:
        p.error(f"unknown server(s) {bad}" if bad else "--rounds must be 1..20")
    if args.drop_caches and not drop_all_caches():
        p.error("--drop-caches: not permitted here (needs root); leave it out to evict the file instead")
    t0 = time.monotonic()
    result = run(size=parse_size(args.size), rounds=args.rounds, part=parse_size(args.part), servers=servers,
                 limits=not args.no_limits, drop_caches=args.drop_caches, md5_too=args.md5_too,
                 code=parse_code(args.code) or None, sdk_python=_sdk_python(args.sdk_python, servers))
    result["seconds"] = time.monotonic() - t0
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0 if all(t["ok"] for t in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
