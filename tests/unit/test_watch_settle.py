"""Settling with a fake clock and a fake filesystem: no sleeping, no real files."""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat as stat_module
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.watch import Growing, Ready, Settler, Vanished
from syncd.watch.settle import Outcome

KEY = ("drop", "clip.mov")
PATH = Path("/drop/clip.mov")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeFile:
    ino: int
    size: int
    mtime_ns: int
    mode: int = stat_module.S_IFREG | 0o644


class FakeFS:
    """Paths to files; a write sets mtime_ns to the clock, as a real filesystem would."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.files: dict[Path, FakeFile] = {}
        self.errors: dict[Path, OSError] = {}
        self.stat_calls = 0
        self._inodes = itertools.count(100)

    def create(self, path: Path, size: int = 0) -> None:
        self.files[path] = FakeFile(next(self._inodes), size, self._mtime())

    def append(self, path: Path, size: int) -> None:
        self.files[path].size += size
        self.files[path].mtime_ns = self._mtime()

    def rewrite_same_size(self, path: Path) -> None:
        self.files[path].mtime_ns = self._mtime()

    def replace_keeping_size_and_mtime(self, path: Path) -> None:
        old = self.files[path]
        self.files[path] = FakeFile(next(self._inodes), old.size, old.mtime_ns)

    def delete(self, path: Path) -> None:
        del self.files[path]

    def rename(self, old: Path, new: Path) -> None:
        self.files[new] = self.files.pop(old)

    def stat(self, path: Path) -> os.stat_result:
        self.stat_calls += 1
        if path in self.errors:
            raise self.errors[path]
        try:
            f = self.files[path]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "No such file", str(path)) from None
        return os.stat_result(
            (f.mode, f.ino, 7, 1, 0, 0, f.size, 0, f.mtime_ns // 10**9, 0),
            {"st_mtime_ns": f.mtime_ns},
        )

    def _mtime(self) -> int:
        return int(self.clock.now * 10**9)


class Harness:
    """A daemon loop in miniature: sleeps exactly until next_deadline() and polls."""

    def __init__(self, *, quiet: float, max_wait: float) -> None:
        self.clock = FakeClock()
        self.fs = FakeFS(self.clock)
        self.settler: Settler[tuple[str, str]] = Settler(
            quiet=quiet, max_wait=max_wait, clock=self.clock, stat=self.fs.stat
        )
        self.outcomes: list[tuple[float, Outcome[tuple[str, str]]]] = []

    def run_until(self, t: float) -> None:
        while (deadline := self.settler.next_deadline()) is not None and deadline <= t:
            assert deadline >= self.clock.now, "a deadline in the past was never polled"
            self.clock.now = deadline
            self.outcomes += [(deadline, o) for o in self.settler.poll()]
        self.clock.now = t
        self.outcomes += [(t, o) for o in self.settler.poll()]

    def of_type(self, kind: type) -> list[tuple[float, Outcome[tuple[str, str]]]]:
        return [(t, o) for t, o in self.outcomes if isinstance(o, kind)]


def test_ready_exactly_quiet_after_the_last_event() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    assert h.settler.next_deadline() == 2.0
    assert h.settler.poll(1.999) == []
    h.clock.now = 2.0
    [outcome] = h.settler.poll()
    assert isinstance(outcome, Ready)
    assert (outcome.key, outcome.path, outcome.stat.st_size) == (KEY, PATH, 10)
    assert len(h.settler) == 0
    assert h.settler.next_deadline() is None


def test_slow_writer_is_never_ready_before_it_stops() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH)
    h.settler.touch(KEY, PATH)
    for step in range(1, 21):  # appends every 0.5 s for 10 s, each with its event
        h.run_until(step * 0.5)
        h.fs.append(PATH, 100)
        h.settler.touch(KEY, PATH)
    assert h.outcomes == []
    h.run_until(30.0)
    [(when, ready)] = h.outcomes
    assert when == 12.0
    assert isinstance(ready, Ready) and ready.stat.st_size == 2000


def test_slow_writer_without_events_is_caught_by_the_stats() -> None:
    """Events lost (overflow, polling): only the first write was seen."""
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH)
    h.settler.touch(KEY, PATH)
    for step in range(1, 21):
        h.run_until(step * 0.5)
        h.fs.append(PATH, 100)
    assert h.outcomes == []
    h.run_until(30.0)
    [(when, ready)] = h.outcomes
    assert 12.0 <= when <= 14.0
    assert isinstance(ready, Ready) and ready.stat.st_size == 2000


def test_same_size_rewrite_with_a_new_mtime_is_not_ready() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.run_until(1.0)
    h.fs.rewrite_same_size(PATH)
    h.run_until(2.0)
    assert h.outcomes == []
    h.run_until(10.0)
    assert [(t, type(o)) for t, o in h.outcomes] == [(4.0, Ready)]


def test_replaced_file_with_same_size_and_mtime_is_not_ready() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.run_until(1.0)
    h.fs.replace_keeping_size_and_mtime(PATH)
    h.run_until(2.0)
    assert h.outcomes == []
    h.run_until(10.0)
    assert [(t, type(o)) for t, o in h.outcomes] == [(4.0, Ready)]


def test_an_event_alone_restarts_the_quiet_gap() -> None:
    """A close-after-write is a touch like any other: it never makes a file ready sooner."""
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.run_until(1.5)
    h.settler.touch(KEY, PATH)  # e.g. the close event
    h.run_until(3.0)
    assert h.outcomes == []
    assert h.settler.next_deadline() == 3.5
    h.run_until(3.5)
    assert [(t, type(o)) for t, o in h.outcomes] == [(3.5, Ready)]


def test_growing_is_reported_once_past_max_wait_then_ready_when_it_stops() -> None:
    h = Harness(quiet=1.0, max_wait=5.0)
    h.fs.create(PATH)
    h.settler.touch(KEY, PATH)
    for step in range(1, 25):  # appends every 0.5 s for 12 s
        h.run_until(step * 0.5)
        h.fs.append(PATH, 1)
        h.settler.touch(KEY, PATH)
    assert [(t, o) for t, o in h.outcomes] == [(5.0, Growing(KEY, PATH, 0.0))]
    assert list(h.settler.pending()) == [KEY]
    h.run_until(60.0)
    assert [(t, type(o)) for t, o in h.outcomes] == [(5.0, Growing), (13.0, Ready)]


def test_first_seen_is_kept_across_touches_and_reset_after_ready() -> None:
    h = Harness(quiet=1.0, max_wait=3.0)
    h.fs.create(PATH)
    h.settler.touch(KEY, PATH)
    h.run_until(0.5)
    h.settler.touch(KEY, PATH)
    h.run_until(1.5)
    assert [type(o) for _, o in h.outcomes] == [Ready]
    h.run_until(10.0)
    h.fs.append(PATH, 1)
    h.settler.touch(KEY, PATH)
    for step in range(1, 8):
        h.run_until(10.0 + step * 0.5)
        h.settler.touch(KEY, PATH)
    assert h.of_type(Growing) == [(13.0, Growing(KEY, PATH, 10.0))]


def test_vanished_file_is_reported_and_forgotten() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.fs.delete(PATH)
    h.run_until(5.0)
    assert h.outcomes == [(2.0, Vanished(KEY, PATH))]
    assert len(h.settler) == 0
    assert h.settler.next_deadline() is None


def test_touch_of_an_already_deleted_file_reports_vanished() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.settler.touch(KEY, PATH)
    h.run_until(5.0)
    assert h.outcomes == [(2.0, Vanished(KEY, PATH))]


def test_a_path_that_is_no_longer_a_regular_file_vanishes() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.fs.files[PATH].mode = stat_module.S_IFLNK | 0o777
    h.run_until(5.0)
    assert h.outcomes == [(2.0, Vanished(KEY, PATH))]


def test_transient_stat_errors_keep_the_file(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.fs.errors[PATH] = OSError(errno.EIO, "Input/output error")
    with caplog.at_level(logging.WARNING, logger="syncd.watch.settle"):
        h.run_until(3.0)
    assert h.outcomes == []
    assert str(PATH) in caplog.text
    del h.fs.errors[PATH]
    h.run_until(10.0)
    assert [(t, type(o)) for t, o in h.outcomes] == [(6.0, Ready)]


def test_forget_drops_the_key() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.settler.forget(KEY)
    h.settler.forget(("drop", "never-seen"))
    assert KEY not in h.settler
    assert h.settler.next_deadline() is None
    h.run_until(10.0)
    assert h.outcomes == []


def test_rename_carries_the_quiet_gap_to_the_new_key() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    new_key, new_path = ("drop", "final.mov"), Path("/drop/final.mov")
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.run_until(1.0)
    h.fs.rename(PATH, new_path)
    assert h.settler.rename(KEY, new_key, new_path) is True
    assert list(h.settler.pending()) == [new_key]
    h.run_until(10.0)
    [(when, ready)] = h.outcomes
    assert when == 2.0
    assert isinstance(ready, Ready) and (ready.key, ready.path) == (new_key, new_path)


def test_rename_of_an_untracked_key_changes_nothing() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    assert h.settler.rename(KEY, ("drop", "b"), Path("/drop/b")) is False
    assert len(h.settler) == 0


def test_rename_over_a_tracked_key_replaces_it() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    other_key, other_path = ("drop", "other.mov"), Path("/drop/other.mov")
    h.fs.create(PATH, 10)
    h.fs.create(other_path, 5)
    h.settler.touch(other_key, other_path)
    h.run_until(1.0)
    h.settler.touch(KEY, PATH)
    h.fs.rename(PATH, other_path)
    assert h.settler.rename(KEY, other_key, other_path)
    assert len(h.settler) == 1
    h.run_until(10.0)
    [(when, ready)] = h.outcomes
    assert when == 3.0
    assert isinstance(ready, Ready) and ready.stat.st_size == 10


def test_next_deadline_follows_touches_exactly() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    for t in (0.0, 0.5, 1.0):
        h.clock.now = t
        h.settler.touch(KEY, PATH)
    assert h.settler.next_deadline() == 3.0
    other = ("drop", "b")
    h.fs.create(Path("/drop/b"))
    h.settler.touch(other, Path("/drop/b"))
    assert h.settler.next_deadline() == 3.0
    h.settler.forget(KEY)
    assert h.settler.next_deadline() == 3.0  # b, touched at 1.0


def test_touch_costs_one_stat() -> None:
    h = Harness(quiet=2.0, max_wait=60.0)
    h.fs.create(PATH, 10)
    for _ in range(5):
        h.settler.touch(KEY, PATH)
    assert h.fs.stat_calls == 5


def test_many_files_settle_independently() -> None:
    h = Harness(quiet=1.0, max_wait=60.0)
    paths = {("drop", f"f{i}"): Path(f"/drop/f{i}") for i in range(50)}
    for i, (key, path) in enumerate(paths.items()):
        h.run_until(i * 0.1)
        h.fs.create(path, i)
        h.settler.touch(key, path)
    h.run_until(100.0)
    ready = h.of_type(Ready)
    assert [o.key for _, o in ready] == list(paths)
    assert all(abs(t - (i * 0.1 + 1.0)) < 1e-9 for i, (t, _) in enumerate(ready))


@pytest.mark.parametrize(("quiet", "max_wait"), [(0.0, 10.0), (-1.0, 10.0), (5.0, 4.0)])
def test_bad_knobs_are_refused(quiet: float, max_wait: float) -> None:
    with pytest.raises(ValueError):
        Settler(quiet=quiet, max_wait=max_wait)


# --- property: random write and event schedules ------------------------------------

ACTIONS = ("append+event", "append", "event", "rewrite", "replace", "poll")


@settings(max_examples=300, deadline=None)
@given(
    quiet=st.integers(1, 5),
    max_wait_factor=st.integers(1, 6),
    schedule=st.lists(
        st.tuples(st.integers(0, 4000), st.sampled_from(ACTIONS)), min_size=1, max_size=40
    ),
)
def test_ready_only_when_the_last_write_is_quiet_old(
    quiet: int, max_wait_factor: int, schedule: list[tuple[int, str]]
) -> None:
    # Integer milliseconds as the clock unit keep every comparison exact.
    quiet_ms = quiet * 250
    max_wait_ms = quiet_ms * max_wait_factor
    h = Harness(quiet=quiet_ms, max_wait=max_wait_ms)
    h.fs.create(PATH)
    h.settler.touch(KEY, PATH)
    last_write = 0.0
    last_event = 0.0
    cycle_start: float | None = 0.0
    seen = 0

    def check_new_outcomes() -> None:
        nonlocal seen, cycle_start
        for when, outcome in h.outcomes[seen:]:
            if isinstance(outcome, Ready):
                assert when - last_write >= quiet_ms
                assert when - last_event >= quiet_ms
                current = h.fs.files[PATH]
                assert (outcome.stat.st_size, outcome.stat.st_ino, outcome.stat.st_mtime_ns) == (
                    current.size,
                    current.ino,
                    current.mtime_ns,
                )
                cycle_start = None
            elif isinstance(outcome, Growing):
                assert cycle_start is not None and outcome.first_seen == cycle_start
                assert when - cycle_start >= max_wait_ms
            else:
                pytest.fail(f"unexpected {outcome!r}")
        growings = [o for _, o in h.outcomes if isinstance(o, Growing)]
        assert len(growings) == len(set(g.first_seen for g in growings)), "Growing twice"
        seen = len(h.outcomes)

    now = 0.0
    for delta, action in schedule:
        now += delta
        h.run_until(now)
        check_new_outcomes()
        if action in ("append+event", "append"):
            h.fs.append(PATH, 1)
        elif action == "rewrite":
            h.fs.rewrite_same_size(PATH)
        elif action == "replace":
            h.fs.replace_keeping_size_and_mtime(PATH)
        if action not in ("event", "poll"):
            last_write = now
        if action in ("append+event", "event"):
            if KEY not in h.settler:
                cycle_start = now
            h.settler.touch(KEY, PATH)
            last_event = now

    tracked_at_end = KEY in h.settler
    h.run_until(now + max_wait_ms + 3 * quiet_ms)
    check_new_outcomes()
    assert len(h.settler) == 0
    if tracked_at_end:
        when, final = h.outcomes[-1]
        assert isinstance(final, Ready)
        assert when <= max(last_event + quiet_ms, last_write + 2 * quiet_ms)
