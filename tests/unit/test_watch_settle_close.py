"""The fast path for closed files, with a fake clock, a fake filesystem and a fake
writers probe: ready ``close_quiet`` after a close when nobody holds the file open for
writing, the whole quiet gap otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.watch import Ready, Settler
from syncd.watch.settle import Outcome
from syncd.watch.writers import Writers
from tests.unit.test_watch_settle import KEY, PATH, FakeClock, FakeFS

QUIET = 30.0
CLOSE_QUIET = 0.25


class WritersProbe:
    """How many writers hold each path open, as the lease probe would report it."""

    def __init__(self) -> None:
        self.holders: dict[Path, int] = {}
        self.unknown = False
        self.calls: list[Path] = []

    def __call__(self, path: Path) -> Writers:
        self.calls.append(path)
        if self.unknown:
            return Writers.UNKNOWN
        return Writers.SOME if self.holders.get(path, 0) else Writers.NONE


class CloseHarness:
    def __init__(self, *, close_quiet: float | None = CLOSE_QUIET, quiet: float = QUIET,
                 max_wait: float = 600.0) -> None:
        self.clock = FakeClock()
        self.fs = FakeFS(self.clock)
        self.writers = WritersProbe()
        self.settler: Settler[tuple[str, str]] = Settler(
            quiet=quiet, max_wait=max_wait, clock=self.clock, stat=self.fs.stat,
            close_quiet=close_quiet, writers=self.writers)
        self.outcomes: list[tuple[float, Outcome[tuple[str, str]]]] = []

    def run_until(self, t: float) -> None:
        while (deadline := self.settler.next_deadline()) is not None and deadline <= t:
            assert deadline >= self.clock.now, "a deadline in the past was never polled"
            self.clock.now = deadline
            self.outcomes += [(deadline, o) for o in self.settler.poll()]
        self.clock.now = t
        self.outcomes += [(t, o) for o in self.settler.poll()]

    def ready(self) -> list[tuple[float, bool]]:
        return [(t, o.on_close) for t, o in self.outcomes if isinstance(o, Ready)]


def test_closed_and_not_held_is_ready_after_close_quiet() -> None:
    h = CloseHarness()
    h.fs.create(PATH, 10)
    h.settler.touch(KEY, PATH)
    h.clock.now = 1.0
    h.settler.closed(KEY, PATH)
    assert h.settler.next_deadline() == 1.0 + CLOSE_QUIET
    h.run_until(60.0)
    assert h.ready() == [(1.0 + CLOSE_QUIET, True)]
    assert h.writers.calls == [PATH]
    [(_, ready)] = h.outcomes
    assert ready.stat.st_size == 10


def test_closed_but_held_open_by_another_writer_waits_the_quiet_gap() -> None:
    h = CloseHarness()
    h.fs.create(PATH, 10)
    h.writers.holders[PATH] = 1  # e.g. a second descriptor of the writer, or another process
    h.settler.closed(KEY, PATH)
    h.run_until(QUIET - 0.01)
    assert h.ready() == []
    h.run_until(60.0)
    assert h.ready() == [(QUIET, False)]
    assert h.writers.calls == [PATH], "once a writer was found, no more probes until the next close"


def test_where_the_probe_cannot_tell_the_quiet_gap_is_the_rule() -> None:
    h = CloseHarness()
    h.writers.unknown = True  # no leases here (EINVAL), or not our file (EACCES)
    h.fs.create(PATH, 10)
    h.settler.closed(KEY, PATH)
    h.run_until(60.0)
    assert h.ready() == [(QUIET, False)]


def test_without_close_quiet_a_close_is_only_an_event() -> None:
    h = CloseHarness(close_quiet=None)
    h.fs.create(PATH, 10)
    h.settler.closed(KEY, PATH)
    h.run_until(60.0)
    assert h.ready() == [(QUIET, False)]
    assert h.writers.calls == []


def test_an_event_after_the_close_restarts_the_short_window() -> None:
    h = CloseHarness()
    h.fs.create(PATH, 10)
    h.settler.closed(KEY, PATH)
    h.clock.now = 0.1
    h.fs.rewrite_same_size(PATH)  # cp -p / rsync --inplace set the mtime after closing
    h.settler.touch(KEY, PATH)
    h.run_until(60.0)
    assert h.ready() == [(0.1 + CLOSE_QUIET, True)]


def test_a_writer_that_reopens_is_caught_and_the_next_close_is_fast_again() -> None:
    h = CloseHarness()
    h.fs.create(PATH, 10)
    h.settler.closed(KEY, PATH)
    h.clock.now = 0.1
    h.writers.holders[PATH] = 1  # reopened within close_quiet, and appending
    h.fs.append(PATH, 5)
    h.settler.touch(KEY, PATH)
    h.run_until(5.0)
    assert h.ready() == []
    h.fs.append(PATH, 5)
    h.settler.touch(KEY, PATH)
    h.clock.now = 6.0
    h.writers.holders[PATH] = 0
    h.settler.closed(KEY, PATH)
    h.run_until(60.0)
    assert h.ready() == [(6.0 + CLOSE_QUIET, True)]
    [(_, ready)] = h.outcomes
    assert ready.stat.st_size == 20


def test_a_change_without_an_event_after_the_close_is_confirmed_again() -> None:
    h = CloseHarness()
    h.fs.create(PATH, 10)
    h.settler.closed(KEY, PATH)
    h.clock.now = 0.2
    h.fs.append(PATH, 1)  # its event is late or lost
    h.run_until(60.0)
    assert h.ready() == [(2 * CLOSE_QUIET, True)]


def test_close_of_a_file_that_is_gone_reports_vanished() -> None:
    h = CloseHarness()
    h.settler.closed(KEY, PATH)
    h.run_until(1.0)
    assert [(t, type(o).__name__) for t, o in h.outcomes] == [(CLOSE_QUIET, "Vanished")]


@pytest.mark.parametrize("close_quiet", [0.0, -1.0, QUIET + 1])
def test_bad_close_quiet_is_refused(close_quiet: float) -> None:
    with pytest.raises(ValueError, match="close_quiet"):
        Settler(quiet=QUIET, max_wait=600.0, close_quiet=close_quiet)


# Step: (seconds later, action). Writes set the fake mtime to the clock.
_ACTIONS = st.sampled_from(["write", "write_silently", "close", "open", "release", "attrib"])


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(0.0, 2.0), _ACTIONS), max_size=30))
def test_never_ready_while_held_or_within_the_window_after_a_write(steps) -> None:
    """Whatever the writers do: a fast-path Ready comes only when nobody holds the file and
    no write came within close_quiet; any Ready comes only after a quiet window."""
    quiet = 3.0
    h = CloseHarness(quiet=quiet, max_wait=1000.0)
    h.fs.create(PATH, 1)
    last_write = 0.0
    h.settler.touch(KEY, PATH)
    ready_seen = False

    def check_new_outcomes(start: int) -> None:
        nonlocal ready_seen
        for t, outcome in h.outcomes[start:]:
            if isinstance(outcome, Ready):
                ready_seen = True
                if outcome.on_close:
                    assert not h.writers.holders.get(PATH), "ready on close while a writer holds the file"
                    assert t - last_write >= CLOSE_QUIET - 1e-9
                else:
                    assert t - last_write >= quiet - 1e-9
                assert outcome.stat.st_size == h.fs.files[PATH].size

    for gap, action in steps:
        start = len(h.outcomes)
        h.run_until(h.clock.now + gap)
        check_new_outcomes(start)
        if ready_seen:
            return  # the upload's change check owns the file from here
        if action in ("write", "write_silently"):
            h.fs.append(PATH, 1)
            last_write = h.clock.now
            if action == "write":
                h.settler.touch(KEY, PATH)
        elif action == "close":
            h.settler.closed(KEY, PATH)
        elif action == "open":
            h.writers.holders[PATH] = h.writers.holders.get(PATH, 0) + 1
        elif action == "release" and h.writers.holders.get(PATH):
            h.writers.holders[PATH] -= 1
            h.settler.closed(KEY, PATH)
        elif action == "attrib":
            h.fs.rewrite_same_size(PATH)
            last_write = h.clock.now
            h.settler.touch(KEY, PATH)
    start = len(h.outcomes)
    h.run_until(h.clock.now + 1000.0)
    check_new_outcomes(start)
    assert ready_seen
