"""The failure contract, local rows: files that change or vanish while they upload, and
SIGTERM in the middle of an upload. The proxy's bandwidth cap makes an upload last long
enough to act in the middle of it."""

from __future__ import annotations

import os
import signal
import time

import pytest
import requests

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.failures import (
    Drop,
    KiB,
    MiB,
    assert_no_unsafe_deletes,
    completed_uploads,
    failure_config,
    journal_rows,
    upload_offset,
)
from tests.support.fault_proxy import FaultProxy, Forward, Match, Rule, Stall
from tests.support.files import md5_of
from tests.support.peers import ReceiverPeer

SESSION = r"/chunked_upload/[^/]+/$"


@pytest.fixture
def receiver(tmp_path):
    peer = ReceiverPeer(tmp_path / "received")
    yield peer
    peer.stop()


def stored_versions(peer: ReceiverPeer, remote_name: str) -> list[str]:
    """MD5 of every file the receiver stored under this name (and its "name (N)" renames)."""
    target = peer.root / remote_name
    if not target.parent.exists():
        return []
    stem, suffix = target.stem, target.suffix
    return [md5_of(p) for p in sorted(target.parent.iterdir())
            if p.is_file() and (p.name == target.name or (p.name.startswith(f"{stem} (") and p.name.endswith(suffix)))]


# --- a file that changes while it uploads ------------------------------------------------------

def _append(path):
    with open(path, "ab") as f:
        f.write(os.urandom(100 * KiB))


def _truncate(path):
    os.truncate(path, os.path.getsize(path) // 3)


def _rewrite(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.write(os.urandom(size))


def _rewrite_keeping_mtime(path):
    """Same size, new bytes, and the old mtime put back (rsync -t --inplace, cp -p over it)."""
    st = os.stat(path)
    _rewrite(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


CHANGES = {"append": _append, "truncate": _truncate, "rewrite": _rewrite,
           "rewrite-keeping-mtime": _rewrite_keeping_mtime}


@pytest.mark.parametrize("change", list(CHANGES))
def test_file_changed_during_upload_server_ends_with_final_content(receiver, tmp_path, change):
    drop = Drop(tmp_path)
    key, size, part = "del:changing.bin", 3 * MiB, 256 * KiB
    path = drop.write("del", "changing.bin", size)
    first_md5 = drop.md5[key]
    with FaultProxy(receiver.url, seed=2, rules=[Rule(Forward(bandwidth=1.5 * MiB))]) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=part)
        with DaemonProcess(config) as daemon:
            wait_until(lambda: upload_offset(daemon.journal_path, key) >= 1 * MiB, timeout=30, what="a third sent")
            CHANGES[change](path)
            final = md5_of(path)
            daemon.wait_states({key: "done"}, timeout=60)
            wait_until(lambda: not path.exists(), timeout=10, what="deleted after its upload")
        drop.md5[key] = final
    versions = stored_versions(receiver, "del/changing.bin")
    assert versions == [final], f"server holds {versions}; final {final}, first {first_md5}\n{daemon.log()[-3000:]}"
    assert_no_unsafe_deletes(receiver, drop)
    states = [r[0] for r in journal_rows(daemon.journal_path, "SELECT state FROM uploads ORDER BY id")]
    assert states == ["abandoned", "completed"], states
    assert "file changed during upload" in daemon.log() or "got shorter" in daemon.log()


def test_file_changed_just_before_completion_is_uploaded_again(receiver, tmp_path):
    """The change lands after the last look at the file, while the completion is on its way:
    the server completes the earlier version (whole), and the final one follows without
    waiting for the next periodic rescan."""
    drop = Drop(tmp_path)
    key, part = "del:late.bin", 256 * KiB
    path = drop.write("del", "late.bin", 3 * part + 5)
    first_md5 = drop.md5[key]
    slow_completion = Rule(Forward(delay=1.5), match=Match(method="POST", path=SESSION), times=1)
    with FaultProxy(receiver.url, seed=2, rules=[slow_completion]) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=part)
        with DaemonProcess(config) as daemon:
            wait_until(lambda: proxy.requests(method="POST"), timeout=30, what="the completion request")
            _append(path)
            drop.remember("del", "late.bin")
            wait_until(lambda: not path.exists(), timeout=30, what="the final content uploaded and deleted")
            daemon.wait_states({key: "done"}, timeout=10)
    versions = stored_versions(receiver, "del/late.bin")
    assert sorted(versions) == sorted([first_md5, drop.md5[key]]), versions  # two whole versions, no mixture
    assert_no_unsafe_deletes(receiver, drop, daemon)
    assert completed_uploads(daemon.journal_path, key) == 2


def test_file_rewritten_while_the_daemon_was_down_is_never_mixed(receiver, tmp_path):
    """Killed mid-upload; the file is rewritten in place with its old size and mtime (so the
    journal's fingerprint still matches); the restarted daemon resumes the session. The
    server's MD5 check refuses the mixture, and the file is uploaded again, whole."""
    drop = Drop(tmp_path)
    key, size, part = "del:resumed.bin", 3 * MiB, 256 * KiB
    path = drop.write("del", "resumed.bin", size)
    with FaultProxy(receiver.url, seed=2, rules=[Rule(Forward(bandwidth=1.5 * MiB))]) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=part)
        daemon = DaemonProcess(config).start()
        try:
            wait_until(lambda: upload_offset(daemon.journal_path, key) >= 1 * MiB, timeout=30, what="a third sent")
        finally:
            daemon.kill()
        _rewrite_keeping_mtime(path)
        drop.remember("del", "resumed.bin")
        proxy.set_rules([])
        with DaemonProcess(config) as daemon:
            wait_until(lambda: not path.exists(), timeout=30, what="uploaded and deleted")
            daemon.wait_states({key: "done"}, timeout=10)
    assert "resuming upload session" in daemon.log()
    assert stored_versions(receiver, "del/resumed.bin") == [drop.md5[key]]
    assert_no_unsafe_deletes(receiver, drop, daemon)
    assert completed_uploads(daemon.journal_path, key) == 1


# --- a file that vanishes while it uploads ---------------------------------------------------

def test_file_deleted_during_upload_session_aborted_row_gone(receiver, tmp_path):
    drop = Drop(tmp_path)
    key, size, part = "keep:vanishing.bin", 6 * MiB, 256 * KiB
    path = drop.write("keep", "vanishing.bin", size)
    with FaultProxy(receiver.url, seed=2, rules=[Rule(Forward(bandwidth=1.5 * MiB))]) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=part)
        with DaemonProcess(config) as daemon:
            wait_until(lambda: upload_offset(daemon.journal_path, key) >= 1 * MiB, timeout=30, what="1 MiB sent")
            path.unlink()
            deleted_at = time.monotonic()
            daemon.wait_states({key: "gone"}, timeout=30)
            gone_after = time.monotonic() - deleted_at
        seen = proxy.requests(filename="keep/vanishing.bin")
    session = next(s.path for s in seen if s.path.count("/") > 2)
    aborts = [s for s in seen if s.method == "DELETE"]
    assert len(aborts) == 1 and aborts[0].path == session and aborts[0].status == 204, seen[-3:]
    sent_after = sum(s.received for s in seen if s.method == "PUT" and s.started > deleted_at)
    assert sent_after <= 2 * part + 4 * KiB, f"{sent_after} bytes sent after the file was deleted"
    assert gone_after < 5, gone_after
    r = requests.get(receiver.url.replace("/chunked_upload/", session), timeout=5,
                     headers={"Authorization": f"Token {receiver.token}"})
    assert r.status_code == 404  # the receiver forgot the session and its data
    assert receiver.stored_md5("keep/vanishing.bin") is None
    row = daemon.rows()[key]
    assert row["last_error"] and "vanished" in row["last_error"], (row, daemon.log()[-3000:])
    assert [r[0] for r in journal_rows(daemon.journal_path, "SELECT state FROM uploads")] == ["abandoned"]


def test_file_renamed_during_upload_arrives_under_its_new_name(receiver, tmp_path):
    drop = Drop(tmp_path)
    size, part = 4 * MiB, 256 * KiB
    path = drop.write("del", "old-name.bin", size)
    with FaultProxy(receiver.url, seed=2, rules=[Rule(Forward(bandwidth=1.5 * MiB))]) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=part)
        with DaemonProcess(config) as daemon:
            wait_until(lambda: upload_offset(daemon.journal_path, "del:old-name.bin") >= 1 * MiB, timeout=30,
                       what="1 MiB sent")
            path.rename(path.with_name("new-name.bin"))
            drop.md5["del:new-name.bin"] = drop.md5.pop("del:old-name.bin")
            wait_until(lambda: not drop.local("del:new-name.bin").exists(), timeout=30,
                       what="uploaded under the new name and deleted")
            daemon.wait_states({"del:new-name.bin": "done"}, timeout=10)
        aborts = [s for s in proxy.seen if s.method == "DELETE"]
    assert receiver.stored_md5("del/new-name.bin") == drop.md5["del:new-name.bin"]
    assert receiver.stored_md5("del/old-name.bin") is None
    assert len(aborts) == 1 and aborts[0].filename == "del/old-name.bin"
    assert_no_unsafe_deletes(receiver, drop, daemon)


# --- SIGTERM in the middle of an upload ------------------------------------------------------

@pytest.mark.parametrize("server", ["streaming", "stalled"])
def test_sigterm_mid_upload_exits_fast_and_resumes_from_server_offset(receiver, tmp_path, server):
    drop = Drop(tmp_path)
    key, size, part = "del:large.bin", 24 * MiB, 1 * MiB
    drop.write("del", "large.bin", size)
    rules = [Rule(Forward(bandwidth=4 * MiB))]
    if server == "stalled":  # the server takes part 7 and never answers
        rules.insert(0, Rule(Stall(max_seconds=30), match=Match(when=lambda i: (i.range or (0,))[0] == 6 * part)))
    with FaultProxy(receiver.url, seed=2, rules=rules) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=part)
        daemon = DaemonProcess(config, log_level="INFO").start()
        try:
            wait_until(lambda: upload_offset(daemon.journal_path, key) >= 6 * MiB, timeout=30, what="a quarter sent")
            if server == "stalled":
                wait_until(lambda: any(s.action == "stall" and s.received == s.content_length for s in proxy.seen),
                           timeout=10, what="the stalled part")
            started = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert daemon.proc.wait(12) == 0
            took = time.monotonic() - started
        finally:
            daemon.kill()
        assert took < 10, took
        session = next(s.path for s in proxy.seen if s.path.count("/") > 2)
        r = requests.get(receiver.url.replace("/chunked_upload/", session), timeout=5,
                         headers={"Authorization": f"Token {receiver.token}"})
        held = r.json()["offset"]
        assert 6 * MiB <= held < size
        assert drop.local(key).exists()
        first_run = len(proxy.seen)
        proxy.set_rules([])
        with DaemonProcess(config, log_level="INFO") as daemon:
            daemon.wait_states({key: "done"}, timeout=60)
            wait_until(lambda: not drop.local(key).exists(), timeout=10, what="deleted after its upload")
        second = proxy.seen[first_run:]
    assert "resuming upload session" in daemon.log()
    # one question of what the server takes (GET of the collection, before the first
    # session), then only the same session, asked first
    probes = [s for s in second if s.method == "GET" and s.path == "/chunked_upload/"]
    assert len(probes) == 1 and "upload-key" not in {h.lower() for h in probes[0].headers}
    second = [s for s in second if s not in probes]
    assert {s.path for s in second} == {session}
    assert second[0].method == "GET"
    resent = [s.range for s in second if s.method == "PUT"]
    assert resent[0][0] == held and sum(e - b + 1 for b, e, _ in resent) == size - held, (held, resent)
    assert receiver.stored_md5("del/large.bin") == drop.md5[key]
    assert receiver.completions("del/large.bin") == 1
