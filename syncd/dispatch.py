"""Which due files the free upload workers take next.

Watches of a higher ``priority`` go first: a free worker takes a due file of the highest
priority that has one. Among watches of equal priority, workers go round-robin, one file
(or one batch of small files, see the daemon's ``_dispatch``) per watch in turn, so a flood
in one folder never starves another of the same priority.
Within a watch, files go ``oldest`` first (the longest waiting) or ``smallest`` first.
Uploads in progress are never preempted: priority decides only who takes the next free
worker. A lower-priority watch gets workers only while no higher-priority file is due.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from syncd.journal import DueFile, DueOrder, Journal


@dataclass(frozen=True)
class WatchQueue:
    name: str
    priority: int = 0
    order: DueOrder = "oldest"


class Dispatcher:
    """Picks due rows for free workers; keeps the round-robin position between calls, and
    the due rows it looked at but did not start (its backlog), in order.

    A pick with ``refresh`` asks the journal again; one without serves the backlog and asks
    only for watches whose last answer was cut by its limit and has run out. The daemon
    refreshes when something may have made new files due (new or settled files, a control,
    the clock) and not when a worker merely finished a file: in a drop of thousands of
    small files that would otherwise re-read dozens of rows per file."""

    BATCH = 64
    """rows asked of the journal per watch at least"""

    def __init__(self, watches: Sequence[WatchQueue]) -> None:
        self._watches = {w.name: w for w in watches}
        self._levels = [[w.name for w in watches if w.priority == level]
                        for level in sorted({w.priority for w in watches}, reverse=True)]
        self._turn = deque(w.name for w in watches)
        self._backlog: dict[str, list[DueFile]] = {}
        self._cut: set[str] = set()
        """watches whose last answer filled its limit: more rows may be due"""

    def pick(self, journal: Journal, *, free: int, running: Collection[int],
             held: Collection[str] = (), admit: Callable[[DueFile], bool] | None = None,
             lookahead: int = 0, refresh: bool = True) -> list[DueFile]:
        """Up to ``free`` rows to start now, in the order they should start. ``running``:
        ids already handed to workers (their rows may still read ``ready``); ``held``: watches
        that start nothing now (``syncd pause``, a bandwidth limit of 0); ``admit``: whether a
        row may start now (no more large files than concurrency.uploads); one it refuses
        waits, and the next row is looked at, up to ``lookahead`` rows further per watch.
        ``refresh``: ask the journal (else serve the backlog, see the class)."""
        limit = max(self.BATCH, free + len(running) + lookahead)
        if refresh:
            self._backlog.clear()
            self._cut.clear()
        picked: list[DueFile] = []
        for names in self._levels:
            if free <= 0:
                break
            queues: dict[str, deque[DueFile]] = {}
            for name in names:
                if name in held:
                    continue
                rows = self._rows(journal, name, running=running, limit=limit)
                if rows:
                    queues[name] = deque(rows)
            refused: dict[str, list[DueFile]] = {}
            while free > 0 and queues:
                name = self._turn[0]
                self._turn.rotate(-1)
                rows = queues.get(name)
                if not rows:
                    continue
                row = rows.popleft()
                if admit is None or admit(row):
                    picked.append(row)
                    free -= 1
                else:
                    refused.setdefault(name, []).append(row)  # it waits, ahead of the rest
                if not rows:
                    del queues[name]
            for name in names:
                if name not in held:
                    self._backlog[name] = refused.get(name, []) + list(queues.get(name, ()))
        return picked

    def _rows(self, journal: Journal, name: str, *, running: Collection[int], limit: int) -> list[DueFile]:
        rows = [r for r in self._backlog.get(name, ()) if r.id not in running]
        if rows or (name in self._backlog and name not in self._cut):
            return rows
        answer = journal.due(watches=[name], order=self._watches[name].order, limit=limit)
        if len(answer) >= limit:
            self._cut.add(name)
        else:
            self._cut.discard(name)
        return [r for r in answer if r.id not in running]
