"""Which due files start next: priorities, round-robin among equals, oldest or smallest."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.dispatch import Dispatcher, WatchQueue
from syncd.journal import Fingerprint, Journal


class Queue:
    """A journal with a settable clock, and a dispatcher fed as the daemon feeds it."""

    def __init__(self, path, watches: list[WatchQueue]) -> None:
        self.now = 1000.0
        self.journal = Journal(path, clock=lambda: self.now)
        self.dispatcher = Dispatcher(watches)
        self.running: set[int] = set()
        self._ino = 0

    def ready(self, watch: str, relpath: str, size: int) -> int:
        self.now += 1.0
        self._ino += 1
        return self.journal.mark_settled(watch, relpath, Fingerprint(1, self._ino, size, 0)).id

    def start(self, free: int, *, refresh: bool = True) -> list[str]:
        rows = self.dispatcher.pick(self.journal, free=free, running=self.running, refresh=refresh)
        for row in rows:
            self.running.add(row.id)
            self.journal.set_state(row.id, "uploading")
        return [f"{r.watch}:{r.relpath}" for r in rows]

    def finish(self, key: str) -> None:
        watch, relpath = key.split(":", 1)
        row = self.journal.find_file(watch, relpath)
        self.journal.mark_done(row.id, md5="m", remote_name=relpath)
        self.running.discard(row.id)

    def drain(self, *, workers: int, refresh: bool = True) -> list[str]:
        """Start and finish files one at a time with ``workers`` slots, oldest start first;
        without ``refresh``, as the daemon does after a worker finished (the first pick asks
        the journal, the others serve the backlog)."""
        order: list[str] = []
        started: list[str] = []
        while True:
            new = self.start(workers - len(self.running), refresh=refresh or not order)
            order += new
            started += new
            if not started:
                return order
            self.finish(started.pop(0))


@pytest.fixture
def make_queue(tmp_path):
    queues: list[Queue] = []

    def make(watches: list[WatchQueue]) -> Queue:
        queue = Queue(tmp_path / f"journal{len(queues)}.db", watches)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        queue.journal.close()


def test_mixed_queue_goes_by_priority_then_round_robin_then_order(make_queue) -> None:
    q = make_queue([WatchQueue("video", 0, "oldest"), WatchQueue("scans", 10, "smallest"),
                    WatchQueue("bulk", 0, "smallest"), WatchQueue("urgent", 10, "oldest")])
    q.ready("video", "v1.mov", 900)
    q.ready("bulk", "b-big.bin", 500)
    q.ready("video", "v2.mov", 100)
    q.ready("scans", "s-big.pdf", 300)
    q.ready("urgent", "u1.tif", 50)
    q.ready("bulk", "b-small.bin", 5)
    q.ready("scans", "s-small.pdf", 3)
    q.ready("urgent", "u2.tif", 40)
    q.ready("scans", "s-mid.pdf", 30)
    assert q.start(100) == [
        # priority 10, round-robin in config order (scans, urgent), each in its own order
        "scans:s-small.pdf", "urgent:u1.tif", "scans:s-mid.pdf", "urgent:u2.tif", "scans:s-big.pdf",
        # then priority 0: bulk (smallest first) and video (oldest first) in turn; the turn goes
        # on from where it stopped (after scans comes bulk in the config)
        "bulk:b-small.bin", "video:v1.mov", "bulk:b-big.bin", "video:v2.mov",
    ]


def test_a_higher_priority_file_takes_the_next_free_worker_without_preempting(make_queue) -> None:
    q = make_queue([WatchQueue("video", 0), WatchQueue("scans", 5)])
    for i in range(3):
        q.ready("video", f"v{i}.mov", 10**9)
    assert q.start(2) == ["video:v0.mov", "video:v1.mov"]
    q.ready("scans", "s0.pdf", 10)
    q.ready("scans", "s1.pdf", 10)
    assert q.start(0) == []  # both workers busy: nothing is preempted
    q.finish("video:v0.mov")
    assert q.start(1) == ["scans:s0.pdf"]
    q.finish("video:v1.mov")
    assert q.start(1) == ["scans:s1.pdf"]
    q.finish("scans:s0.pdf")
    assert q.start(1) == ["video:v2.mov"]


def test_equal_priorities_share_the_workers_in_turn(make_queue) -> None:
    q = make_queue([WatchQueue("a"), WatchQueue("b"), WatchQueue("c")])
    for i in range(4):
        q.ready("a", f"a{i}", 1)
    q.ready("b", "b0", 1)
    q.ready("c", "c0", 1)
    q.ready("c", "c1", 1)
    assert q.drain(workers=1) == ["a:a0", "b:b0", "c:c0", "a:a1", "c:c1", "a:a2", "a:a3"]


def test_waiting_files_join_their_watch_order_when_due(make_queue) -> None:
    q = make_queue([WatchQueue("w", 0, "smallest")])
    retry = q.ready("w", "retry.bin", 2)
    later = q.ready("w", "later.bin", 1)
    q.ready("w", "big.bin", 9)
    q.journal.set_state(retry, "waiting", next_attempt_at=q.now - 1)
    q.journal.set_state(later, "waiting", next_attempt_at=q.now + 60)
    assert q.start(10) == ["w:retry.bin", "w:big.bin"]


def test_files_handed_to_workers_are_not_picked_again(make_queue) -> None:
    q = make_queue([WatchQueue("w")])
    first = q.ready("w", "a", 1)
    q.ready("w", "b", 1)
    q.running.add(first)  # handed over, its row still reads `ready`
    assert q.start(1) == ["w:b"]


class CountingJournal:
    """The journal, counting the dispatcher's questions."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.asked: list[str] = []

    def due(self, **kwargs):
        self.asked.append(kwargs["watches"][0])
        return self.journal.due(**kwargs)


def test_without_refresh_the_backlog_is_served_without_asking_the_journal(make_queue) -> None:
    q = make_queue([WatchQueue("w")])
    for i in range(5):
        q.ready("w", f"f{i}", 1)
    counting = CountingJournal(q.journal)
    assert [r.relpath for r in q.dispatcher.pick(counting, free=2, running=set())] == ["f0", "f1"]
    assert counting.asked == ["w"]
    q.ready("w", "late", 1)  # due now, but only a refresh looks for it
    assert [r.relpath for r in q.dispatcher.pick(counting, free=2, running=set(), refresh=False)] == ["f2", "f3"]
    assert [r.relpath for r in q.dispatcher.pick(counting, free=5, running=set(), refresh=False)] == ["f4"]
    assert counting.asked == ["w"]  # the whole answer fitted its limit: nothing more to ask for
    assert [r.relpath for r in q.dispatcher.pick(counting, free=10, running=set())] == [
        "f0", "f1", "f2", "f3", "f4", "late"]  # nothing was started in the journal here
    assert counting.asked == ["w", "w"]


def test_a_watch_whose_answer_was_cut_is_asked_again_when_its_backlog_runs_out(make_queue, monkeypatch) -> None:
    monkeypatch.setattr(Dispatcher, "BATCH", 3)
    q = make_queue([WatchQueue("w")])
    for i in range(7):
        q.ready("w", f"f{i}", 1)
    counting = CountingJournal(q.journal)
    started = q.dispatcher.pick(counting, free=1, running=set())
    assert [r.relpath for r in started] == ["f0"]
    running = {started[0].id}
    for r in q.dispatcher.pick(counting, free=2, running=running, refresh=False):
        running.add(r.id)
    assert counting.asked == ["w"]  # f1, f2 from the backlog
    more = q.dispatcher.pick(counting, free=1, running=running, refresh=False)
    assert [r.relpath for r in more] == ["f3"]  # the backlog ran out: asked again, running rows skipped
    assert counting.asked == ["w", "w"]


def test_a_row_admit_refuses_keeps_its_place_in_the_backlog(make_queue) -> None:
    q = make_queue([WatchQueue("w")])
    big = q.ready("w", "big", 10**9)
    q.ready("w", "s1", 1)
    q.ready("w", "s2", 1)
    small_only = lambda row: row.size < 10**6  # noqa: E731
    picked = q.dispatcher.pick(q.journal, free=1, running=set(), admit=small_only)
    assert [r.relpath for r in picked] == ["s1"]
    picked = q.dispatcher.pick(q.journal, free=2, running={picked[0].id}, refresh=False)
    assert [r.relpath for r in picked] == ["big", "s2"]  # admitted now: oldest first again
    assert picked[0].id == big


def test_due_refuses_an_unknown_order(tmp_path) -> None:
    journal = Journal(tmp_path / "j.db")
    try:
        with pytest.raises(ValueError, match="unknown order 'newest'"):
            journal.due(watches=["w"], order="newest")  # type: ignore[arg-type]
    finally:
        journal.close()


_WATCHES = [WatchQueue("p1a", 1, "oldest"), WatchQueue("p0", 0, "smallest"), WatchQueue("p1b", 1, "smallest")]


@settings(max_examples=40, deadline=None)
@given(files=st.lists(st.tuples(st.sampled_from([w.name for w in _WATCHES]), st.integers(0, 50)),
                      min_size=1, max_size=25),
       workers=st.integers(1, 4), batch=st.integers(1, 8))
def test_serving_the_backlog_starts_files_in_the_order_asking_again_would(tmp_path_factory, files, workers,
                                                                          batch) -> None:
    """Nothing new arrives while the queue drains, so picks that only serve the backlog (with
    answers cut at ``batch`` rows) start the same files in the same order as picks that
    ask the journal every time."""
    orders = []
    for refresh in (True, False):
        q = Queue(tmp_path_factory.mktemp("q") / "journal.db", _WATCHES)
        q.dispatcher.BATCH = batch
        try:
            for i, (watch, size) in enumerate(files):
                q.ready(watch, f"f{i}", size)
            orders.append(q.drain(workers=workers, refresh=refresh))
        finally:
            q.journal.close()
    assert orders[0] == orders[1]
    assert sorted(orders[1]) == sorted(f"{w}:f{i}" for i, (w, _) in enumerate(files))


@settings(max_examples=40, deadline=None)
@given(files=st.lists(st.tuples(st.sampled_from([w.name for w in _WATCHES]), st.integers(0, 50)),
                      min_size=1, max_size=25),
       workers=st.integers(1, 4))
def test_any_queue_drains_in_priority_order(tmp_path_factory, files, workers) -> None:
    """Every file starts once; while a higher-priority file waits, no lower one starts;
    within a watch, files start in the watch's order."""
    q = Queue(tmp_path_factory.mktemp("q") / "journal.db", _WATCHES)
    try:
        for i, (watch, size) in enumerate(files):
            q.ready(watch, f"f{i}", size)
        order = q.drain(workers=workers)
        assert sorted(order) == sorted(f"{w}:f{i}" for i, (w, _) in enumerate(files))
        priority = {w.name: w.priority for w in _WATCHES}
        ranks = [priority[key.split(":")[0]] for key in order]
        assert ranks == sorted(ranks, reverse=True)  # nothing arrives later here, so strictly by priority
        for w in _WATCHES:
            mine = [int(key.split(":f")[1]) for key in order if key.startswith(f"{w.name}:")]
            if w.order == "smallest":
                assert mine == sorted(mine, key=lambda i: (files[i][1], i))
            else:
                assert mine == sorted(mine)
    finally:
        q.journal.close()
