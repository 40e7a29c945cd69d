"""``syncd run``: the daemon's lifecycle and its one main loop.

Threads: watchdog's observers (filter and enqueue only), the upload workers, and the
main loop, which alone applies events, settles files, scans, dispatches work, talks to
systemd and reloads. Signal handlers only write the signal number into a self-pipe.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import selectors
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from syncd.allocator import RELEASE_EVERY, grow_interned_strings, release_free_memory, tune_for_uploads
from syncd.bandwidth import BandwidthLimiter, Limits, timetables_of
from syncd.config import SMALL_FILE_MAX, Config, ConfigError, load_config
from syncd.controls import Paused
from syncd.dispatch import Dispatcher, WatchQueue
from syncd.intake import Intake
from syncd.journal import MOVE_ASIDE, DueFile, Journal, JournalError
from syncd.live import changed_keys, needs_restart
from syncd.notify import WatchdogPinger
from syncd.pipeline import FileProcessor, Outcome
from syncd.sources import SourcePlanner
from syncd.states import FileState
from syncd.upload.base import NO_BATCH, Backend, BatchLimit
from syncd.upload.engine import UploadEngine
from syncd.upload.registry import build_backends
from syncd.watch import (
    FileEvent,
    PathFilter,
    Watcher,
    WatchSpec,
    inotify_watch_warning,
)

log = logging.getLogger("syncd")

WAKE = b"\0"
IDLE_TICK = 1.0
SHUTDOWN_GRACE = 8.0
STATUS_INTERVAL = 1.0
DUE_PER_WORKER = 4
"""rows of a watch's due list looked at per worker, so large files waiting for a large
file's place do not hide the small files behind them"""


class StartError(Exception):
    """The daemon cannot start; ``str()`` is the one-line reason."""


class Waker:
    """A self-pipe: signal handlers and other threads write one byte; the loop selects on it.

    Threads write only while no wake is pending (``nudge``): a burst of events or finished
    files costs one write and one loop step, not one each. The loop calls ``armed()`` after
    draining the pipe and before it takes what the threads queued, so whatever they queue
    later wakes it again."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pending = False

    def wake(self, byte: bytes = WAKE) -> None:
        try:
            os.write(self.wfd, byte)
        except BlockingIOError:
            pass  # the pipe is full: the loop is already due to wake

    def nudge(self) -> None:
        """Wake the loop from another thread, unless a wake is already on its way."""
        if not self._pending:
            self._pending = True
            self.wake()

    def armed(self) -> None:
        self._pending = False

    def drain(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = os.read(self.rfd, 4096)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


class RateMeter:
    """Bytes acknowledged by servers over the last ``window`` seconds (thread-safe)."""

    def __init__(self, window: float = 10.0, *, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self.clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        now = self.clock()
        with self._lock:
            self._events.append((now, n))
            self._forget_before(now - self.window)  # also when nobody asks (no systemd status line)

    def per_second(self) -> float:
        now = self.clock()
        with self._lock:
            self._forget_before(now - self.window)
            return sum(n for _, n in self._events) / self.window

    def _forget_before(self, when: float) -> None:
        while self._events and self._events[0][0] < when:
            self._events.popleft()


def lock_journal(journal: Path) -> int:
    """One daemon per journal: hold an exclusive lock on ``<journal>.lock`` while running.

    Two daemons on one journal would upload the same files at once and undo each other's
    states. ``syncd upload``, ``status`` and ``retry`` do not take it."""
    path = journal.with_name(journal.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise JournalError(f"{journal}: another syncd run (pid {holder}) is using this journal") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def watch_specs(config: Config) -> list[WatchSpec]:
    own_dirs = [config.staging_dir, config.journal.parent]
    for watch in config.watches:
        own_dirs += [d for d in (watch.done_dir, watch.failed_dir) if d is not None]
    specs = []
    for watch in config.watches:
        root = watch.path.resolve()
        ignore = tuple(d.resolve() for d in own_dirs if root in d.resolve().parents)
        specs.append(WatchSpec(
            name=watch.name, root=root, recursive=watch.recursive, poll=watch.poll,
            path_filter=PathFilter(tuple(watch.include), tuple(watch.exclude), ignore_dirs=ignore)))
    return specs


@dataclass
class _Workers:
    """A fixed set of worker threads fed from a queue; daemon threads so that a request
    stuck past the shutdown grace cannot keep the process alive. A worker takes one file,
    or a batch of small files of one watch."""

    process: Callable[[int], Outcome]
    process_batch: Callable[[list[int]], list[tuple[int, Outcome | Exception]]]
    done: Callable[[int, Outcome | BaseException], None]
    size: int
    todo: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.size):
            thread = threading.Thread(target=self._run, name=f"syncd-upload-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def submit(self, file_id: int) -> None:
        self.todo.put(file_id)

    def submit_batch(self, file_ids: tuple[int, ...]) -> None:
        self.todo.put(file_ids)

    def _run(self) -> None:
        while True:
            work = self.todo.get()
            if work is None:
                return
            if isinstance(work, tuple):
                try:
                    results: list[tuple[int, Outcome | BaseException]] = list(self.process_batch(list(work)))
                except BaseException as exc:  # reported to the loop, which logs it
                    results = [(file_id, exc) for file_id in work]
                for file_id, result in results:
                    self.done(file_id, result)
                continue
            try:
                result: Outcome | BaseException = self.process(work)
            except BaseException as exc:  # reported to the loop, which logs it
                result = exc
            self.done(work, result)

    def stop(self, *, timeout: float) -> bool:
        for _ in self.threads:
            self.todo.put(None)
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)


class Daemon:
    def __init__(self, config: Config, *, config_path: Path | None = None,
                 notifier=None, metrics=None, clock: Callable[[], float] = time.time):
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.stop_event = threading.Event()
        self.waker = Waker()
        self.events: queue.SimpleQueue[FileEvent] = queue.SimpleQueue()
        self.finished: queue.SimpleQueue[tuple[int, Outcome | BaseException]] = queue.SimpleQueue()
        self.running: set[int] = set()
        self._group_of: dict[int, int] = {}
        """file id -> the id of the first file of the worker's batch it went in"""
        self._groups: dict[int, int] = {}
        """batches (and single files) in the workers' hands -> their files not yet finished"""
        self._large_running: set[int] = set()
        """the files in ``running`` larger than SMALL_FILE_MAX (at most concurrency.uploads)"""
        self._due_stale = True
        """something may have made files due: the next dispatch asks the journal"""
        self._slots_freed = False
        """a worker let go of a file: the next dispatch serves the dispatcher's backlog"""
        self._due_refresh_at = 0.0
        self.rate = RateMeter()
        self.limiter = BandwidthLimiter()  # one for the daemon's life: a reload re-times it in place
        self.paused = Paused()
        self._controls_seen: int | None = None  # the journal's data_version when last read
        self._running_watch: dict[int, str] = {}  # file id -> its watch, for pauses of a watch
        self.notifier = notifier
        # pinged from the loop that does the work, so a hung loop stops the pings
        self.pinger = WatchdogPinger(notifier) if notifier is not None else None
        self.metrics = metrics
        self.journal: Journal | None = None
        self._lock_fd: int | None = None
        self.receiver = None
        self.watcher: Watcher | None = None
        self.intake: Intake | None = None
        self.specs: dict[str, WatchSpec] = {}
        self.backends: dict[str, Backend] = {}
        self.engine: UploadEngine | None = None
        self.processor: FileProcessor | None = None
        self.workers: _Workers | None = None
        self.dispatcher = Dispatcher([])
        self._next_rescan = 0.0
        self._next_release = time.monotonic() + RELEASE_EVERY
        self._stopping = False
        self._reload_requested = False
        self.on_reload: Callable[[Config, Config], None] | None = None  # (old, new) after a reload

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Everything before the loop; raises JournalError / OSError with a clear message."""
        tune_for_uploads()  # before any thread starts
        journal = self.config.journal
        # a lock file outlives its journal: without one, no syncd ever ran on this journal
        first_run = not any(journal.with_name(journal.name + suffix).exists() for suffix in (".lock", "-wal"))
        self._lock_fd = lock_journal(self.config.journal)
        self.journal = Journal(self.config.journal)
        if self.journal.created and first_run:
            log.info("%s: starting a new journal; every file in the watches is uploaded", self.config.journal)
        elif self.journal.created:  # the folder has been used: a journal may have been lost
            log.warning("%s: no journal yet: starting a new journal; every file in the watches is uploaded "
                        "(again, if an earlier journal was lost)", self.config.journal)
        problem = self.journal.check_integrity()
        if problem:
            raise JournalError(f"{self.config.journal}: journal is corrupt ({problem}); {MOVE_ASIDE}")
        recovered = self.journal.recover_interrupted(watches=[w.name for w in self.config.watches])
        if recovered:
            log.info("resuming %d interrupted upload(s) from the journal", recovered)
        if self.config.receiver is not None:
            self._start_receiver()
        self._apply_config(self.config)
        grow_interned_strings()
        self.waker_selector = selectors.DefaultSelector()
        self.waker_selector.register(self.waker.rfd, selectors.EVENT_READ)

    def _start_receiver(self) -> None:
        from syncd.server import EmbeddedReceiver, ReceiverSettings

        rc = self.config.receiver
        settings = ReceiverSettings(
            root=rc.root, host=rc.listen[0], port=rc.listen[1], token=rc.resolve_token(),
            max_size=rc.max_size, min_free=rc.min_free, expire=rc.expire, base_path=rc.base_path,
            on_conflict=rc.on_conflict, trust_forwarded=rc.trust_forwarded)
        from syncd.server import ReceiverStartError

        self.receiver = EmbeddedReceiver(settings)
        try:
            self.receiver.start()
        except ReceiverStartError as exc:
            self.receiver = None
            raise StartError(f"receiver: {exc}") from None
        log.info("receiver listening on %s, storing into %s", self.receiver.url, rc.root)

    def _apply_config(self, config: Config) -> None:
        """Build the watch, settle and upload machinery for ``config`` (also on reload)."""
        old_backends = self.backends
        self.backends = build_backends(config.targets)
        policies = {name: t.retry for name, t in config.targets.items()}
        self.limiter.configure(**timetables_of(config))
        self.engine = UploadEngine(self.journal, self.backends, policies, stop=self.stop_event,
                                   on_retry=self._on_retry, on_part=self._on_part, limiter=self.limiter,
                                   hold=self._held)
        planner = SourcePlanner(config.staging_dir, transcodes=config.concurrency.transcodes,
                                nice=config.transcode_nice, stop=self.stop_event,
                                on_transcoded=self._on_transcoded)
        self.processor = FileProcessor(self.journal, self.engine, config, stop=self.stop_event,
                                       planner=planner, clock=self.clock, on_done=self._on_done)
        if self.watcher is not None:
            self.watcher.stop()
        specs = watch_specs(config)
        self.specs = {spec.name: spec for spec in specs}
        # the inotify limit is per user: count every inotify-watched tree together
        inotify_roots = [spec.root for spec in specs if not spec.poll and spec.recursive]
        if inotify_roots and (warning := inotify_watch_warning(inotify_roots, recursive=True)):
            log.warning("%s", warning)
        self.watcher = Watcher(specs, self._on_event)
        self.watcher.start()
        self.dispatcher = Dispatcher([WatchQueue(w.name, w.priority, w.order) for w in config.watches])
        if self.workers is None or self.workers.size != config.concurrency.workers:
            if self.workers is not None:
                self.workers.stop(timeout=0)  # idle threads exit; busy ones finish their file first
            self.workers = _Workers(self._process, self._process_batch, self._finished, config.concurrency.workers)
            self.workers.start()
        self._due_stale = True
        self.config = config
        self.intake = Intake(self.journal, config, self.specs, self.processor, self.running,
                             on_settled=self._on_settled, clock=self.clock)
        self._next_rescan = time.monotonic() + config.rescan_interval
        for backend in old_backends.values():
            backend.close()

    def run(self) -> int:
        """The main loop, until SIGTERM/SIGINT. Returns the exit code."""
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            self._notify("ready")
            while not self._stopping:
                self._wait(self._timeout())
                self._step()
                if self.pinger is not None:
                    self.pinger.tick(time.monotonic())
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.shutdown()

    def shutdown(self) -> None:
        """Stop taking work, let in-flight parts stop, keep every session resumable."""
        self._notify("stopping")
        self.stop_event.set()
        if self.watcher is not None:
            self.watcher.stop()
        if self.workers is not None and not self.workers.stop(timeout=SHUTDOWN_GRACE):
            log.warning("an upload did not stop within %.0fs; exiting anyway (it resumes at the next start)",
                        SHUTDOWN_GRACE)
        self._drain_finished(stopping=True)
        for backend in self.backends.values():
            backend.close()
        if self.receiver is not None:
            self.receiver.stop()
        if self.journal is not None:
            self.journal.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
        self.waker.close()
        log.info("stopped")

    # --- the loop --------------------------------------------------------------------------

    def _on_signal(self, signum, _frame) -> None:
        self.waker.wake(bytes([signum]))

    def _on_event(self, event: FileEvent) -> None:
        self.events.put(event)
        self.waker.nudge()

    def _finished(self, file_id: int, result: Outcome | BaseException) -> None:
        self.finished.put((file_id, result))
        self.waker.nudge()

    def _timeout(self) -> float:
        timeout = IDLE_TICK
        if (deadline := self.intake.next_deadline()) is not None:
            timeout = min(timeout, max(0.0, deadline - time.monotonic()))
        if self.pinger is not None and (due := self.pinger.due_in(time.monotonic())) is not None:
            timeout = min(timeout, due)
        if self.intake.pending_scans:
            timeout = 0.0
        return max(0.0, timeout)

    def _wait(self, timeout: float) -> None:
        woken = self.waker.drain() if self.waker_selector.select(timeout) else b""
        # after the drain (a nudge's byte drained here must not leave the waker pending) and
        # before the queues are read (in _step): whatever is queued from now on wakes us again
        self.waker.armed()
        for byte in woken:
            if byte in (signal.SIGTERM, signal.SIGINT):
                log.info("received %s; stopping", signal.Signals(byte).name)
                self._stopping = True
            elif byte == signal.SIGHUP:
                self._reload_requested = True

    def _step(self) -> None:
        if self._stopping:
            return
        if self._reload_requested:
            self._reload_requested = False
            self.reload()
        events = self._take_events()
        with self.journal.batch():  # a burst of new and settled files: a few transactions, not one each
            if self.intake.step(events) or events:
                self._due_stale = True
        self._drain_finished()
        if time.monotonic() >= self._next_rescan:
            self._due_stale = True
            self.intake.rescan_all()
            self._next_rescan = time.monotonic() + self.config.rescan_interval
        self._dispatch()
        self._notify_status()
        if time.monotonic() >= self._next_release:
            release_free_memory()
            self._next_release = time.monotonic() + RELEASE_EVERY

    def _take_events(self) -> list[FileEvent]:
        events = []
        while True:
            try:
                events.append(self.events.get_nowait())
            except queue.Empty:
                return events

    def _drain_finished(self, *, stopping: bool = False) -> bool:
        """True if a worker finished a file."""
        drained = False
        while True:
            try:
                file_id, result = self.finished.get_nowait()
            except queue.Empty:
                return drained
            drained = True
            self._slots_freed = True
            self.running.discard(file_id)
            group = self._group_of.pop(file_id, file_id)
            if self._groups.get(group, 0) > 1:
                self._groups[group] -= 1
            else:
                self._groups.pop(group, None)  # its worker is free
            self._large_running.discard(file_id)
            self._running_watch.pop(file_id, None)
            if isinstance(result, JournalError) and not stopping:
                raise result  # the daemon stops, as when the loop itself cannot write the journal
            if isinstance(result, BaseException):
                log.error("file %d: worker error: %r", file_id, result)
                self._due_stale = True
                continue
            if result.state not in (FileState.DONE, FileState.FAILED, FileState.GONE):
                self._due_stale = True  # it may be due again (interrupted, waiting, changed)
            if not stopping:
                self.intake.worker_finished(file_id, result)

    def _dispatch(self) -> None:
        """Hand due files to free workers, in priority order: at most concurrency.uploads
        large files, and up to concurrency.small_uploads in all while the others are small.
        Small files of a watch whose target takes batches go to a worker together (as many as
        one request carries, spread so that no worker idles while another has several)."""
        if self._read_controls():
            self._due_stale = True
        limits = self.config.concurrency
        free = limits.workers - len(self._groups)
        if free <= 0:
            return
        now = time.monotonic()
        refresh = self._due_stale or now >= self._due_refresh_at
        if not refresh and not self._slots_freed:
            return  # nothing happened since the last look that could have made a file due
        self._slots_freed = False
        if refresh:
            self._due_stale = False
            self._due_refresh_at = now + IDLE_TICK  # waiting files come due by the clock; `syncd retry`
        large_free = limits.uploads - len(self._large_running)
        # One file per request in a watch that transcodes (its videos would wait for each
        # other in one worker); the engine says none under a bandwidth limit.
        batching = {w.name: self.engine.batch_limit(w.target)
                    if self.engine is not None and w.transcode is None
                    else NO_BATCH for w in self.config.watches}
        groups = WorkerGroups(free, batching)

        def admit(row: DueFile) -> bool:
            nonlocal large_free
            large = row.size > SMALL_FILE_MAX
            if large and large_free <= 0:
                return False  # it waits while concurrency.uploads large files run
            if not groups.add(row):
                return False  # every free worker has its file, or its batch is full
            if large:
                large_free -= 1
            return True

        held = [w.name for w in self.config.watches if self._blocked(watch=w.name, target=w.target)]
        most = max((limit.files for limit in batching.values()), default=1)
        self.dispatcher.pick(self.journal, free=free * most, running=self.running, held=held, admit=admit,
                             lookahead=limits.workers * DUE_PER_WORKER, refresh=refresh)
        for group in groups.spread():
            for row in group:
                self.running.add(row.id)
                if row.size > SMALL_FILE_MAX:
                    self._large_running.add(row.id)
                self._running_watch[row.id] = row.watch
                self._group_of[row.id] = group[0].id
                log.debug("%s:%s: handed to a worker (%s)", row.watch, row.relpath, row.state)
            self._groups[group[0].id] = len(group)
            if len(group) == 1:
                self.workers.submit(group[0].id)
            else:
                self.workers.submit_batch(tuple(row.id for row in group))

    def _read_controls(self) -> bool:
        """``syncd pause`` / ``resume`` (and ``syncd retry``) write the journal from another
        process; its data_version tells when to read the controls again. True if it changed."""
        version = self.journal.data_version()
        if version == self._controls_seen:
            return False
        self._controls_seen = version
        paused = Paused.read(self.journal)
        if paused != self.paused:
            log.info("%s", paused.describe() or "resumed: nothing is paused")
            self.paused = paused
        return True

    def _blocked(self, *, watch: str | None, target: str) -> str | None:
        """Why nothing of ``watch`` / ``target`` may start now: a pause, or a bandwidth limit of 0
        (a part already sending when the limit drops to 0 waits inside the limiter instead)."""
        if self.paused.holds(watch=watch, target=target):
            return "paused (syncd pause); it goes on from the server's offset after syncd resume"
        limits = self.limiter.limits()
        if limits.overall == 0 or limits.targets.get(target) == 0:
            return "bandwidth limit is 0 now; it goes on from the server's offset when the limit allows"
        return None

    def _held(self, job) -> str | None:
        """For the engine, on a worker thread: why ``job`` must stop before its next request."""
        return self._blocked(watch=self._running_watch.get(job.file_id), target=job.target)

    def _process(self, file_id: int) -> Outcome:
        return self.processor.process(file_id)

    def _process_batch(self, file_ids: list[int]) -> list[tuple[int, Outcome | Exception]]:
        return self.processor.process_batch(file_ids)

    # --- reload, metrics, systemd ----------------------------------------------------------

    def reload(self) -> bool:
        if self.config_path is None:
            log.warning("SIGHUP: no config file to reload (running on the built-in config)")
            return False
        self._notify("reloading")
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            for line in exc.lines:
                log.error("reload refused: %s", line)
            self._notify("ready")
            return False
        if new.journal.resolve() != self.config.journal.resolve():
            log.error("reload refused: journal: the journal cannot move while running; restart syncd")
            self._notify("ready")
            return False
        old, changed = self.config, changed_keys(self.config, new)
        if later := needs_restart(changed):
            log.warning("reload: %s: applied only at the next restart", ", ".join(later))
        self._apply_config(new)
        if self.on_reload is not None:
            self.on_reload(old, new)
        log.info("reloaded %s (%s)", self.config_path, f"changed: {', '.join(changed)}" if changed else "no changes")
        self._notify("ready")
        return True

    def _on_retry(self, target: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.retry(reason)

    def _on_part(self, size: int) -> None:
        self.rate.add(size)
        if self.metrics is not None:
            self.metrics.bytes_uploaded(size)

    def _on_settled(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_settle_seconds(seconds)

    def _on_transcoded(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_transcode_seconds(seconds)

    def _on_done(self, outcome: Outcome) -> None:
        if self.metrics is not None:
            self.metrics.files_uploaded(1)
            self.metrics.observe_upload_seconds(outcome.seconds)
            self.metrics.last_success(self.clock())

    def journal_counts(self) -> dict[str, int]:
        return self.journal.counts() if self.journal is not None else {}

    def queue_depth(self) -> int:
        counts = self.journal_counts()
        return counts.get("ready", 0) + counts.get("waiting", 0)

    def oldest_pending_age(self) -> float | None:
        since = self.journal.oldest_pending_since() if self.journal is not None else None
        return None if since is None else max(0.0, self.clock() - since)

    # what the metrics endpoint reads of limits and pauses (syncd.metrics.OperatorControls)

    def limits(self) -> Limits:
        return self.limiter.limits()

    def pauses(self) -> Paused:
        return self.paused

    def names(self) -> tuple[list[str], list[str]]:
        config = self.config
        return list(config.targets), [w.name for w in config.watches]

    def status_line(self) -> str:
        counts = self.journal.counts()
        return (f"uploading {counts['uploading'] + counts['transcoding']}, queued {counts['ready']}, "
                f"settling {counts['settling'] + counts['growing']}, waiting {counts['waiting']}, "
                f"failed {counts['failed']}, done {counts['done']}, "
                f"{self.rate.per_second() / 1024**2:.1f} MiB/s"
                + "".join(f", {part}" for part in (self.limiter.limits().describe(), self.paused.describe()) if part))

    def _notify(self, what: str) -> None:
        if self.notifier is not None:
            getattr(self.notifier, what)()

    _last_status = ""
    _next_status = 0.0

    def _notify_status(self) -> None:
        """At most once a second: the line costs a count over the journal."""
        if self.notifier is None or not self.notifier.enabled:
            return
        now = time.monotonic()
        if now < self._next_status:
            return
        self._next_status = now + STATUS_INTERVAL
        line = self.status_line()
        if line != self._last_status:
            self.notifier.status(line)
            self._last_status = line


class WorkerGroups:
    """What free workers take, built as the dispatcher admits rows: a small file that its
    watch's target takes in a batch joins that watch's last batch until it is full; any
    other row opens a group of its own, while a worker is left for it."""

    def __init__(self, workers: int, batching: dict[str, BatchLimit]) -> None:
        self.workers = workers
        self.batching = batching
        self.groups: list[list[DueFile]] = []
        self._last: dict[str, list[DueFile]] = {}
        """per watch: its batch still open"""

    def add(self, row: DueFile) -> bool:
        """Whether ``row`` found a place."""
        limit = self.batching.get(row.watch, NO_BATCH)
        batchable = limit.takes(row.size)
        group = self._last.get(row.watch)
        if batchable and group is not None and len(group) < limit.files:
            group.append(row)
            return True
        if len(self.groups) >= self.workers:
            return False
        self.groups.append([row])
        if batchable:
            self._last[row.watch] = self.groups[-1]
        return True

    def spread(self) -> list[list[DueFile]]:
        """The groups, the largest batch halved while a free worker would otherwise idle."""
        groups = self.groups
        while len(groups) < self.workers:
            biggest = max(groups, key=len, default=None)
            if biggest is None or len(biggest) < 2:
                break
            half = len(biggest) // 2
            groups.append(biggest[half:])
            del biggest[half:]
        return groups


def describe_config(config: Config) -> str:
    watches = ", ".join(f"{w.name}={w.path}" for w in config.watches)
    targets = ", ".join(f"{n}={t.describe()}" for n, t in config.targets.items())
    return f"watching {watches}; uploading to {targets}; journal {config.journal}"
