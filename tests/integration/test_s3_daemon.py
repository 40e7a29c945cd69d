"""The real daemon against real S3 servers: SIGKILLed again and again during a drop of edge
sizes with parts in parallel (moto: AWS's ETag forms, metadata kept), a file that changes or
vanishes during a parallel upload (moto), and the scale-out case, three daemons writing into
one bucket under their own prefixes at once (rclone serve s3).

Requests go through the fault proxy, which only slows them (so kills and changes land
mid-upload) and records them (so every write of every key can be counted)."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml

from syncd.upload.s3 import format_mtime
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.failures import Drop, KiB, MiB, failure_config, integrity, journal_rows, upload_offset
from tests.support.fault_proxy import FaultProxy, Forward, Rule
from tests.support.files import md5_of
from tests.support.s3servers import BUCKET, S3Server

pytestmark = pytest.mark.s3

PART = 64 * KiB
KILLS = 20


def s3_config(base: Path, server: S3Server, *, endpoint: str, prefix: str, uploads: int = 2,
              part_concurrency: int = 4, watches: list[dict] | None = None) -> Path:
    """``failure_config``'s two watches (``keep``, ``del``: delete after upload), uploading
    to an S3 target ``main`` with 64 KiB parts (the servers here are told to take them)."""
    path = failure_config(base, url="http://127.0.0.1:1/unused/", token=None, uploads=uploads)
    data = yaml.safe_load(path.read_text())
    secret = base / "s3-secret"
    secret.write_text(server.secret_key)
    old = data["targets"]["main"]
    data["targets"]["main"] = {
        "protocol": "s3", "bucket": BUCKET, "prefix": prefix, "endpoint_url": endpoint, "region": "us-east-1",
        "addressing_style": "path", "access_key_id": server.access_key, "secret_access_key_file": str(secret),
        "part_size": PART, "min_part_size": PART, "part_concurrency": part_concurrency,
        "timeout": old["timeout"], "retry": old["retry"],
    }
    if watches is not None:
        data["watches"] = watches
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def writes_by_key(seen: list, prefix: str) -> dict[str, dict[str, Any]]:
    """Per object key, what the server accepted: whole PutObjects, and the distinct
    multipart uploads it completed (a CopyObject onto itself adds metadata: not counted)."""
    out: dict[str, dict[str, Any]] = {}
    base = f"/{BUCKET}/{prefix}/"
    for s in seen:
        if not s.path.startswith(base) or s.upstream_status != 200:
            continue
        key = s.path[len(f"/{BUCKET}/"):]
        query = parse_qs(s.query, keep_blank_values=True)
        entry = out.setdefault(key, {"puts": 0, "completed": set()})
        if s.method == "PUT" and "partNumber" not in query and "x-amz-copy-source" not in s.headers:
            entry["puts"] += 1
        elif s.method == "POST" and "uploadId" in query:
            entry["completed"].add(query["uploadId"][0])
    return out


def check_objects(server: S3Server, drop: Drop, mtimes: dict[str, int], *, metadata_md5: bool) -> list[str]:
    """Every file is one object with its content, and its MD5 and mtime as metadata."""
    problems = []
    for key in drop.names():
        remote = drop.remote(key)
        head = server.head(remote)
        if head is None:
            problems.append(f"{key}: no object {remote}")
            continue
        stored = server.stored_md5(remote)
        if stored != drop.md5[key]:
            problems.append(f"{key}: object holds {stored}, expected {drop.md5[key]}")
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if metadata_md5 and meta.get("md5") != drop.md5[key]:
            problems.append(f"{key}: md5 metadata {meta.get('md5')}, expected {drop.md5[key]}")
        if key in mtimes and meta.get("mtime") != format_mtime(mtimes[key]):
            problems.append(f"{key}: mtime metadata {meta.get('mtime')}, expected {format_mtime(mtimes[key])}")
    return problems


def the_drop() -> list[tuple[str, str, int]]:
    """Edge sizes around a part and the single-request limit, and files of many parts."""
    edges = [0, 1, PART - 1, PART, PART + 1, 2 * PART - 1, 2 * PART, 2 * PART + 1, 4 * PART + 1, 9 * PART - 1]
    files = [(watch, f"edge/{size}.bin", size) for watch in ("keep", "del") for size in edges]
    files += [(("keep", "del")[i % 2], f"many/m{i}.bin", (10 + 7 * i) * PART + i) for i in range(8)]
    return files


def test_sigkill_loop_every_object_once_whole_with_its_md5(moto_s3, tmp_path):
    rng = random.Random(11)
    prefix = f"kill-{rng.randrange(10**6)}"
    drop = Drop(tmp_path, prefix=f"{prefix}/")
    files = the_drop()
    rng.shuffle(files)
    # a file arrives between crashes; the last three after the last start, so the daemon is
    # surely running (not still starting) when it gets its SIGTERM
    first, later, last = files[:10], files[10:-3], files[-3:]
    mtimes: dict[str, int] = {}

    def write(watch: str, relpath: str, size: int) -> None:
        path = drop.write(watch, relpath, size, rng=rng)
        mtimes[f"{watch}:{relpath}"] = os.stat(path).st_mtime_ns

    for spec in first:
        write(*spec)
    with FaultProxy(moto_s3.url, seed=3, rules=[Rule(Forward(bandwidth=3 * MiB))]) as proxy:
        config = s3_config(tmp_path, moto_s3, endpoint=proxy.url_for(moto_s3.url), prefix=prefix)
        daemon = DaemonProcess(config, log_level="INFO")
        try:
            for _ in range(KILLS):
                daemon.start()
                for spec in later[:1]:  # files keep arriving between crashes
                    write(*spec)
                later = later[1:]
                time.sleep(rng.uniform(0.4, 1.5))
                assert daemon.proc.poll() is None, daemon.log()[-3000:]
                daemon.kill()
            daemon.start()
            for spec in later + last:
                write(*spec)
            daemon.wait_states({k: "done" for k in drop.names()}, timeout=120)
            wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                       what="del files deleted")
            assert daemon.stop() == 0
        finally:
            daemon.kill()
        seen = list(proxy.seen)

    assert len(drop.names()) == len(files)
    problems = check_objects(moto_s3, drop, mtimes, metadata_md5=True)
    assert not problems, "\n".join(problems) + "\n" + daemon.log()[-3000:]
    assert sorted(moto_s3.keys(prefix)) == sorted(drop.remote(k) for k in drop.names())
    assert moto_s3.open_uploads(prefix) == [], "incomplete multipart uploads left behind"
    writes = writes_by_key(seen, prefix)
    twice = {k: sorted(w["completed"]) for k, w in writes.items() if len(w["completed"]) > 1}
    assert not twice, f"multipart uploads completed more than once: {twice}"
    cut = [s for s in seen if s.outcome == "client-gone"]
    assert len(cut) >= KILLS // 4, f"only {len(cut)} requests were cut by a kill"
    resumed = [s for s in seen if s.method == "GET" and "uploadId=" in s.query]  # ListParts
    assert resumed, "no multipart upload was resumed after a kill"
    assert integrity(daemon.journal_path) == "ok"
    assert not journal_rows(daemon.journal_path, "SELECT * FROM uploads WHERE state = 'open'")


@pytest.mark.parametrize("change", ["append", "vanish"])
def test_change_or_vanish_during_a_parallel_upload_is_aborted_never_completed(moto_s3, tmp_path, change):
    prefix = f"change-{os.getpid()}-{change}"
    drop = Drop(tmp_path, prefix=f"{prefix}/")
    key = "keep:big.bin"
    path = drop.write("keep", "big.bin", 40 * PART + 7)
    first_md5 = drop.md5[key]
    with FaultProxy(moto_s3.url, seed=4, rules=[Rule(Forward(bandwidth=1 * MiB))]) as proxy:
        config = s3_config(tmp_path, moto_s3, endpoint=proxy.url_for(moto_s3.url), prefix=prefix)
        with DaemonProcess(config) as daemon:
            wait_until(lambda: upload_offset(daemon.journal_path, key) >= 8 * PART, timeout=60,
                       what="a fifth of the parts acknowledged")
            if change == "append":
                with path.open("ab") as f:
                    f.write(os.urandom(PART))
                final = md5_of(path)
                drop.md5[key] = final
                daemon.wait_states({key: "done"}, timeout=90)
            else:
                path.unlink()
                daemon.wait_states({key: "gone"}, timeout=60)
                wait_until(lambda: not moto_s3.open_uploads(prefix), timeout=10, what="the upload aborted")
        seen = list(proxy.seen)
    remote = drop.remote(key)
    completed = writes_by_key(seen, prefix).get(remote, {"completed": set()})["completed"]
    states = [r[0] for r in journal_rows(daemon.journal_path, "SELECT state FROM uploads ORDER BY id")]
    assert moto_s3.open_uploads(prefix) == []
    if change == "append":
        assert moto_s3.stored_md5(remote) == final != first_md5
        assert len(completed) == 1, f"completed uploads: {completed}"  # only the final content's
        assert states == ["abandoned", "completed"], states
    else:
        assert moto_s3.head(remote) is None and not completed
        assert states == ["abandoned"], states
    aborts = [s for s in seen if s.method == "DELETE" and "uploadId=" in s.query and s.upstream_status == 204]
    assert len(aborts) >= 1


def test_scale_out_three_daemons_one_bucket_own_prefixes(rclone_s3, tmp_path):
    """Three edge machines (own journals, own prefixes: ``site{n}/{host}``) write 200 files
    each into one bucket at once: 600 objects, each right, each written once."""
    rng = random.Random(5)
    import socket

    host = socket.gethostname()
    runs = []
    with FaultProxy(rclone_s3.url, seed=5, rules=[]) as proxy:
        for n in range(3):
            base = tmp_path / f"edge{n}"
            base.mkdir()
            drop = Drop(base, prefix=f"site{n}/{host}/")
            watches = [{"name": "keep", "path": str(base / "keep"), "target": "main", "remote_dir": "{watch}",
                        "settle": {"quiet": "0.3s", "max_wait": "30s"}}]
            (base / "keep").mkdir()
            for i in range(200):
                drop.write("keep", f"d{i % 10}/f{i:03d}.bin", rng.choice([0, 1, 700, 5 * KiB, PART + 3, 3 * PART]),
                           rng=rng)
            config = s3_config(base, rclone_s3, endpoint=proxy.url_for(rclone_s3.url), prefix=f"site{n}/{{host}}",
                               watches=watches, uploads=4)
            runs.append((drop, DaemonProcess(config, log_level="INFO")))
        try:
            for _, daemon in runs:
                daemon.start()
            for drop, daemon in runs:
                daemon.wait_states({k: "done" for k in drop.names()}, timeout=150)
            for _, daemon in runs:
                assert daemon.stop() == 0
        finally:
            for _, daemon in runs:
                daemon.kill()
        seen = list(proxy.seen)
    problems = []
    for n, (drop, _) in enumerate(runs):
        problems += check_objects(rclone_s3, drop, {}, metadata_md5=False)
        keys = rclone_s3.keys(f"site{n}/")
        if sorted(keys) != sorted(drop.remote(k) for k in drop.names()):
            problems.append(f"site{n}: {len(keys)} objects, expected {len(drop.names())}")
        for key, w in writes_by_key(seen, f"site{n}").items():
            if w["puts"] + len(w["completed"]) != 1:
                problems.append(f"{key}: written {w['puts']} + {len(w['completed'])} times")
    assert not problems, "\n".join(problems[:20])
    assert sum(len(rclone_s3.keys(f"site{n}/")) for n in range(3)) == 600
