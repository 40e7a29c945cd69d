"""The failure contract, network and server rows: the real daemon uploads through the fault
proxy to the built-in receiver (and, where it is cheap, the real drf-chunked-upload)."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from syncd.server import EmbeddedReceiver, ReceiverSettings
from tests.support.daemon import DaemonProcess, wait_until
from tests.support.failures import (
    Drop,
    KiB,
    MiB,
    assert_delivered,
    assert_no_unsafe_deletes,
    completed_uploads,
    failure_config,
    journal_rows,
    syncd_status,
    upload_offset,
)
from tests.support.fault_proxy import (
    FaultProxy,
    Forward,
    Match,
    Reset,
    Respond,
    Rule,
    Stall,
    retry_runs,
)
from tests.support.peers import ReceiverPeer

PART = 64 * KiB
SESSION = r"/chunked_upload/[^/]+/$"  # a request to an existing session (not the base URL)


def has_body(info) -> bool:
    return (info.content_length or 0) > 0


def fault_free_requests(size: int, part: int) -> int:
    """What one file costs without faults: one POST, or its parts and the completion."""
    return 1 if size <= part else math.ceil(size / part) + 1


@pytest.fixture
def receiver(tmp_path):
    peer = ReceiverPeer(tmp_path / "received")
    yield peer
    peer.stop()


# --- transient faults: retried, backed off, nothing lost or doubled ---------------------------

INITIAL, MAX = 0.1, 0.8
CHAOS = [
    Rule(Respond(500), probability=0.07),
    Rule(Respond(502), probability=0.08),
    Rule(Respond(503), probability=0.08),
    # a gateway timeout after the server did the work: the answer is lost, the retry must realign
    Rule(Respond(504, forward=True), match=Match(path=SESSION), probability=0.07),
    Rule(Respond(504), match=Match(path=r"/chunked_upload/$"), probability=0.07),
    Rule(Reset(after_bytes=None), match=Match(when=has_body), probability=0.05),
    Rule(Respond(429, retry_after=1), probability=0.05),
]


def test_transient_faults_every_file_arrives_once_with_backoff(peer, tmp_path):
    unique = f"{tmp_path.name}/"
    rng = random.Random(4)
    drop = Drop(tmp_path, prefix=unique)
    sizes = [1, PART - 1, PART, PART + 1, 2 * PART + 7, 3 * PART] + [rng.randrange(1, 4 * PART) for _ in range(6)]
    if peer.accepts_empty_files:
        sizes.append(0)
    expected_requests = 0
    for watch in ("keep", "del"):
        for i, size in enumerate(sizes):
            drop.write(watch, f"d{i % 3}/f{i:02d}-{size}.bin", size, rng=rng)
            expected_requests += fault_free_requests(size, PART)

    with FaultProxy(peer.url, seed=11, rules=CHAOS) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size=PART,
                                prefix=unique, retry={"initial": f"{INITIAL}s", "max": f"{MAX}s", "budget": "30s"})
        with DaemonProcess(config, log_level="INFO") as daemon:
            daemon.wait_states({k: "done" for k in drop.names()}, timeout=120)
            wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                       what="del files deleted")
        seen = list(proxy.seen)

    assert_delivered(peer, drop, daemon)
    # the faults happened, and cost less than three times the fault-free requests
    outcomes = [s.outcome for s in seen]
    for outcome in ("500", "502", "503", "504", "429", "reset"):
        assert outcome in outcomes, f"no {outcome} was injected"
    assert len(seen) < 3 * expected_requests, (len(seen), expected_requests)

    # the pause between two tries of one request: exponential, jittered, never under Retry-After
    gaps: dict[int, list[float]] = {}
    for run in retry_runs(seen):
        for k, (before, after) in enumerate(itertools.pairwise(run), start=1):
            assert before.failed, (before, after)
            base = min(INITIAL * 2 ** (k - 1), MAX)
            floor = max(base, before.retry_after or 0.0)
            gap = after.started - before.ended
            assert gap >= floor - 0.01, f"try {k + 1} of {before.key} came {gap:.3f}s after a {before.outcome}, " \
                                        f"before the {floor:.2f}s backoff"
            assert gap <= max(base + INITIAL, before.retry_after or 0.0) + 0.75, (k, gap, before.key)
            if before.retry_after is None:
                gaps.setdefault(k, []).append(gap)
    assert len(gaps.get(1, [])) >= 3 and len(gaps.get(2, [])) >= 2, gaps
    assert statistics.mean(gaps[1]) < statistics.mean(gaps[2]), gaps
    if len(gaps.get(3, [])) >= 2:
        assert statistics.mean(gaps[2]) < statistics.mean(gaps[3]), gaps


# --- permanent answers: one request, `failed` with the server's reason ------------------------

def test_413_and_507_fail_fast_with_the_servers_reason(receiver, tmp_path):
    drop = Drop(tmp_path)
    too_large = drop.write("keep", "video/too-large.bin", 3 * PART + 1)          # parts: the first PUT
    small_full = drop.write("keep", "small-full.bin", PART // 2)                  # one POST
    del_full = drop.write("del", "full/del-full.bin", 2 * PART)                    # never deleted
    for watch in ("keep", "del"):  # the others carry on
        for n in (10, PART + 3, 3 * PART):
            drop.write(watch, f"ok/{watch}-{n}.bin", n)
    failing = {
        "keep:video/too-large.bin": (413, "Size of file exceeds the limit (fault proxy: 1 byte)"),
        "keep:small-full.bin": (507, "Insufficient storage: quota of project X reached"),
        "del:full/del-full.bin": (507, "Insufficient storage: quota of project Y reached"),
    }
    rules = [Rule(Respond(status, detail=detail), match=Match(filename=drop.remote(key).replace(".", r"\.") + "$"))
             for key, (status, detail) in failing.items()]
    originals = {p: p.read_bytes() for p in (too_large, small_full, del_full)}

    with FaultProxy(receiver.url, seed=1, rules=rules) as proxy:
        # The proxy fakes a file's 413 / 507 by answering its whole request: one file per
        # request, then (a file's 413 within a batch's answer: test_daemon_batch.py).
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=PART,
                                target_extra={"batch": 1})
        with DaemonProcess(config) as daemon:
            expected = {k: "failed" for k in failing} | {k: "done" for k in drop.names() if k not in failing}
            daemon.wait_states(expected, timeout=60)
            text = syncd_status(config)
            doc = syncd_status(config, as_json=True)
        for key in failing:
            assert len(proxy.requests(filename=drop.remote(key))) == 1, proxy.requests(filename=drop.remote(key))

    assert doc["counts"]["failed"] == 3
    errors = {f"{f['watch']}:{f['path']}": f["error"] for f in doc["failed"]}
    for key, (status, detail) in failing.items():
        assert str(status) in errors[key] and detail in errors[key], errors[key]
        assert f"{key}  " in text and detail in text, text
    assert "too large for the server (HTTP 413)" in errors["keep:video/too-large.bin"]
    rows = daemon.rows()
    assert all(rows[k]["attempts"] == 1 for k in failing)
    for path, data in originals.items():  # failed files are left as they were
        assert path.read_bytes() == data
    assert_delivered(receiver, drop, daemon, keys=[k for k in drop.names() if k not in failing])


def test_507_mid_upload_keeps_the_session_and_syncd_retry_resumes_it(receiver, tmp_path):
    """Issue 13, item 3: after a 507 the receiver keeps what it got; the client must not
    delete the session, and `syncd retry` sends only what the server lacks."""
    import subprocess
    import sys

    from tests.support.daemon import REPO

    drop = Drop(tmp_path)
    drop.write("keep", "full/half.bin", 5 * PART + 7)
    remote = drop.remote("keep:full/half.bin")
    third = Match(method="PUT", when=lambda info: info.range is not None and info.range[0] == 2 * PART)
    with FaultProxy(receiver.url, seed=1, rules=[Rule(Respond(507, detail="disk full"), match=third, times=1)]) \
            as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=PART)
        with DaemonProcess(config) as daemon:
            daemon.wait_states({"keep:full/half.bin": "failed"}, timeout=30)
            assert not proxy.requests(method="DELETE")  # the session was kept
            before = len(proxy.seen)
            out = subprocess.run([sys.executable, "-m", "syncd", "retry", "-c", str(config), "keep:full/half.bin"],
                                 capture_output=True, text=True, timeout=30, cwd=REPO, check=False)
            assert out.returncode == 0, out.stderr
            daemon.wait_states({"keep:full/half.bin": "done"}, timeout=30)
            after = [s for s in list(proxy.seen)[before:] if s.range is not None]
    assert [s.range[0] for s in after] == [2 * PART, 3 * PART, 4 * PART, 5 * PART]  # from the 507 on
    assert completed_uploads(daemon.journal_path, "keep:full/half.bin") == 1
    assert receiver.stored_md5(remote) == drop.md5["keep:full/half.bin"]


# --- the server is away, then back -------------------------------------------------------------

def test_server_down_files_wait_then_complete_unattended(receiver, tmp_path):
    drop = Drop(tmp_path)
    big = "keep:big/resumed.bin"
    drop.write("keep", "big/resumed.bin", 4 * MiB)
    link = Forward(bandwidth=1 * MiB)
    with FaultProxy(receiver.url, seed=3, rules=[Rule(link)]) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token,
                                part_size=256 * KiB, timeout={"read": "1s"}, target_extra={"batch": 1},
                                retry={"budget": "0.5s", "waiting_initial": "500ms", "waiting_max": "2s"})
        with DaemonProcess(config, log_level="INFO") as daemon:
            wait_until(lambda: upload_offset(daemon.journal_path, big) >= 1 * MiB, timeout=30,
                       what="a quarter of the big file")
            # the server stops answering (two requests hang until the client's timeout), then is gone
            proxy.set_rules([Rule(Stall(max_seconds=5), times=2), Rule(Reset(upstream=False))])
            for watch in ("keep", "del"):
                for n in (0, 1, PART, 3 * PART + 1):
                    drop.write(watch, f"during/{n}.bin", n)
            # two workers: at any moment two files are trying, the others wait their turn (one
            # file per request here: a batch's outage is test_daemon_batch.py's)
            wait_until(lambda: all(r["attempts"] >= 1 and r["state"] in ("waiting", "uploading")
                                   for r in daemon.rows().values()) and len(daemon.rows()) == len(drop.names()),
                       timeout=40, what="every file sent to `waiting` while the server is down")
            wait_until(lambda: max(r["attempts"] for r in daemon.rows().values()) >= 2, timeout=10,
                       what="a file tried again while the server is down")
            doc = syncd_status(config, as_json=True)
            assert doc["counts"]["waiting"] >= len(drop.names()) - 2 and doc["counts"]["failed"] == 0, doc
            assert all(w["error"] and w["next_attempt_at"] for w in doc["waiting"]), doc["waiting"]
            assert "waiting (retried automatically)" in syncd_status(config)
            assert_no_unsafe_deletes(receiver, drop)
            held_at_outage = upload_offset(daemon.journal_path, big)
            down_from = len(proxy.seen)
            proxy.set_rules([])  # back
            daemon.wait_states({k: "done" for k in drop.names()}, timeout=30)
            wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                       what="del files deleted")
        stalls = [s for s in proxy.seen if s.outcome == "stalled"]
        after = proxy.seen[down_from:]
    assert len(stalls) == 2 and all(s.ended - s.started < 3 for s in stalls)  # the client's 1s timeout
    assert_delivered(receiver, drop, daemon)
    assert completed_uploads(daemon.journal_path, big) == 1
    # the big file went on from the server's offset: at most the part in flight again
    sent_after = sum(s.received for s in after if s.filename == drop.remote(big) and s.method == "PUT")
    assert sent_after <= 4 * MiB - held_at_outage + 256 * KiB + 4 * KiB, (sent_after, held_at_outage)
    sessions = {s.path for s in proxy.seen if s.filename == drop.remote(big) and s.path.count("/") > 2}
    assert len(sessions) == 1, sessions


def test_receiver_restarted_mid_upload_resumes(tmp_path):
    root = tmp_path / "received"
    peer = ReceiverPeer(root)
    settings = ReceiverSettings(root=root, port=peer.port, token=peer.token, min_free=0)
    drop = Drop(tmp_path)
    key = "del:restart.bin"
    size = 12 * MiB
    drop.write("del", "restart.bin", size)
    restarted = None
    try:
        with FaultProxy(peer.url, seed=5, rules=[Rule(Forward(bandwidth=3 * MiB))], upstream_down="reset") as proxy:
            config = failure_config(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size=1 * MiB,
                                    retry={"budget": "2s"})
            with DaemonProcess(config, log_level="INFO") as daemon:
                wait_until(lambda: upload_offset(daemon.journal_path, key) >= 3 * MiB, timeout=30,
                           what="a quarter uploaded")
                peer.stop()  # in-flight part is cut; what was acknowledged stays
                wait_until(lambda: any(s.outcome == "reset" for s in proxy.seen), timeout=10,
                           what="a request while the receiver is down")
                restarted = EmbeddedReceiver(settings).start()
                daemon.wait_states({key: "done"}, timeout=60)
                wait_until(lambda: not drop.local(key).exists(), timeout=10, what="deleted after upload")
            puts = [s for s in proxy.seen if s.method == "PUT"]
        assert peer.stored_md5("del/restart.bin") == drop.md5[key]
        assert peer.completions("del/restart.bin") == 1
        assert completed_uploads(daemon.journal_path, key) == 1
        assert len({s.path for s in puts}) == 2, "first PUT to the base URL, then one session throughout"
        payload = sum(s.received for s in puts)
        assert payload <= size + 2 * MiB, payload  # what was cut, at most a part or two, again
        rows = journal_rows(daemon.journal_path, "SELECT state FROM uploads")
        assert [r[0] for r in rows] == ["completed"]
    finally:
        peer.stop()
        if restarted is not None:
            restarted.stop()
