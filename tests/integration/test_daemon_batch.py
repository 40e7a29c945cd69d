"""Small files in batches, end to end: the real daemon uploads a drop of small files to the
built-in receiver, which takes several in one request (``Syncd-Batch``), through the fault
proxy; lost answers, cut requests and 5xx on batches lose, double and mix nothing."""

from __future__ import annotations

import random

from tests.support.daemon import DaemonProcess, wait_until
from tests.support.failures import Drop, KiB, assert_delivered, assert_no_unsafe_deletes, failure_config
from tests.support.fault_proxy import FaultProxy, Match, Reset, Respond, Rule, Seen
from tests.support.peers import ReceiverPeer

BATCH = Match(method="POST", when=lambda info: info.headers.get("syncd-batch") == "1")


def small_drop(drop: Drop, rng: random.Random, n: int) -> None:
    sizes = [0, 1, 255 * KiB, 256 * KiB, 256 * KiB + 1, 300 * KiB]  # around the largest file a batch takes
    for i in range(n):
        size = sizes[i] if i < len(sizes) else rng.randrange(1, 8 * KiB)
        drop.write(("keep", "del")[i % 2], f"d{i % 5}/s{i:03d}.bin", size, rng=rng)


def upload_all(tmp_path, peer, drop: Drop, rules: list[Rule], **config) -> tuple[DaemonProcess, list[Seen]]:
    """The daemon uploads the drop through the fault proxy until every file is done and the
    ``del`` ones are deleted; returns it (stopped) and the requests the proxy saw."""
    with FaultProxy(peer.url, seed=1, rules=rules) as proxy:
        path = failure_config(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size=64 * KiB,
                              small_uploads=4, quiet="0.5s", **config)
        with DaemonProcess(path, log_level="INFO") as daemon:
            daemon.wait_states({k: "done" for k in drop.names()}, timeout=120)
            wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                       what="del files deleted")
        return daemon, list(proxy.seen)


def test_a_drop_of_small_files_goes_in_batches_each_arriving_once(receiver, tmp_path):
    drop = Drop(tmp_path)
    small_drop(drop, random.Random(5), 160)
    daemon, seen = upload_all(tmp_path, receiver, drop, [])
    assert_delivered(receiver, drop, daemon)
    batches = [s for s in seen if s.headers.get("syncd-batch") == "1"]
    assert batches and all(s.outcome == "200" for s in batches)
    # most files went in batches: far fewer requests than files
    assert len(seen) < len(drop.names()) / 2, len(seen)
    assert "in a batch" in daemon.log()


def test_lost_answers_cut_requests_and_errors_on_batches_lose_and_double_nothing(receiver, tmp_path):
    drop = Drop(tmp_path)
    small_drop(drop, random.Random(6), 120)
    rules = [
        Rule(Respond(502, forward=True), match=BATCH, times=2),  # stored, but the answer is lost
        Rule(Reset(after_bytes=None), match=BATCH, times=2),     # cut somewhere in the body
        Rule(Reset(after_bytes=10**9), match=BATCH, times=1),    # the whole batch went; the answer did not
        Rule(Respond(503, retry_after=0.2), match=BATCH, times=2),
        Rule(Respond(413), match=BATCH, times=1),                # a proxy's body limit: one by one
    ]
    daemon, seen = upload_all(tmp_path, receiver, drop, rules,
                              retry={"initial": "50ms", "max": "200ms", "budget": "30s"})
    outcomes = [s.outcome for s in seen if s.headers.get("syncd-batch") == "1"]
    for outcome in ("502", "reset", "503", "413"):
        assert outcome in outcomes, f"no {outcome} was injected into a batch: {outcomes}"
    assert_no_unsafe_deletes(receiver, drop, daemon)
    assert_delivered(receiver, drop, daemon)  # each file once: a repeated key stores nothing new


def test_a_file_the_receiver_refuses_in_a_batch_fails_alone_with_its_reason(tmp_path):
    """A 413 in a batch's answer (a file over the receiver's --max-size) fails that file at its
    first attempt, with the receiver's reason and no request more; the others are done."""
    peer = ReceiverPeer(tmp_path / "received", max_size=100 * KiB)
    try:
        drop = Drop(tmp_path)
        rng = random.Random(7)
        for i in range(12):
            drop.write("keep", f"ok/{i}.bin", rng.randrange(1, 8 * KiB), rng=rng)
        drop.write("keep", "ok/too-big.bin", 150 * KiB, rng=rng)  # small enough for a batch, over --max-size
        with FaultProxy(peer.url, seed=1, rules=[]) as proxy:
            config = failure_config(tmp_path, url=proxy.url_for(peer.url), token=peer.token, part_size=256 * KiB,
                                    small_uploads=2, quiet="0.5s")
            with DaemonProcess(config, log_level="INFO") as daemon:
                expected = {k: "done" for k in drop.names()} | {"keep:ok/too-big.bin": "failed"}
                daemon.wait_states(expected, timeout=60)
            carrying = proxy.requests(filename="keep/ok/too-big.bin")
        assert len(carrying) == 1 and carrying[0].headers.get("syncd-batch") == "1", carrying
        row = daemon.rows()["keep:ok/too-big.bin"]
        assert row["attempts"] == 1 and "413" in row["last_error"] and "exceeds the limit" in row["last_error"], row
        assert_delivered(peer, drop, daemon, keys=[k for k in drop.names() if k != "keep:ok/too-big.bin"])
    finally:
        peer.stop()


def test_while_the_server_is_down_batched_files_wait_then_complete_unattended(receiver, tmp_path):
    """A batch whose retries are spent leaves each of its files `waiting` (none `failed`),
    tried again later as a batch; once the server is back every file arrives once."""
    drop = Drop(tmp_path)
    small_drop(drop, random.Random(8), 40)
    with FaultProxy(receiver.url, seed=4, rules=[]) as proxy:
        config = failure_config(tmp_path, url=proxy.url_for(receiver.url), token=receiver.token, part_size=64 * KiB,
                                small_uploads=2, quiet="0.3s", timeout={"read": "1s"},
                                retry={"initial": "50ms", "max": "100ms", "budget": "0.3s",
                                       "waiting_initial": "500ms", "waiting_max": "1s"})
        with DaemonProcess(config, log_level="INFO") as daemon:
            daemon.wait_states({"keep:d0/s000.bin": "done"}, timeout=30)  # the server said it takes batches
            proxy.set_rules([Rule(Reset(upstream=False))])  # the server is gone
            for i in range(40, 80):
                drop.write(("keep", "del")[i % 2], f"later/s{i:03d}.bin", 3000)
            wait_until(lambda: sum(r["state"] == "waiting" and r["attempts"] >= 1 for r in daemon.rows().values())
                       >= 30, timeout=40, what="the later files waiting while the server is down")
            assert not [r for r in daemon.rows().values() if r["state"] == "failed"]
            down = [s for s in proxy.seen if s.action == "reset" and s.headers.get("syncd-batch") == "1"]
            assert down, "no batch was tried while the server was down"
            proxy.set_rules([])  # back
            daemon.wait_states({k: "done" for k in drop.names()}, timeout=60)
            wait_until(lambda: not any(drop.local(k).exists() for k in drop.names("del")), timeout=10,
                       what="del files deleted")
    assert_no_unsafe_deletes(receiver, drop, daemon)
    assert_delivered(receiver, drop, daemon)
