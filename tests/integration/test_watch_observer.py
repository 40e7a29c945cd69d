"""The Watcher against real folders: inotify and polling observers, real threads."""

from __future__ import annotations

import os
import queue
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

from syncd.watch import FileEvent, PathFilter, Watcher, WatchSpec

TIMEOUT = 5.0

# watchdog warns when a directory created together with its parent (mkdir -p) is added
# twice, once by the parent's walk and once by its own IN_CREATE; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")


class Events:
    """Collects FileEvents from the dispatcher threads; waits with bounded polling."""

    def __init__(self) -> None:
        self.queue: queue.Queue[FileEvent] = queue.Queue()
        self.seen: list[FileEvent] = []

    def __call__(self, event: FileEvent) -> None:
        self.queue.put(event)

    def wait_for(self, predicate: Callable[[FileEvent], bool], what: str) -> FileEvent:
        deadline = time.monotonic() + TIMEOUT
        for event in self.seen:
            if predicate(event):
                return event
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.queue.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(event)
            if predicate(event):
                return event
        pytest.fail(f"no {what} within {TIMEOUT}s; saw {self.seen}")

    def expect(
        self, kind: str, relpath: str, dest: str | None = None, *, watch: str = "drop"
    ) -> FileEvent:
        want = FileEvent(watch, kind, relpath, dest)  # type: ignore[arg-type]
        return self.wait_for(lambda e: e == want, repr(want))

    def drain(self) -> list[FileEvent]:
        while True:
            try:
                self.seen.append(self.queue.get_nowait())
            except queue.Empty:
                return self.seen


def spec(
    root: Path,
    *,
    name: str = "drop",
    poll: bool = False,
    recursive: bool = True,
    path_filter: PathFilter | None = None,
) -> WatchSpec:
    return WatchSpec(
        name=name,
        root=root,
        recursive=recursive,
        poll=poll,
        path_filter=path_filter or PathFilter(),
        poll_interval=0.1,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "drop"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def watching(root: Path) -> Iterator[Events]:
    events = Events()
    with Watcher([spec(root)], events):
        yield events


def test_created_and_written_file(root: Path, watching: Events) -> None:
    with open(root / "a.bin", "wb") as f:
        f.write(b"hello")
    watching.expect("changed", "a.bin")
    watching.expect("closed", "a.bin")


def test_moved_in_renamed_moved_out_deleted(root: Path, outside: Path, watching: Events) -> None:
    (outside / "in.mov").write_bytes(b"x")
    os.rename(outside / "in.mov", root / "in.mov")
    watching.expect("changed", "in.mov")

    os.rename(root / "in.mov", root / "renamed.mov")
    watching.expect("moved", "in.mov", "renamed.mov")

    os.rename(root / "renamed.mov", outside / "gone.mov")
    watching.expect("deleted", "renamed.mov")

    (root / "doomed.mov").write_bytes(b"x")
    watching.expect("closed", "doomed.mov")
    (root / "doomed.mov").unlink()
    watching.expect("deleted", "doomed.mov")


def test_partial_renamed_to_its_final_name(root: Path, watching: Events) -> None:
    with open(root / "clip.mov.part", "wb") as f:
        f.write(b"data")
    os.rename(root / "clip.mov.part", root / "clip.mov")
    watching.expect("closed", "clip.mov")  # renamed into place: the writer is done
    assert not [e for e in watching.drain() if e.relpath.endswith(".part")]

    os.rename(root / "clip.mov", root / "clip.mov.tmp")
    watching.expect("deleted", "clip.mov")


def test_new_subdirectory_with_files_asks_for_a_rescan(root: Path, watching: Events) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "f.mov").write_bytes(b"x")
    # f.mov may be written before watchdog watches sub/deeper: hence the rescan.
    watching.expect("rescan", "sub")
    # Once the new directories are watched, their events arrive like any other.
    watching.expect("rescan", "sub/deeper")
    (root / "sub" / "deeper" / "g.mov").write_bytes(b"x")
    watching.expect("closed", "sub/deeper/g.mov")


def test_directory_moved_in_and_out(root: Path, outside: Path, watching: Events) -> None:
    (outside / "batch").mkdir()
    (outside / "batch" / "1.mov").write_bytes(b"1")
    os.rename(outside / "batch", root / "batch")
    watching.expect("rescan", "batch")

    os.rename(root / "batch", root / "renamed")
    watching.expect("moved", "batch/1.mov", "renamed/1.mov")

    # inotify reports nothing about the files of a directory that leaves the tree
    os.rename(root / "renamed", outside / "away")
    watching.expect("rescan", "renamed")


@pytest.mark.parametrize("poll", [False, True])
def test_directory_renamed_from_and_to_a_pruned_name(root: Path, poll: bool) -> None:
    """A folder filled under a dot-name and then renamed is new to the watch, and back."""
    (root / ".incoming").mkdir()
    events = Events()
    with Watcher([spec(root, poll=poll)], events):
        (root / ".incoming" / "1.mov").write_bytes(b"1")
        os.rename(root / ".incoming", root / "batch")
        events.expect("rescan", "batch")
        # inotify follows the rename file by file: renamed into place, the writer is done
        events.expect("changed" if poll else "closed", "batch/1.mov")
        os.rename(root / "batch", root / ".trash")
        events.expect("deleted", "batch/1.mov")
    assert not [e for e in events.drain() if ".incoming" in e.relpath or ".trash" in e.relpath]


def test_ignored_and_pruned_paths_are_dropped(root: Path) -> None:
    events = Events()
    path_filter = PathFilter(("*.mov",), ignore_dirs=(Path("_done"),))
    (root / "_done").mkdir()
    (root / ".git").mkdir()
    with Watcher([spec(root, path_filter=path_filter)], events):
        (root / ".git" / "x.mov").write_bytes(b"x")
        (root / "_done" / "x.mov").write_bytes(b"x")
        (root / "notes.txt").write_bytes(b"x")
        (root / ".hidden.mov").write_bytes(b"x")
        (root / "_done" / "sub").mkdir()
        (root / "last.mov").write_bytes(b"x")
        events.expect("closed", "last.mov")
    assert {e.relpath for e in events.drain()} == {"last.mov"}


def test_not_recursive_ignores_subdirectories(root: Path) -> None:
    events = Events()
    (root / "sub").mkdir()
    with Watcher([spec(root, recursive=False)], events):
        (root / "sub" / "inner.mov").write_bytes(b"x")
        (root / "newdir").mkdir()
        (root / "top.mov").write_bytes(b"x")
        events.expect("closed", "top.mov")
    assert {e.relpath for e in events.drain()} == {"top.mov"}


def test_inotify_queue_overflow_asks_for_a_full_rescan(root: Path, tmp_path: Path) -> None:
    events = Events()
    other = tmp_path / "other"
    other.mkdir()
    polled = tmp_path / "polled"
    polled.mkdir()
    watcher = Watcher(
        [spec(root), spec(other, name="other"), spec(polled, name="polled", poll=True)], events
    )
    with watcher:
        # What the kernel queues when it drops events: wd -1, IN_Q_OVERFLOW. Handed to the
        # same entry point the reader thread uses, on the observer's own inotify instance.
        overflow = InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b"")
        assert watcher._inotify is not None
        watcher._inotify.inotify_fd.handle_event(overflow)
        events.expect("rescan", "")
        events.expect("rescan", "", watch="other")
        # still watching afterwards
        (root / "after.mov").write_bytes(b"x")
        events.expect("closed", "after.mov")
    assert FileEvent("polled", "rescan", "") not in events.drain()


def test_a_real_inotify_overflow_asks_for_a_full_rescan(root: Path) -> None:
    """Stall the reader until the kernel queue (fs.inotify.max_queued_events) overflows."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 1_000_000:
        pytest.skip(f"max_queued_events is {limit}: too many events for a quick test")
    a, b = root / "a", root / "b"
    a.write_bytes(b"")
    b.write_bytes(b"")
    events = Events()
    # Only *.mov is accepted, so of all the events below only the rescan reaches the queue.
    watcher = Watcher([spec(root, recursive=False, path_filter=PathFilter(("*.mov",)))], events)
    with watcher:
        assert watcher._inotify is not None
        [emitter] = watcher._inotify.emitters
        group = emitter._inotify  # type: ignore[attr-defined]
        # The reader thread hands each event to the watch group under this lock: holding it
        # stops the reader, so the kernel queue fills up.
        with group._lock:
            # One IN_ATTRIB per chmod; alternating names keeps the kernel from merging them.
            # The reader may already hold one buffer's worth (about 2,500) when it blocks.
            for _ in range(limit // 2 + 4096):
                os.chmod(a, 0o644)
                os.chmod(b, 0o644)
        events.expect("rescan", "")


def test_polling_mode(root: Path, outside: Path) -> None:
    events = Events()
    with Watcher([spec(root, poll=True)], events):
        (root / "a.mov").write_bytes(b"x")
        events.expect("changed", "a.mov")
        os.rename(root / "a.mov", root / "b.mov")
        events.expect("moved", "a.mov", "b.mov")
        (outside / "c.mov").write_bytes(b"x")
        shutil.move(outside / "c.mov", root / "c.mov")
        events.expect("changed", "c.mov")
        (root / "sub").mkdir()
        events.expect("rescan", "sub")
        (root / "b.mov").unlink()
        events.expect("deleted", "b.mov")
        with open(root / "c.mov", "ab") as f:
            f.write(b"more")
        events.expect("changed", "c.mov")


def test_polling_does_not_follow_symlinked_directories(root: Path, outside: Path) -> None:
    events = Events()
    (outside / "secret.mov").write_bytes(b"x")
    (root / "link").symlink_to(outside)
    with Watcher([spec(root, poll=True)], events):
        (outside / "new.mov").write_bytes(b"x")
        (root / "real.mov").write_bytes(b"x")
        events.expect("changed", "real.mov")
        # A later poll's event: every event of the poll that saw real.mov (where
        # link/new.mov would be) has been delivered by now.
        (root / "sentinel.mov").write_bytes(b"x")
        events.expect("changed", "sentinel.mov")
    assert not [e for e in events.drain() if e.relpath.startswith("link/")]


def test_mixed_watches_are_told_apart(root: Path, tmp_path: Path) -> None:
    events = Events()
    second = tmp_path / "second"
    second.mkdir()
    with Watcher([spec(root), spec(second, name="second", poll=True)], events):
        (root / "a.mov").write_bytes(b"x")
        (second / "b.mov").write_bytes(b"x")
        events.expect("closed", "a.mov")
        events.expect("changed", "b.mov", watch="second")


def test_symlinked_root_is_watched_through_the_link(root: Path, tmp_path: Path) -> None:
    link = tmp_path / "link-to-drop"
    link.symlink_to(root)
    events = Events()
    with Watcher([spec(link)], events):
        (root / "a.mov").write_bytes(b"x")
        events.expect("closed", "a.mov")


@pytest.mark.parametrize("poll", [False, True])
def test_deleting_the_root_asks_for_a_rescan_of_it(root: Path, poll: bool) -> None:
    events = Events()
    with Watcher([spec(root, poll=poll)], events):
        root.rmdir()
        events.expect("rescan", "")


def test_a_missing_root_fails_start_naming_the_watch(tmp_path: Path, root: Path) -> None:
    for poll in (False, True):
        watcher = Watcher([spec(root), spec(tmp_path / "missing", name="nas", poll=poll)], Events())
        with pytest.raises(OSError, match=r"cannot watch 'nas' at .*missing"):
            watcher.start()
        watcher.stop()  # the autouse fixture checks that nothing was left running


def test_a_failing_callback_does_not_stop_the_watch(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events = Events()
    calls = 0

    def flaky(event: FileEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        events(event)

    with Watcher([spec(root)], flaky):
        (root / "first.mov").write_bytes(b"x")
        (root / "second.mov").write_bytes(b"x")
        events.expect("closed", "second.mov")
    assert "boom" in caplog.text


def test_start_twice_is_refused_and_stop_is_idempotent(root: Path) -> None:
    watcher = Watcher([spec(root)], Events())
    watcher.start()
    with pytest.raises(RuntimeError):
        watcher.start()
    watcher.stop()
    watcher.stop()


def test_duplicate_names_are_refused(root: Path) -> None:
    with pytest.raises(ValueError, match="drop"):
        Watcher([spec(root), spec(root)], Events())


def test_stop_releases_file_descriptors(root: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with Watcher([spec(root), spec(root, name="p", poll=True)], Events()):
            pass
    assert len(os.listdir("/proc/self/fd")) == before
