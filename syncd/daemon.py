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

from syncd.config import Config, ConfigError, load_config
from syncd.dispatch import Dispatcher, WatchQueue
from syncd.journal import ACTIVE, AFTER_PENDING, MOVE_ASIDE, Fingerprint, Journal, JournalError
from syncd.notify import WatchdogPinger
from syncd.pipeline import FileProcessor, Outcome
from syncd.sources import SourcePlanner
from syncd.units import format_size
from syncd.upload.chunked import ChunkedBackend
from syncd.upload.engine import UploadEngine
from syncd.watch import (
    FileEvent,
    Growing,
    PathFilter,
    Ready,
    Settler,
    Vanished,
    Watcher,
    WatchSpec,
    inotify_watch_warning,
    scan_tree,
)

log = logging.getLogger("syncd")

WAKE = b"\0"
IDLE_TICK = 1.0
SHUTDOWN_GRACE = 8.0
STATUS_INTERVAL = 1.0


class StartError(Exception):
    """The daemon cannot start; ``str()`` is the one-line reason."""


class Waker:
    """A self-pipe: signal handlers and other threads write one byte; the loop selects on it."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self, byte: bytes = WAKE) -> None:
        try:
            os.write(self.wfd, byte)
        except BlockingIOError:
            pass  # the pipe is full: the loop is already due to wake

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
        with self._lock:
            self._events.append((self.clock(), n))

    def per_second(self) -> float:
        now = self.clock()
        with self._lock:
            while self._events and self._events[0][0] < now - self.window:
                self._events.popleft()
            return sum(n for _, n in self._events) / self.window


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


def build_backends(config: Config) -> dict[str, ChunkedBackend]:
    backends = {}
    for name, target in config.targets.items():
        verify: bool | str = str(target.ca_bundle) if target.ca_bundle else target.verify_tls
        backends[name] = ChunkedBackend(
            name, url=target.url, token=target.resolve_token(), part_size=target.part_size,
            connect_timeout=target.timeout.connect, read_timeout=target.timeout.read, verify=verify)
    return backends


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
    stuck past the shutdown grace cannot keep the process alive."""

    process: Callable[[int], Outcome]
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

    def _run(self) -> None:
        while True:
            file_id = self.todo.get()
            if file_id is None:
                return
            try:
                result: Outcome | BaseException = self.process(file_id)
            except BaseException as exc:  # reported to the loop, which logs it
                result = exc
            self.done(file_id, result)

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
        self.rate = RateMeter()
        self.notifier = notifier
        # pinged from the loop that does the work, so a hung loop stops the pings
        self.pinger = WatchdogPinger(notifier) if notifier is not None else None
        self.metrics = metrics
        self.journal: Journal | None = None
        self._lock_fd: int | None = None
        self.receiver = None
        self.watcher: Watcher | None = None
        self.settlers: dict[str, Settler] = {}
        self.specs: dict[str, WatchSpec] = {}
        self.backends: dict[str, ChunkedBackend] = {}
        self.engine: UploadEngine | None = None
        self.processor: FileProcessor | None = None
        self.workers: _Workers | None = None
        self.dispatcher = Dispatcher([])
        self._next_rescan = 0.0
        self._pending_scans: list[tuple[str, str, bool]] = []
        self._stopping = False
        self._reload_requested = False

    # --- lifecycle -----------------------------------------------------------------------

    def open(self) -> None:
        """Everything before the loop; raises JournalError / OSError with a clear message."""
        self._lock_fd = lock_journal(self.config.journal)
        self.journal = Journal(self.config.journal)
        if self.journal.created:
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
        self.backends = build_backends(config)
        policies = {name: t.retry for name, t in config.targets.items()}
        self.engine = UploadEngine(self.journal, self.backends, policies, stop=self.stop_event,
                                   on_retry=self._on_retry, on_part=self._on_part)
        planner = SourcePlanner(config.staging_dir, transcodes=config.concurrency.transcodes,
                                nice=config.transcode_nice, stop=self.stop_event,
                                on_transcoded=self._on_transcoded)
        self.processor = FileProcessor(self.journal, self.engine, config, stop=self.stop_event,
                                       planner=planner, clock=self.clock, on_done=self._on_done)
        # Settling starts over on reload: the full scan below re-tracks every settling file.
        self.settlers = {w.name: Settler(quiet=w.settle.quiet, max_wait=w.settle.max_wait,
                                         close_quiet=w.settle.close_quiet if w.settle.on_close else None)
                         for w in config.watches}
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
        if self.workers is None or self.workers.size != config.concurrency.uploads:
            if self.workers is not None:
                self.workers.stop(timeout=0)  # idle threads exit; busy ones finish their file first
            self.workers = _Workers(self._process, self._finished, config.concurrency.uploads)
            self.workers.start()
        self.config = config
        self._pending_scans = [(w.name, "", True) for w in config.watches]
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
        self.waker.wake()

    def _finished(self, file_id: int, result: Outcome | BaseException) -> None:
        self.finished.put((file_id, result))
        self.waker.wake()

    def _timeout(self) -> float:
        deadlines = [s.next_deadline() for s in self.settlers.values()]
        deadlines = [d for d in deadlines if d is not None]
        timeout = IDLE_TICK
        if deadlines:
            timeout = min(timeout, max(0.0, min(deadlines) - time.monotonic()))
        if self.pinger is not None and (due := self.pinger.due_in(time.monotonic())) is not None:
            timeout = min(timeout, due)
        if self._pending_scans:
            timeout = 0.0
        return max(0.0, timeout)

    def _wait(self, timeout: float) -> None:
        if self.waker_selector.select(timeout):
            for byte in self.waker.drain():
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
        while self._pending_scans:
            self._scan(*self._pending_scans.pop(0))
        self._apply_events()
        for name, settler in self.settlers.items():
            for outcome in settler.poll():
                self._apply_settled(name, outcome)
        self._drain_finished()
        if time.monotonic() >= self._next_rescan:
            self._pending_scans = [(w.name, "", True) for w in self.config.watches]
            self._next_rescan = time.monotonic() + self.config.rescan_interval
        self._dispatch()
        self._notify_status()

    def _apply_events(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            try:
                self._apply_event(event)
            except JournalError:
                raise
            except OSError as exc:
                log.warning("%s:%s: %s", event.watch, event.relpath, exc)

    def _apply_event(self, event: FileEvent) -> None:
        if event.watch not in self.settlers:
            return
        if event.kind in ("changed", "closed"):
            self._seen(event.watch, event.relpath, closed=event.kind == "closed")
        elif event.kind == "deleted":
            self.settlers[event.watch].forget(event.relpath)
            self.journal.mark_gone(event.watch, event.relpath, only_from=("settling", "growing", "ready", "waiting"))
        elif event.kind == "moved" and event.dest_relpath is not None:
            self.settlers[event.watch].forget(event.relpath)
            row = self.journal.rename(event.watch, event.relpath, event.dest_relpath)
            if row is None or row.state in ("gone", "settling", "growing"):
                self._seen(event.watch, event.dest_relpath)
        elif event.kind == "rescan":
            scan = (event.watch, event.relpath, event.relpath == "")
            if scan not in self._pending_scans and (event.watch, "", True) not in self._pending_scans:
                self._pending_scans.append(scan)

    def _seen(self, watch: str, relpath: str, st: os.stat_result | None = None, *, closed: bool = False) -> None:
        """A file exists and may be new or changed: journal it and let it settle."""
        row = self.journal.find_file(watch, relpath)
        if row is not None and row.state in ACTIVE:
            return  # its worker re-checks the file before completing
        if row is not None and st is not None and row.state in ("done", "failed", "ready", "waiting") \
                and row.fingerprint == Fingerprint.of(st):
            if row.state == "done" and row.after_action == AFTER_PENDING:
                self.processor.redo_after_upload(row)  # a crash came between `done` and the after-action
            return
        if row is None or row.state == "gone":
            try:
                st = st or os.stat(self.specs[watch].root / relpath)
            except FileNotFoundError:
                return
            self.journal.note_new(watch, relpath, Fingerprint.of(st))
        if closed:
            self.settlers[watch].closed(relpath, self.specs[watch].root / relpath)
        else:
            self._touch(watch, relpath)

    def _touch(self, watch: str, relpath: str) -> None:
        self.settlers[watch].touch(relpath, self.specs[watch].root / relpath)

    def _apply_settled(self, watch: str, outcome) -> None:
        if isinstance(outcome, Ready):
            row = self.journal.mark_settled(watch, outcome.key, Fingerprint.of(outcome.stat))
            if row is not None and self.metrics is not None:
                self.metrics.observe_settle_seconds(max(0.0, self.clock() - row.first_seen_at))
        elif isinstance(outcome, Growing):
            row = self.journal.find_file(watch, outcome.key)
            if row is not None and self.journal.set_state(row.id, "growing", only_from=("settling",)):
                log.warning("%s:%s: still changing after %s; not uploading it while it grows", watch,
                            outcome.key, self.config.watch(watch).settle.max_wait)
        elif isinstance(outcome, Vanished):
            self.journal.mark_gone(watch, outcome.key, only_from=("settling", "growing", "ready", "waiting"))

    def _scan(self, watch_name: str, relpath: str, full: bool) -> None:
        """Reconcile a watch (or one of its folders) with the journal: files found are
        settled; pending rows whose files were not found become ``gone`` -- except below
        a folder that could not be read, where nothing is concluded."""
        spec = self.specs.get(watch_name)
        if spec is None:
            return
        start = spec.root / relpath if relpath else None
        seen: set[str] = set()
        unreadable: list[str] = []

        def on_error(dir_rel: str, exc: OSError) -> None:
            unreadable.append(dir_rel)

        try:
            for found, st in scan_tree(spec.root, spec.path_filter, recursive=spec.recursive, start=start,
                                       on_error=on_error):
                seen.add(found)
                self._seen(watch_name, found, st)
        except FileNotFoundError:
            if not relpath:
                log.error("watch %s: folder %s is gone; nothing is watched there until it is back",
                          watch_name, spec.root)
                return
            # a folder that vanished: everything pending below it is gone
        except OSError as exc:
            log.warning("watch %s: cannot scan %s: %s", watch_name, start or spec.root, exc.strerror or exc)
            return
        if not (full or relpath):
            return
        prefix = f"{relpath}/" if relpath else ""
        blind = tuple(f"{d}/" for d in unreadable)
        for row in self.journal.files(states=("settling", "growing", "ready", "waiting"), watch=watch_name):
            if (row.relpath in seen or row.id in self.running or not row.relpath.startswith(prefix)
                    or (blind and row.relpath.startswith(blind))):
                continue
            self.settlers[watch_name].forget(row.relpath)
            self.journal.set_state(row.id, "gone", only_from=("settling", "growing", "ready", "waiting"),
                                   error="file vanished before it was uploaded")

    def _drain_finished(self, *, stopping: bool = False) -> None:
        while True:
            try:
                file_id, result = self.finished.get_nowait()
            except queue.Empty:
                return
            self.running.discard(file_id)
            if isinstance(result, JournalError) and not stopping:
                raise result  # the daemon stops, as when the loop itself cannot write the journal
            if isinstance(result, BaseException):
                log.error("file %d: worker error: %r", file_id, result)
                continue
            if result.state == "settling" and result.watch in self.settlers:
                # changed during its upload; the writer's close, if it came, was dropped while
                # the worker owned the file: with settle.on_close the writers probe decides
                self.settlers[result.watch].closed(result.relpath, self.specs[result.watch].root / result.relpath)
            elif not stopping:
                self._recheck(file_id)

    def _recheck(self, file_id: int) -> None:
        """Events for a file its worker owned were not acted on (``_seen``); a change that
        came after the worker's last look at the file, or a rename that made it look
        vanished, is picked up here instead of at the next periodic rescan."""
        row = self.journal.get_file(file_id)
        if row is None or row.watch not in self.specs or row.state in ACTIVE:
            return
        try:
            st = os.stat(self.specs[row.watch].root / row.relpath)
        except OSError:
            return
        if row.state == "gone" or Fingerprint.of(st) != row.fingerprint:
            self._seen(row.watch, row.relpath, st)

    def _dispatch(self) -> None:
        free = self.config.concurrency.uploads - len(self.running)
        if free <= 0:
            return
        for row in self.dispatcher.pick(self.journal, free=free, running=self.running):
            self.running.add(row.id)
            self.workers.submit(row.id)

    def _process(self, file_id: int) -> Outcome:
        return self.processor.process(file_id)

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
        if new.receiver != self.config.receiver:
            log.warning("reload: receiver settings change only at the next restart")
        self._apply_config(new)
        log.info("reloaded %s", self.config_path)
        self._notify("ready")
        return True

    def _on_retry(self, target: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.retry(reason)

    def _on_part(self, size: int) -> None:
        self.rate.add(size)
        if self.metrics is not None:
            self.metrics.bytes_uploaded(size)

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

    def status_line(self) -> str:
        counts = self.journal.counts()
        return (f"uploading {counts['uploading'] + counts['transcoding']}, queued {counts['ready']}, "
                f"settling {counts['settling'] + counts['growing']}, waiting {counts['waiting']}, "
                f"failed {counts['failed']}, done {counts['done']}, "
                f"{self.rate.per_second() / 1024**2:.1f} MiB/s")

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


def describe_config(config: Config) -> str:
    watches = ", ".join(f"{w.name}={w.path}" for w in config.watches)
    targets = ", ".join(f"{n}={t.url} (parts {format_size(t.part_size)})" for n, t in config.targets.items())
    return f"watching {watches}; uploading to {targets}; journal {config.journal}"
