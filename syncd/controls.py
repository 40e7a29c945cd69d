"""Operator controls: ``syncd pause`` and ``syncd resume``.

A pause is a row in the journal's ``controls`` table: everything, one target or one watch.
The journal is the channel because it already has the right owner: only a user who can
write it (the service's user, or root) can pause, and a pause survives a restart. The
running daemon notices the write within a second (``PRAGMA data_version``), starts no new
upload for what is paused, and stops running ones before their next request (the session
stays open and resumes from the server's offset); files keep settling and queueing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from syncd.config import Config
from syncd.journal import Journal, JournalError

EVERYTHING = "all"
SCOPES = (EVERYTHING, "target", "watch")


@dataclass(frozen=True)
class Paused:
    """What is paused now."""

    everything: bool = False
    targets: frozenset[str] = field(default_factory=frozenset)
    watches: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, float]]) -> Paused:
        rows = list(rows)
        return cls(everything=any(scope == EVERYTHING for scope, _, _ in rows),
                   targets=frozenset(name for scope, name, _ in rows if scope == "target"),
                   watches=frozenset(name for scope, name, _ in rows if scope == "watch"))

    @classmethod
    def read(cls, journal: Journal) -> Paused:
        return cls.from_rows(journal.pauses())

    def __bool__(self) -> bool:
        return self.everything or bool(self.targets) or bool(self.watches)

    def holds(self, *, watch: str | None, target: str | None) -> bool:
        """Whether a file of ``watch`` going to ``target`` must wait."""
        return self.everything or watch in self.watches or target in self.targets

    def describe(self) -> str:
        """``"paused: target main, watch scans"``; ``""`` when nothing is paused."""
        if self.everything:
            return "paused: everything"
        names = [f"target {n}" for n in sorted(self.targets)] + [f"watch {n}" for n in sorted(self.watches)]
        return f"paused: {', '.join(names)}" if names else ""

    def as_json(self) -> dict[str, Any]:
        return {"everything": self.everything, "targets": sorted(self.targets), "watches": sorted(self.watches)}


# --- the commands ---------------------------------------------------------------------------

def _scope(config: Config, command: str, *, target: str | None, watch: str | None) -> tuple[str, str] | None:
    """(scope, name) from the options, or None after printing why they are wrong."""
    if target is not None:
        if target not in config.targets:
            known = ", ".join(sorted(config.targets))
            print(f"syncd {command}: --target: {target!r} is not a target in {config.source} (known: {known})",
                  file=sys.stderr)
            return None
        return "target", target
    if watch is not None:
        names = [w.name for w in config.watches]
        if watch not in names:
            print(f"syncd {command}: --watch: {watch!r} is not a watch in {config.source} "
                  f"(known: {', '.join(names)})", file=sys.stderr)
            return None
        return "watch", watch
    return EVERYTHING, ""


def _open_writable(config: Config, command: str) -> Journal | None:
    """The journal, opened for writing; None after printing a one-line refusal."""
    path = config.journal
    if not path.exists():
        print(f"syncd {command}: {path}: no journal here (has the daemon run yet?)", file=sys.stderr)
        return None
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)):
        print(f"syncd {command}: {path}: permission denied: only a user who can write the journal "
              f"(the service's user, or root) can {command}", file=sys.stderr)
        return None
    try:
        return Journal(path)
    except JournalError as exc:
        print(f"syncd {command}: {exc}", file=sys.stderr)
        return None


def _label(scope: str, name: str) -> str:
    return "everything" if scope == EVERYTHING else f"{scope} {name}"


def cmd_pause(config: Config, *, target: str | None = None, watch: str | None = None) -> int:
    """``syncd pause [--target T | --watch W]``. Exit 0, 1 (cannot write the journal), 2 (usage)."""
    scope = _scope(config, "pause", target=target, watch=watch)
    if scope is None:
        return 2
    journal = _open_writable(config, "pause")
    if journal is None:
        return 1
    try:
        new = journal.pause(*scope)
    except JournalError as exc:
        print(f"syncd pause: {exc}", file=sys.stderr)
        return 1
    finally:
        journal.close()
    what = _label(*scope)
    print(f"paused {what}: no new upload starts; uploads in progress stop before their next part"
          if new else f"{what} was already paused")
    return 0


def cmd_resume(config: Config, *, target: str | None = None, watch: str | None = None) -> int:
    """``syncd resume [--target T | --watch W]``; without options every pause is lifted."""
    scope = _scope(config, "resume", target=target, watch=watch)
    if scope is None:
        return 2
    journal = _open_writable(config, "resume")
    if journal is None:
        return 1
    try:
        if scope[0] == EVERYTHING:
            lifted = journal.resume()
            print(f"resumed everything ({lifted} pause(s) lifted)" if lifted else "nothing was paused")
            return 0
        lifted = journal.resume(*scope)
        still = Paused.read(journal)
    except JournalError as exc:
        print(f"syncd resume: {exc}", file=sys.stderr)
        return 1
    finally:
        journal.close()
    what = _label(*scope)
    print(f"resumed {what}" if lifted else f"{what} was not paused")
    if still:
        print(f"still {still.describe()} (syncd resume without options lifts every pause)")
    return 0
