"""syncd's optimize_for_web against the plain ffmpeg command line with identical arguments.

    .venv/bin/python bench/transcode.py [--rounds 3] [--seconds 10] [--size 1280x720]

Makes one clip (testsrc + sine, MPEG-4 part 2 video and AAC in a .mov, like a camera
file), then transcodes it alternately with ``syncd.transcode.optimize_for_web`` and with
the command line ``syncd.transcode.build_command`` prints, run directly by
``subprocess.run``. syncd's time includes everything it adds: the ffprobe call, reading
``-progress pipe:1`` (into a no-op callback), the fsync and the rename. Target: the ratio
of the medians is at most 1.05.

Wall time is what the target is about, but on a shared machine it swings with other
load; CPU time (this process plus its children, user + sys) is printed beside it, and
the minimum of each, which other load can only raise.
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from syncd import transcode


def make_clip(path: Path, *, seconds: float, size: str) -> None:
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc=size={size}:rate=30:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "mpeg4", "-q:v", "3", "-c:a", "aac", "-b:a", "192k", "-shortest",
         str(path)],
        check=True,
    )


def cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run."""
    cpu, started = cpu_seconds(), time.perf_counter()
    run()
    return time.perf_counter() - started, cpu_seconds() - cpu


def row(name: str, values: list[float]) -> str:
    return (f"{name:12}{statistics.median(values):>8.2f}s{min(values):>8.2f}s"
            f"{max(values):>8.2f}s{max(values) - min(values):>8.2f}s   "
            + " ".join(f"{v:.2f}" for v in values))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="1280x720")
    args = parser.parse_args(argv)
    transcode.check_ffmpeg()

    with tempfile.TemporaryDirectory(prefix="syncd-bench-transcode-") as tmp:
        folder = Path(tmp)
        clip = folder / "clip.mov"
        make_clip(clip, seconds=args.seconds, size=args.size)
        info = transcode.get_video_info(clip)
        syncd_out, plain_out = folder / "syncd.mp4", folder / "plain.mp4"
        plain = transcode.build_command(clip, plain_out, transcode.WEB_CONFIG, info=info)
        print(f"clip: {args.seconds:g} s {info.width}x{info.height} {info.video_codec}/"
              f"{info.audio_codec} @ {info.fps:g} fps, {info.size / 1e6:.1f} MB")
        print("plain ffmpeg:", shlex.join(plain))
        print("syncd runs the same with -progress pipe:1, into syncd.mp4.partial\n")

        def run_syncd() -> None:
            transcode.optimize_for_web(clip, syncd_out, lambda fraction: None)

        def run_plain() -> None:
            subprocess.run(plain, check=True, stdin=subprocess.DEVNULL)

        wall: dict[str, list[float]] = {"syncd": [], "plain": []}
        cpu: dict[str, list[float]] = {"syncd": [], "plain": []}
        for round_no in range(args.rounds):
            order = ["syncd", "plain"] if round_no % 2 == 0 else ["plain", "syncd"]
            for name in order:
                seconds, cpu_s = timed(run_syncd if name == "syncd" else run_plain)
                wall[name].append(seconds)
                cpu[name].append(cpu_s)
            print(f"round {round_no + 1}: " + "  ".join(
                f"{name} {wall[name][-1]:.2f} s (cpu {cpu[name][-1]:.2f} s)" for name in order))

        print(f"\n{'':12}{'median':>9}{'min':>9}{'max':>9}{'spread':>9}   runs")
        for name in wall:
            print(row(f"{name} wall", wall[name]))
        for name in cpu:
            print(row(f"{name} cpu", cpu[name]))

        def ratio(values: dict[str, list[float]], pick: Callable[[list[float]], float]) -> float:
            return pick(values["syncd"]) / pick(values["plain"])

        median_ratio = ratio(wall, statistics.median)
        print(f"\nratio syncd/plain, wall medians: {median_ratio:.3f}  (target <= 1.05: "
              f"{'met' if median_ratio <= 1.05 else 'NOT met'})")
        print(f"ratio syncd/plain, wall minimums: {ratio(wall, min):.3f}; "
              f"cpu medians: {ratio(cpu, statistics.median):.3f}")
        probe = statistics.median(
            timed(lambda: transcode.get_video_info(clip))[0] for _ in range(args.rounds)
        )
        print(f"of which syncd's ffprobe call: {probe * 1000:.0f} ms "
              f"({probe / statistics.median(wall['plain']):.1%} of the plain median)")
        same = md5(syncd_out) == md5(plain_out)
        print(f"outputs byte-identical: {'yes' if same else 'no'} "
              f"({syncd_out.stat().st_size} and {plain_out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
