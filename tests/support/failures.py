"""Helpers for the failure-contract tests (tests/integration/test_failures_*.py): configs
with two watches (``keep`` and ``del``, the latter with ``after_upload: delete``), drops of
files with known MD5s, the journal read the way ``syncd status`` reads it, and the checks
every test ends with."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.daemon import REPO, DaemonProcess, make_config
from tests.support.files import md5_of

KiB, MiB = 1024, 1024 * 1024


def failure_config(base: Path, *, url: str, token: str | None, part_size: int = 64 * KiB,
                   retry: dict[str, str] | None = None, timeout: dict[str, str] | None = None,
                   prefix: str = "", quiet: str = "0.3s", uploads: int = 2, small_uploads: int | None = None,
                   target_extra: dict[str, Any] | None = None, **extra: Any) -> Path:
    """Two watches on ``base/keep`` and ``base/del`` (after_upload: delete), uploading to
    ``{prefix}keep/...`` and ``{prefix}del/...`` on the server; ``uploads`` files at once
    (``small_uploads`` while the extra ones are small; default: no extra ones);
    ``target_extra``: more keys of the target."""
    watches = []
    for name, after in (("keep", "keep"), ("del", "delete")):
        (base / name).mkdir(exist_ok=True)
        watches.append({"name": name, "path": str(base / name), "target": "main",
                        "remote_dir": f"{prefix}{{watch}}", "after_upload": after,
                        "settle": {"quiet": quiet, "max_wait": "30s"}})
    path = make_config(base, url=url, token=token, part_size=part_size, watches=watches,
                       concurrency={"uploads": uploads, "small_uploads": small_uploads or uploads}, **extra)
    data = yaml.safe_load(path.read_text())
    target = data["targets"]["main"]
    target["retry"].update(retry or {})
    target["timeout"].update(timeout or {})
    target.update(target_extra or {})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Drop:
    """Files written into the watches, with what each must be on the server."""

    base: Path
    prefix: str = ""
    md5: dict[str, str] = field(default_factory=dict)
    """"watch:relpath" -> MD5 of the content the server must end with"""

    def write(self, watch: str, relpath: str, size: int | None = None, *, data: bytes | None = None,
              rng: random.Random | None = None) -> Path:
        path = self.base / watch / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            data = rng.randbytes(size) if rng is not None else os.urandom(size or 0)
        tmp = path.with_name(f".{path.name}.tmp")  # arrives whole, by rename (the filters skip dotfiles)
        tmp.write_bytes(data)
        os.replace(tmp, path)
        self.md5[f"{watch}:{relpath}"] = hashlib.md5(data).hexdigest()
        return path

    def remember(self, watch: str, relpath: str) -> None:
        """The file's content now is what the server must end with."""
        self.md5[f"{watch}:{relpath}"] = md5_of(self.base / watch / relpath)

    def remote(self, key: str) -> str:
        watch, relpath = key.split(":", 1)
        return f"{self.prefix}{watch}/{relpath}"

    def names(self, watch: str | None = None) -> list[str]:
        return [k for k in self.md5 if watch is None or k.startswith(f"{watch}:")]

    def local(self, key: str) -> Path:
        watch, relpath = key.split(":", 1)
        return self.base / watch / relpath


def journal_rows(journal: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def integrity(journal: Path) -> str:
    db = sqlite3.connect(journal, timeout=10)
    try:
        return "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def completed_uploads(journal: Path, key: str) -> int:
    watch, relpath = key.split(":", 1)
    return journal_rows(journal, "SELECT count(*) FROM uploads u JOIN files f ON f.id = u.file_id"
                                 " WHERE f.watch = ? AND f.relpath = ? AND u.state = 'completed'",
                        (watch, relpath))[0][0]


def upload_offset(journal: Path, key: str) -> int:
    if not journal.exists():
        return 0
    watch, relpath = key.split(":", 1)
    try:
        rows = journal_rows(journal, "SELECT max(u.offset) FROM uploads u JOIN files f ON f.id = u.file_id"
                                     " WHERE f.watch = ? AND f.relpath = ? AND u.state = 'open'",
                            (watch, relpath))
    except sqlite3.OperationalError:
        return 0
    return rows[0][0] or 0


def syncd_status(config: Path, *, as_json: bool = False) -> Any:
    """``syncd status -c CONFIG [--json]``, run as the operator would."""
    cmd = [sys.executable, "-m", "syncd", "status", "-c", str(config)] + (["--json"] if as_json else [])
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO, env=env, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if as_json else out.stdout


def assert_delivered(peer, drop: Drop, daemon: DaemonProcess, keys: list[str] | None = None) -> None:
    """Every file is on the server once, with its MD5; `keep` files are still here; a
    `del` file is gone locally only because the server holds it."""
    problems = []
    for key in keys if keys is not None else drop.names():
        remote = drop.remote(key)
        stored = peer.stored_md5(remote)
        if stored != drop.md5[key]:
            problems.append(f"{key}: server holds {stored}, expected {drop.md5[key]}")
        n = peer.completions(remote)
        if n is not None and n != 1:
            problems.append(f"{key}: completed {n} times on the server")
        exists = drop.local(key).exists()
        if key.startswith("keep:") and not exists:
            problems.append(f"{key}: the local file is missing")
        if key.startswith("del:") and exists:
            problems.append(f"{key}: not deleted after its upload")
    assert not problems, "\n".join(problems) + "\n--- daemon log ---\n" + daemon.log()[-3000:]


def assert_no_unsafe_deletes(peer, drop: Drop, daemon: DaemonProcess | None = None) -> None:
    """Whatever the daemon deleted, the server holds with the right MD5 (under the name the
    journal says the server gave it, when the file was uploaded more than once)."""
    rows = daemon.rows() if daemon is not None else {}
    unsafe = []
    for key in drop.names("del"):
        if drop.local(key).exists():
            continue
        names = {drop.remote(key), (rows.get(key) or {}).get("remote_name") or drop.remote(key)}
        if not any(peer.stored_md5(name) == drop.md5[key] for name in names):
            unsafe.append(key)
    assert not unsafe, f"deleted without the server holding them: {unsafe}"
