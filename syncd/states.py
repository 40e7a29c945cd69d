"""Every state a file can be in, the sets that matter, and the transitions allowed between
them: declared once here; the journal enforces the table where it writes a state.

::

    settling -> ready -> [transcoding ->] uploading -> done
    growing   still changing past settle.max_wait; becomes ready once it stops
    waiting   a transient failure; retried at next_attempt_at, forever
    failed    a permanent failure; `syncd retry` makes it ready again
    gone      the file vanished before it was uploaded
"""

from __future__ import annotations

from enum import StrEnum


class FileState(StrEnum):
    SETTLING = "settling"
    GROWING = "growing"
    READY = "ready"
    TRANSCODING = "transcoding"
    UPLOADING = "uploading"
    WAITING = "waiting"
    DONE = "done"
    FAILED = "failed"
    GONE = "gone"


S = FileState
STATES: tuple[FileState, ...] = tuple(FileState)
ACTIVE = frozenset({S.TRANSCODING, S.UPLOADING})
"""a worker owns the file"""
QUEUED = frozenset({S.READY, S.WAITING})
"""settled and due (now or later) for a worker"""
UNSETTLED = frozenset({S.SETTLING, S.GROWING})
PENDING = UNSETTLED | QUEUED | ACTIVE
"""not finished one way or the other"""
IDLE_PENDING = UNSETTLED | QUEUED
"""pending and owned by no worker: what a vanished file or a scan may conclude about"""
FINAL = frozenset({S.DONE, S.FAILED, S.GONE})

ALLOWED_FROM: dict[FileState, frozenset[FileState]] = {
    S.SETTLING: frozenset({S.GONE, S.SETTLING, S.GROWING}) | QUEUED | ACTIVE,
    S.GROWING: frozenset({S.SETTLING}),
    S.READY: frozenset(FileState),
    S.TRANSCODING: QUEUED,
    S.UPLOADING: QUEUED | {S.TRANSCODING},
    S.WAITING: QUEUED | ACTIVE,
    S.DONE: frozenset({S.UPLOADING}),
    S.FAILED: QUEUED | ACTIVE,
    S.GONE: PENDING,
}
"""for each state, the states a file may enter it from"""


def allowed_from(state: FileState, only_from: frozenset[FileState] | None = None) -> frozenset[FileState]:
    """The states a move to ``state`` may start from, narrowed to ``only_from``; a caller
    that names a transition the table forbids has a bug: ValueError."""
    allowed = ALLOWED_FROM[FileState(state)]
    if only_from is None:
        return allowed
    narrowed = frozenset(FileState(s) for s in only_from)
    if not narrowed <= allowed:
        bad = ", ".join(sorted(narrowed - allowed))
        raise ValueError(f"a file cannot go from {bad} to {state}")
    return narrowed
