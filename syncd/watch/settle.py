"""When is a file completely written? Pure logic over an injected clock and stat.

A file is ready when no event arrived for ``quiet`` seconds AND two stats ``quiet``
apart show the same device, inode, size and mtime_ns. Events (created, modified,
closed-after-write, moved-in) all call :meth:`Settler.touch`: a close is a hint, never
proof, because a writer may reopen the file, and a copy tool may set the mtime after
closing. The stat comparison also catches writes whose events were lost (a polling
watch, an inotify queue overflow, a network filesystem).

The fast path for closed files (``close_quiet`` given): :meth:`Settler.closed` reports
that a writer closed the file (inotify's IN_CLOSE_WRITE) or that it arrived by a rename
(how rsync and downloaders finish). From then on the file is ready once no event came for
``close_quiet``, a stat ``close_quiet`` old still agrees, AND no process holds the file
open for writing (``writers``, a kernel lease probe by default). Any content change needs
a descriptor open for writing, which either is still open at the check or is closed
again (another close), so the probe stands in for the rest of the quiet gap. A file held
open, or one the probe cannot answer for, goes back to the whole quiet gap until its
next close. A writer that reopens the file after it was found ready is the upload's
change check's business.

A file that is still not ready ``max_wait`` seconds after it was first seen is
reported once as :class:`Growing`; it stays tracked and can become :class:`Ready` later.

Nothing here sleeps or starts threads: the daemon loop calls :meth:`Settler.poll` when
:meth:`Settler.next_deadline` has passed (and whenever else it likes).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import stat as stat_module
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeAlias, TypeVar

from syncd.watch.writers import Writers, writers_of

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

_Signature: TypeAlias = tuple[int, int, int, int]


@dataclass(frozen=True)
class Ready(Generic[K]):
    """The file has been quiet and unchanged for ``quiet`` (or, ``on_close``, closed and
    quiet for ``close_quiet`` with no writer left); ``stat`` is the confirming stat."""

    key: K
    path: Path
    stat: os.stat_result
    on_close: bool = False


@dataclass(frozen=True)
class Vanished(Generic[K]):
    """The file no longer exists (or is no longer a regular file)."""

    key: K
    path: Path


@dataclass(frozen=True)
class Growing(Generic[K]):
    """Still changing ``max_wait`` after ``first_seen`` (a clock reading); reported once."""

    key: K
    path: Path
    first_seen: float


Outcome: TypeAlias = Ready[K] | Vanished[K] | Growing[K]


@dataclass
class _Tracked:
    path: Path
    first_seen: float
    last_event: float
    baseline: _Signature | None
    baseline_at: float
    growing_reported: bool = False
    # A close (or a rename into place) was seen: the fast path applies until a probe
    # finds a writer or cannot tell.
    closed: bool = False
    # The one heap entry that is live for this key; others are stale and skipped.
    scheduled_seq: int | None = None
    scheduled_at: float = 0.0


class Settler(Generic[K]):
    """Tracks files being written and reports when each is complete.

    ``clock`` is any monotonic clock (seconds); ``stat`` is called with the path given
    to :meth:`touch`. The default is :func:`os.lstat`, so a symlink is reported as
    :class:`Vanished` rather than settled through its target: syncd never uploads
    symlinks, and :func:`syncd.watch.scan.scan_tree` skips them too.

    ``close_quiet`` (None: no fast path) and ``writers`` (called with the path) are the
    fast path for closed files; without it :meth:`closed` is :meth:`touch`.
    """

    def __init__(
        self,
        *,
        quiet: float,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], os.stat_result] = os.lstat,
        close_quiet: float | None = None,
        writers: Callable[[Path], Writers] = writers_of,
    ) -> None:
        if not quiet > 0:
            raise ValueError(f"quiet must be positive, got {quiet!r}")
        if not max_wait >= quiet:
            raise ValueError(f"max_wait ({max_wait!r}) must be at least quiet ({quiet!r})")
        if close_quiet is not None and not 0 < close_quiet <= quiet:
            raise ValueError(f"close_quiet ({close_quiet!r}) must be more than 0 and at most quiet ({quiet!r})")
        self._quiet = quiet
        self._max_wait = max_wait
        self._close_quiet = close_quiet
        self._writers = writers
        self._clock = clock
        self._stat = stat
        self._tracked: dict[K, _Tracked] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()

    @property
    def quiet(self) -> float:
        return self._quiet

    @property
    def max_wait(self) -> float:
        return self._max_wait

    @property
    def close_quiet(self) -> float | None:
        return self._close_quiet

    def __len__(self) -> int:
        return len(self._tracked)

    def __contains__(self, key: object) -> bool:
        return key in self._tracked

    def pending(self) -> Iterable[K]:
        """The keys being tracked (a snapshot, safe to iterate while calling other methods)."""
        return list(self._tracked)

    def touch(self, key: K, path: Path) -> None:
        """An event arrived for ``key``: restart its quiet gap and take a baseline stat."""
        now = self._clock()
        tracked = self._tracked.get(key)
        baseline = self._signature(path)
        if tracked is None:
            tracked = _Tracked(
                path=path, first_seen=now, last_event=now, baseline=baseline, baseline_at=now
            )
            self._tracked[key] = tracked
        else:
            tracked.path = path
            tracked.last_event = now
            tracked.baseline = baseline
            tracked.baseline_at = now
        self._schedule(key, tracked)

    def closed(self, key: K, path: Path) -> None:
        """The writer closed ``key`` (or it arrived by a rename): :meth:`touch`, and with
        the fast path on, it may be ready after ``close_quiet`` instead of ``quiet``."""
        self.touch(key, path)
        if self._close_quiet is not None:
            tracked = self._tracked[key]
            tracked.closed = True
            self._schedule(key, tracked)

    def forget(self, key: K) -> None:
        """Stop tracking ``key`` (unknown keys are ignored)."""
        self._tracked.pop(key, None)

    def rename(self, old_key: K, new_key: K, new_path: Path) -> bool:
        """Carry ``old_key``'s progress over to ``new_key`` after a rename.

        A rename changes neither content, inode nor mtime, so the quiet gap goes on.
        Whatever ``new_key`` tracked before is replaced (its file was overwritten).
        Returns False, and changes nothing, when ``old_key`` was not tracked: the caller
        then decides whether the new name needs a :meth:`touch`.
        """
        tracked = self._tracked.pop(old_key, None)
        if tracked is None:
            return False
        tracked.path = new_path
        tracked.scheduled_seq = None
        self._tracked[new_key] = tracked
        self._schedule(new_key, tracked)
        return True

    def next_deadline(self) -> float | None:
        """The clock reading at which :meth:`poll` has something to do, or None when idle."""
        while self._heap:
            when, seq, key = self._heap[0]
            tracked = self._tracked.get(key)
            if tracked is None or tracked.scheduled_seq != seq:
                heapq.heappop(self._heap)
                continue
            exact = self._deadline(tracked)
            if when < exact:
                # Touches since this entry was pushed moved the deadline later.
                heapq.heappop(self._heap)
                tracked.scheduled_seq = None
                self._schedule(key, tracked)
                continue
            return when
        return None

    def poll(self, now: float | None = None) -> list[Outcome[K]]:
        """Check the keys whose deadline has passed; returns what was decided, in deadline order."""
        if now is None:
            now = self._clock()
        outcomes: list[Outcome[K]] = []
        while self._heap and self._heap[0][0] <= now:
            _, seq, key = heapq.heappop(self._heap)
            tracked = self._tracked.get(key)
            if tracked is None or tracked.scheduled_seq != seq:
                continue
            tracked.scheduled_seq = None
            outcome = self._check(key, tracked, now)
            if outcome is not None:
                outcomes.append(outcome)
            if self._tracked.get(key) is tracked:
                self._schedule(key, tracked)
        return outcomes

    def _check(self, key: K, tracked: _Tracked, now: float) -> Outcome[K] | None:
        if now >= self._check_at(tracked):
            try:
                result = self._stat(tracked.path)
            except (FileNotFoundError, NotADirectoryError):
                del self._tracked[key]
                return Vanished(key, tracked.path)
            except OSError as exc:
                # EIO, ESTALE, EACCES...: often transient on network filesystems. Keep the
                # file and look again after another quiet gap.
                log.warning("cannot stat %s while settling it, will retry: %s", tracked.path, exc)
                tracked.baseline = None
                tracked.baseline_at = now
            else:
                if not stat_module.S_ISREG(result.st_mode):
                    del self._tracked[key]
                    return Vanished(key, tracked.path)
                signature = _signature_of(result)
                if signature == tracked.baseline:
                    if not tracked.closed or now >= self._quiet_at(tracked):
                        del self._tracked[key]
                        return Ready(key, tracked.path, result)
                    writers = self._writers(tracked.path)
                    if writers is Writers.NONE:
                        del self._tracked[key]
                        return Ready(key, tracked.path, result, on_close=True)
                    log.debug("%s: closed, but %s: waiting the whole quiet gap", tracked.path,
                              "a writer holds it open" if writers is Writers.SOME else "cannot tell if a writer "
                              "holds it open")
                    tracked.closed = False
                else:
                    tracked.baseline = signature
                    tracked.baseline_at = now
        if not tracked.growing_reported and now - tracked.first_seen >= self._max_wait:
            tracked.growing_reported = True
            return Growing(key, tracked.path, tracked.first_seen)
        return None

    def _check_at(self, tracked: _Tracked) -> float:
        if tracked.closed and self._close_quiet is not None:
            return max(tracked.last_event, tracked.baseline_at) + self._close_quiet
        return self._quiet_at(tracked)

    def _quiet_at(self, tracked: _Tracked) -> float:
        # Both conditions of the rule: no event for `quiet`, baseline at least `quiet` old.
        return max(tracked.last_event, tracked.baseline_at) + self._quiet

    def _deadline(self, tracked: _Tracked) -> float:
        check_at = self._check_at(tracked)
        if tracked.growing_reported:
            return check_at
        return min(check_at, tracked.first_seen + self._max_wait)

    def _schedule(self, key: K, tracked: _Tracked) -> None:
        deadline = self._deadline(tracked)
        # An earlier live entry is kept: when it pops early, it is pushed again at the
        # exact deadline. So a file written continuously costs one heap entry, not one
        # per event.
        if tracked.scheduled_seq is not None and tracked.scheduled_at <= deadline:
            return
        seq = next(self._seq)
        tracked.scheduled_seq = seq
        tracked.scheduled_at = deadline
        heapq.heappush(self._heap, (deadline, seq, key))

    def _signature(self, path: Path) -> _Signature | None:
        try:
            result = self._stat(path)
        except OSError:
            return None  # the check after the quiet gap reports what happened
        if not stat_module.S_ISREG(result.st_mode):
            return None
        return _signature_of(result)


def _signature_of(result: os.stat_result) -> _Signature:
    return (result.st_dev, result.st_ino, result.st_size, result.st_mtime_ns)
