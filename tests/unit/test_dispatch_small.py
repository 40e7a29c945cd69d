"""The daemon's dispatcher: how many files it hands to workers at once, large and small."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.bandwidth import BandwidthLimiter, TimetableEntry
from syncd.config import SMALL_FILE_MAX, load_config
from syncd.daemon import Daemon, WorkerGroups
from syncd.dispatch import Dispatcher, WatchQueue
from syncd.journal import DueFile, Fingerprint, Journal
from syncd.pipeline import Outcome
from syncd.upload.base import BatchLimit
from syncd.upload.engine import UploadEngine
from tests.support.daemon import make_config


class RecordingWorkers:
    def __init__(self) -> None:
        self.submitted: list[int] = []
        self.batches: list[tuple[int, ...]] = []

    def submit(self, file_id: int) -> None:
        self.submitted.append(file_id)

    def submit_batch(self, file_ids: tuple[int, ...]) -> None:
        self.batches.append(file_ids)


class BatchingEngine:
    """What the dispatcher asks of the engine: how many small files a target takes at once,
    by the engine's own ``batch_limit`` (none under a bandwidth limit of ``limiter``), over a
    backend that takes ``limit`` for every target."""

    def __init__(self, limit: BatchLimit, *, limiter: BandwidthLimiter | None = None) -> None:
        self.backends = _EveryTarget(SimpleNamespace(batch_limit=lambda: limit))
        self.limiter = limiter

    batch_limit = UploadEngine.batch_limit


class _EveryTarget:
    def __init__(self, backend: object) -> None:
        self._backend = backend

    def get(self, target: str) -> object:
        return self._backend


@pytest.fixture
def daemon(tmp_path):
    config = load_config(make_config(tmp_path, url="http://127.0.0.1:9/up/", token=None,
                                     concurrency={"uploads": 2, "small_uploads": 5}))
    d = Daemon(config)
    d.journal = Journal(config.journal)
    d.specs = {"drop": None}
    d.dispatcher = Dispatcher([WatchQueue("drop")])
    d.workers = RecordingWorkers()
    yield d
    d.journal.close()
    d.waker.close()


def ready(daemon: Daemon, name: str, size: int) -> int:
    return daemon.journal.mark_settled("drop", name, Fingerprint(1, hash(name) & 0xFFFF, size, 1)).id


def finish(daemon: Daemon, file_id: int) -> None:
    daemon.journal.set_state(file_id, "uploading")
    daemon.journal.mark_done(file_id, md5="m", remote_name="x")
    daemon.finished.put((file_id, Outcome(file_id, "drop", "", "done")))
    daemon._drain_finished(stopping=True)  # a slot is free; the next dispatch serves the backlog


def test_small_files_use_the_extra_workers_large_ones_never(daemon):
    large = [ready(daemon, f"large{i}", SMALL_FILE_MAX + 1) for i in range(4)]
    small = [ready(daemon, f"small{i}", SMALL_FILE_MAX) for i in range(6)]
    daemon._dispatch()
    assert daemon.workers.submitted == large[:2] + small[:3]  # 2 large (uploads), 5 in all
    assert daemon.running == set(large[:2] + small[:3])

    finish(daemon, small[0])  # a small file's place: the large ones still wait for a large place
    daemon._dispatch()
    assert daemon.workers.submitted[5:] == [small[3]]

    finish(daemon, large[0])  # a large file's place: the next large file
    daemon._dispatch()
    assert daemon.workers.submitted[6:] == [large[2]]
    assert len(daemon.running) == 5 and len(daemon._large_running) == 2


def test_with_no_extra_workers_small_files_share_uploads(daemon):
    daemon.config = daemon.config.model_copy(update={"concurrency": daemon.config.concurrency.model_copy(
        update={"small_uploads": 1})})
    ids = [ready(daemon, f"small{i}", 10) for i in range(4)]
    daemon._dispatch()
    assert daemon.workers.submitted == ids[:2]


def test_the_journal_is_asked_again_only_after_something_happened(daemon, monkeypatch):
    ready(daemon, "a", 10)
    daemon._dispatch()
    daemon._due_refresh_at = float("inf")  # the once-a-second look for waiting files is not due
    asked = []
    real_due = daemon.journal.due
    monkeypatch.setattr(daemon.journal, "due", lambda **kw: asked.append(kw) or real_due(**kw))
    for _ in range(5):
        daemon._dispatch()  # nothing new: no query
    assert asked == []
    ready(daemon, "b", 10)
    daemon._due_stale = True  # what the loop sets when a file settled
    daemon._dispatch()
    assert len(asked) == 1
    assert len(daemon.workers.submitted) == 2


def test_a_finished_file_frees_a_place_filled_from_the_backlog_without_a_query(daemon, monkeypatch):
    ids = [ready(daemon, f"small{i}", 10) for i in range(8)]
    daemon._dispatch()
    assert daemon.workers.submitted == ids[:5]
    daemon._due_refresh_at = float("inf")
    asked = []
    real_due = daemon.journal.due
    monkeypatch.setattr(daemon.journal, "due", lambda **kw: asked.append(kw) or real_due(**kw))
    finish(daemon, ids[0])
    daemon._dispatch()
    assert daemon.workers.submitted[5:] == [ids[5]]
    assert asked == []  # done: nothing new became due, the backlog had the next file
    daemon.journal.set_state(ids[1], "uploading")
    daemon.journal.set_state(ids[1], "waiting", next_attempt_at=0.0)
    daemon.finished.put((ids[1], Outcome(ids[1], "drop", "small1", "waiting")))
    daemon._drain_finished(stopping=True)  # (no intake in this fixture)
    daemon._dispatch()
    assert len(asked) == 1  # a file that went back to waiting may be due again: asked
    assert daemon.workers.submitted[6:] == [ids[1]]  # due at once, and the oldest


def test_two_watches_take_turns(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    config = load_config(make_config(tmp_path, url="http://127.0.0.1:9/up/", token=None,
                                     concurrency={"uploads": 2, "small_uploads": 4},
                                     watches=[{"name": n, "path": str(tmp_path / n), "target": "main"}
                                              for n in ("a", "b")]))
    d = Daemon(config)
    d.journal = Journal(config.journal)
    d.specs = {"a": None, "b": None}
    d.dispatcher = Dispatcher([WatchQueue("a"), WatchQueue("b")])
    d.workers = RecordingWorkers()
    try:
        flood = [d.journal.mark_settled("a", f"f{i}", Fingerprint(1, i, 10, 1)).id for i in range(6)]
        one = d.journal.mark_settled("b", "g", Fingerprint(1, 99, 10, 1)).id
        d._dispatch()
        assert len(d.workers.submitted) == 4
        assert one in d.workers.submitted  # not starved by the flood in "a"
        assert d.workers.submitted[:1] == flood[:1]
    finally:
        d.journal.close()
        d.waker.close()


def finish_batch(daemon: Daemon, file_ids) -> None:
    for file_id in file_ids:
        finish(daemon, file_id)


def test_small_files_go_in_batches_one_per_free_worker(daemon):
    daemon.engine = BatchingEngine(BatchLimit(4, 256 * 1024))
    ids = [ready(daemon, f"small{i}", 10) for i in range(40)]
    daemon._dispatch()
    assert daemon.workers.submitted == []
    assert daemon.workers.batches == [tuple(ids[n:n + 4]) for n in range(0, 20, 4)]  # 5 workers, 4 each
    assert len(daemon.running) == 20
    daemon._dispatch()
    assert len(daemon.workers.batches) == 5  # every worker is busy
    finish_batch(daemon, ids[:3])
    daemon._dispatch()
    assert len(daemon.workers.batches) == 5  # its worker still has one file of the batch
    finish(daemon, ids[3])
    daemon._dispatch()
    assert daemon.workers.batches[5:] == [tuple(ids[20:24])]


def test_a_few_due_files_are_spread_over_the_free_workers(daemon):
    daemon.engine = BatchingEngine(BatchLimit(32, 256 * 1024))
    ids = [ready(daemon, f"small{i}", 10) for i in range(7)]
    daemon._dispatch()
    groups = [(i,) for i in daemon.workers.submitted] + daemon.workers.batches
    assert len(groups) == 5  # every free worker has some
    assert sorted(i for g in groups for i in g) == ids


def test_files_over_the_batch_size_go_alone_and_large_ones_keep_their_limit(daemon):
    daemon.engine = BatchingEngine(BatchLimit(4, 100))
    large = [ready(daemon, f"large{i}", SMALL_FILE_MAX + 1) for i in range(3)]
    medium = [ready(daemon, f"medium{i}", 101) for i in range(2)]
    small = [ready(daemon, f"small{i}", 100) for i in range(8)]
    daemon._dispatch()
    assert daemon.workers.submitted == large[:2] + medium  # 2 large (uploads), medium alone
    assert daemon.workers.batches == [tuple(small[:4])]  # the fifth worker: a batch
    assert len(daemon._large_running) == 2


rows = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 300)), max_size=60)


@given(rows, st.integers(1, 8), st.integers(1, 6))
def test_worker_groups_keep_every_admitted_row_once_in_order(spec, workers, files):
    rows_in = [DueFile(i, watch, f"f{i}", size, "ready", 0.0) for i, (watch, size) in enumerate(spec)]
    batching = {"a": BatchLimit(files, 200), "b": BatchLimit(files, 200)}  # "c" takes no batches
    worker_groups = WorkerGroups(workers, batching)
    admitted = [r for r in rows_in if worker_groups.add(r)]
    groups = worker_groups.spread()
    assert sorted(r.id for g in groups for r in g) == [r.id for r in admitted]
    assert len(groups) <= workers
    for group in groups:
        assert group == sorted(group, key=lambda r: r.id)
        if len(group) > 1:
            assert len({r.watch for r in group}) == 1 and len(group) <= files
            assert all(batching[r.watch].takes(r.size) for r in group)
    assert len(groups) >= min(workers, len(admitted))  # no worker idles while another has two files
    if len(admitted) < len(rows_in):  # a row is refused only once every free worker has something
        assert len(groups) == workers


def test_under_a_bandwidth_limit_small_files_go_one_per_request(daemon):
    """A batch would go as one burst: while a limit is in force, no batches."""
    daemon.engine = BatchingEngine(BatchLimit(4, 256 * 1024), limiter=daemon.limiter)
    daemon.limiter.configure(overall=(TimetableEntry(at="00:00", limit=1024**2),), targets={})
    ids = [ready(daemon, f"small{i}", 10) for i in range(8)]
    daemon._dispatch()
    assert daemon.workers.batches == [] and daemon.workers.submitted == ids[:5]
    daemon.limiter.configure(overall=(), targets={})  # the limit is lifted
    daemon._due_stale = True
    daemon._dispatch()
    assert daemon.workers.submitted == ids[:5] and daemon.workers.batches == []  # every worker busy
    finish(daemon, ids[0])
    daemon._dispatch()
    assert daemon.workers.batches == [tuple(ids[5:8])]


def test_a_watch_that_transcodes_sends_its_small_files_alone(tmp_path):
    """Its videos would wait for each other in one worker: no batches there."""
    for name in ("plain", "videos"):
        (tmp_path / name).mkdir()
    config = load_config(make_config(tmp_path, url="http://127.0.0.1:9/up/", token=None,
                                     concurrency={"uploads": 2, "small_uploads": 4},
                                     watches=[{"name": "plain", "path": str(tmp_path / "plain"), "target": "main"},
                                              {"name": "videos", "path": str(tmp_path / "videos"), "target": "main",
                                               "transcode": "optimize_for_web"}]))
    d = Daemon(config)
    d.journal = Journal(config.journal)
    d.specs = {"plain": None, "videos": None}
    d.dispatcher = Dispatcher([WatchQueue("plain"), WatchQueue("videos")])
    d.workers = RecordingWorkers()
    d.engine = BatchingEngine(BatchLimit(8, 256 * 1024))
    try:
        videos = [d.journal.mark_settled("videos", f"v{i}.mp4", Fingerprint(1, i, 10, 1)).id for i in range(3)]
        plain = [d.journal.mark_settled("plain", f"p{i}", Fingerprint(1, 50 + i, 10, 1)).id for i in range(6)]
        d._dispatch()
        assert d.workers.submitted == videos  # alone, each to a worker of its own
        assert d.workers.batches == [tuple(plain)]  # the fourth worker
    finally:
        d.journal.close()
        d.waker.close()
