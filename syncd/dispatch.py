"""Which due files the free upload workers take next.

Watches of a higher ``priority`` go first: a free worker takes a due file of the highest
priority that has one. Among watches of equal priority, workers go round-robin, one file
per watch in turn, so a flood in one folder never starves another of the same priority.
Within a watch, files go ``oldest`` first (the longest waiting) or ``smallest`` first.
Uploads in progress are never preempted: priority decides only who takes the next free
worker. A lower-priority watch gets workers only while no higher-priority file is due.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from syncd.journal import DueOrder, FileRow, Journal


@dataclass(frozen=True)
class WatchQueue:
    name: str
    priority: int = 0
    order: DueOrder = "oldest"


class Dispatcher:
    """Picks due rows for free workers; keeps the round-robin position between calls."""

    def __init__(self, watches: Sequence[WatchQueue]) -> None:
        self._watches = {w.name: w for w in watches}
        self._levels = [[w.name for w in watches if w.priority == level]
                        for level in sorted({w.priority for w in watches}, reverse=True)]
        self._turn = deque(w.name for w in watches)

    def pick(self, journal: Journal, *, free: int, running: Collection[int],
             held: Collection[str] = (), admit: Callable[[FileRow], bool] | None = None,
             lookahead: int = 0) -> list[FileRow]:
        """Up to ``free`` rows to start now, in the order they should start. ``running``:
        ids already handed to workers (their rows may still read ``ready``); ``held``: watches
        that start nothing now (``syncd pause``, a bandwidth limit of 0); ``admit``: whether a
        row may start now (no more large files than concurrency.uploads); one it refuses
        waits, and the next row is looked at, up to ``lookahead`` rows further per watch."""
        picked: list[FileRow] = []
        for names in self._levels:
            if free <= 0:
                break
            queues: dict[str, deque[FileRow]] = {}
            for name in names:
                if name in held:
                    continue
                rows = [r for r in journal.due(watches=[name], order=self._watches[name].order,
                                               limit=free + len(running) + lookahead) if r.id not in running]
                if rows:
                    queues[name] = deque(rows)
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
                if not rows:
                    del queues[name]
        return picked
