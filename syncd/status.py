"""``syncd status``: read the journal (read-only, while the daemon runs) and say what is
uploading, waiting, failed or growing, and why; and for done files, what their copy was
verified by (the server's MD5, part checksums, a read-back, or only the size)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from syncd import checksums
from syncd.bandwidth import Limits, format_rate, timetables_of
from syncd.config import Config
from syncd.controls import Paused
from syncd.journal import STATES, Journal, JournalError
from syncd.units import format_duration, format_size


def collect(journal: Journal, *, limit: int, now: float | None = None,
            config: Config | None = None) -> dict[str, Any]:
    """What ``status`` shows; with ``config``, also the bandwidth limits in force at ``now``."""
    now = time.time() if now is None else now
    uploading = []
    for row, up in journal.active_uploads():
        rate = journal.recent_rate(up.id, now=now)
        left = up.size - up.offset
        uploading.append({
            "watch": row.watch, "path": row.relpath, "size": up.size, "offset": up.offset,
            "percent": round(100.0 * up.offset / up.size, 1) if up.size else 100.0,
            "bytes_per_second": round(rate) if rate else None,
            "eta_seconds": round(left / rate) if rate else None,
            "target": up.target,
            "retrying": row.last_error,
        })

    def rows(state: str) -> list[dict[str, Any]]:
        return [{"watch": r.watch, "path": r.relpath, "size": r.fingerprint.size, "attempts": r.attempts,
                 "error": r.last_error, "next_attempt_at": r.next_attempt_at,
                 "since": r.first_seen_at} for r in journal.files(states=(state,))[:limit]]

    data = {
        "counts": journal.counts(),
        "paused": Paused.read(journal).as_json(),
        "verified": journal.verified_counts(),
        "done": [{"watch": r.watch, "path": r.relpath, "size": r.fingerprint.size, "target": r.target,
                  "remote_name": r.remote_name, **_digest(r.md5), "verified": r.verified or "unknown",
                  "done_at": r.done_at} for r in journal.latest_done(limit)],
        "uploading": uploading[:limit],
        "waiting": rows("waiting"),
        "failed": rows("failed"),
        "growing": rows("growing"),
    }
    if config is not None:
        limits = Limits.at(**timetables_of(config), wall=now)
        data["bandwidth"] = {"overall": limits.overall, "targets": dict(limits.targets)}
    return data


def _digest(digest: str | None) -> dict[str, str | None]:
    """A done file's checksum in ``status --json``: ``md5`` (null when the file was verified
    with another algorithm), and ``sha256`` when it was verified with SHA-256."""
    if digest is None:
        return {"md5": None}
    algorithm, hexdigest = checksums.split(digest)
    return {"md5": hexdigest} if algorithm == "md5" else {"md5": None, algorithm: hexdigest}


def render(data: dict[str, Any], *, now: float | None = None) -> str:
    now = time.time() if now is None else now
    counts = data["counts"]
    lines = ["  ".join(f"{state} {counts.get(state, 0)}" for state in STATES)]
    paused = data.get("paused")
    if paused and (paused["everything"] or paused["targets"] or paused["watches"]):
        what = "everything" if paused["everything"] else ", ".join(
            [f"target {n}" for n in paused["targets"]] + [f"watch {n}" for n in paused["watches"]])
        lines.append(f"paused: {what} (syncd resume [--target T | --watch W] to go on)")
    bandwidth = data.get("bandwidth")
    if bandwidth is not None and (bandwidth["overall"] is not None or bandwidth["targets"]):
        per_target = "".join(f", {name} {format_rate(rate)}" for name, rate in bandwidth["targets"].items())
        lines.append(f"bandwidth: overall {format_rate(bandwidth['overall'])}{per_target}")
    if data["uploading"]:
        lines += ["", "uploading:"]
        for u in data["uploading"]:
            eta = format_duration(u["eta_seconds"]) if u["eta_seconds"] is not None else "?"
            rate = f"{u['bytes_per_second'] / 1024**2:.1f} MiB/s" if u["bytes_per_second"] else "? MiB/s"
            lines.append(f"  {u['watch']}:{u['path']}  {u['percent']:5.1f}% of {format_size(u['size'])}"
                         f"  {rate}  eta {eta}")
            if u.get("retrying"):  # a request is being tried again within its retry budget
                lines.append(f"    retrying: {u['retrying']}")
    if data["waiting"]:
        lines += ["", "waiting (retried automatically):"]
        for w in data["waiting"]:
            when = w["next_attempt_at"]
            due = f"next try in {format_duration(max(0.0, when - now))}" if when else "next try soon"
            lines.append(f"  {w['watch']}:{w['path']}  {due}, attempt {w['attempts'] + 1}: {w['error']}")
    if data["failed"]:
        lines += ["", "failed (syncd retry [-c CONFIG] --all-failed, or the WATCH:PATH shown here):"]
        for f in data["failed"]:
            lines.append(f"  {f['watch']}:{f['path']}  {f['error']}")
    if data["growing"]:
        lines += ["", "growing (still being written; uploaded once it stops changing):"]
        for g in data["growing"]:
            lines.append(f"  {g['watch']}:{g['path']}  {format_size(g['size'])}, "
                         f"changing for {format_duration(now - g['since'])}")
    if data["done"]:
        by = ", ".join(f"{how} {n}" for how, n in sorted(data["verified"].items()))
        lines += ["", f"done, the copy verified by: {by} (latest first):"]
        for d in data["done"]:
            lines.append(f"  {d['watch']}:{d['path']}  {format_size(d['size'])} to {d['target']} as "
                         f"{d['remote_name']}, verified by {d['verified']}")
    return "\n".join(lines)


def cmd_status(config: Config, *, as_json: bool, limit: int) -> int:
    try:
        journal = Journal(config.journal, readonly=True)
    except JournalError as exc:
        print(f"syncd status: {exc}", file=sys.stderr)
        return 1
    try:
        data = collect(journal, limit=limit, config=config)
    finally:
        journal.close()
    print(json.dumps(data, indent=2) if as_json else render(data))
    return 0
