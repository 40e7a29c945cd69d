"""Bandwidth limits: rates, a weekly timetable, and the token buckets every upload shares.

A limit is a rate (``20MiB/s``), ``off`` (unlimited) or ``0`` (paused), or a weekly
timetable in local time::

    bandwidth:
      - {at: "Mon-Fri 08:00", limit: 5MiB/s}
      - {at: "Mon-Fri 19:00", limit: off}
      - {at: "Sat-Sun 00:00", limit: off}

The entry in force is the latest one at or before now, wrapping around the week (so on a
Monday at 03:00 the example runs on Sunday's ``off``).

``BandwidthLimiter`` holds one token bucket per target and one for everything. The
engine calls ``acquire`` before it sends each block; a bucket holds about 100 ms of its
rate, so a limited upload is smooth and never sends a whole part in one burst. Limits
follow the timetable as the clock crosses its boundaries, and ``configure`` (SIGHUP)
swaps timetables under running uploads.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, GetCoreSchemaHandler, field_validator
from pydantic_core import CoreSchema, core_schema

from syncd.units import format_size, parse_size

if TYPE_CHECKING:
    from syncd.config import Config

BURST_SECONDS = 0.1
"""a bucket's capacity, in seconds of its rate: how far a sender may run ahead"""
PAUSED_POLL = 0.5
"""longest single wait of a sender on a paused limit, so a change is seen soon"""
MIN_WAIT = 0.001
"""shortest wait: waking more often only burns CPU (tokens earned meanwhile are kept)"""
"""longest single wait of a sender on a paused limit, so a change is seen soon"""

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = {name.lower(): i for i, name in enumerate(DAYS)} | {
    name.lower(): i for i, name in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"))}
WEEK = 7 * 86400
RATE_EXAMPLE = "(e.g. 20MiB/s, 512KiB/s, off, 0)"


# --- rates -----------------------------------------------------------------------------

def parse_rate(value: object) -> int | None:
    """Bytes per second from ``20MiB/s``, ``512KiB/s`` or a number of bytes per second;
    None for ``off`` (unlimited, also YAML's ``false``), 0 for ``0`` (paused)."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("off", "unlimited")):
        return None
    size: object = value
    if isinstance(value, str):
        size = value.strip()
        if size.lower().endswith("/s"):
            size = size[:-2]
        elif not re.fullmatch(r"\d+", size) and _is_size(size):
            raise ValueError(f"{value!r} is not a rate {RATE_EXAMPLE}: write it per second, e.g. {size}/s")
    if isinstance(size, (int, str)) and not isinstance(size, bool):
        try:
            return parse_size(size)
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a rate {RATE_EXAMPLE}")


def _is_size(text: str) -> bool:
    try:
        parse_size(text)
    except ValueError:
        return False
    return True


def format_rate(rate: int | None) -> str:
    if rate is None:
        return "off"
    if rate == 0:
        return "paused"
    return f"{format_size(rate)}/s"


Rate = Annotated[int | None, BeforeValidator(parse_rate)]


# --- the timetable ---------------------------------------------------------------------

def parse_at(text: str) -> tuple[int, ...]:
    """Seconds into the week (Monday 00:00 = 0) at which an ``at`` takes effect:
    ``"Mon-Fri 08:00"``, ``"Sat,Sun 10:30"``, ``"Fri-Mon 22:00"`` or ``"08:00"`` (every day)."""
    days_text, _, clock_text = text.strip().rpartition(" ")
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", clock_text)
    if not match:
        raise ValueError(f"{text!r}: {clock_text!r} is not a time of day HH:MM (e.g. \"Mon-Fri 08:00\")")
    minute = int(match.group(1)) * 60 + int(match.group(2))
    days: list[int] = []
    if not days_text.strip():
        days = list(range(7))
    for item in filter(None, (p.strip() for p in days_text.split(","))):
        first, dash, last = item.partition("-")
        try:
            start = _DAY_NAMES[first.strip().lower()]
            end = _DAY_NAMES[last.strip().lower()] if dash else start
        except KeyError:
            raise ValueError(f"{text!r}: {item!r} is not a day or a range of days "
                             "(Mon Tue Wed Thu Fri Sat Sun, e.g. Mon-Fri)") from None
        days += [(start + i) % 7 for i in range((end - start) % 7 + 1)]
    return tuple(sorted({day * 86400 + minute * 60 for day in days}))


class TimetableEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: str
    """days and a local time of day: ``"Mon-Fri 08:00"``"""
    limit: Rate

    @field_validator("at")
    @classmethod
    def _at(cls, value: str) -> str:
        parse_at(value)
        return value


EVERY_DAY = "00:00"


def _as_entries(value: object) -> object:
    """A single rate is a timetable of one entry, in force all week; ``off`` is no entry."""
    if isinstance(value, (list, tuple)):
        return value
    rate = parse_rate(value)
    return () if rate is None else ({"at": EVERY_DAY, "limit": rate},)


def _no_clashes(entries: tuple[TimetableEntry, ...]) -> tuple[TimetableEntry, ...]:
    seen: dict[int, int] = {}
    for i, entry in enumerate(entries):
        for point in parse_at(entry.at):
            if point in seen:
                raise ValueError(f"[{i}].at: {entry.at!r} starts at the same time as [{seen[point]}].at "
                                 f"{entries[seen[point]].at!r}")
            seen[point] = i
    return entries


class Timetable(tuple):
    """The config type of every ``bandwidth`` key: a tuple of ``TimetableEntry``, written in
    YAML as a rate, ``off`` (the empty timetable: no limit), ``0`` or a list of entries.

    A tuple subclass rather than ``tuple[TimetableEntry, ...]`` so that the key is one value
    (one README row, one example line), while errors still name ``bandwidth[1].limit``."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        entries = handler.generate_schema(tuple[TimetableEntry, ...])
        return core_schema.no_info_before_validator_function(
            _as_entries,
            core_schema.no_info_after_validator_function(lambda v: cls(_no_clashes(v)), entries),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: [entry.model_dump() for entry in v]))


@dataclass(frozen=True)
class Schedule:
    """A timetable compiled to sorted points of the week; ``()`` is always unlimited."""

    points: tuple[tuple[int, int | None], ...]

    @classmethod
    def of(cls, entries: Sequence[TimetableEntry]) -> Schedule:
        return cls(tuple(sorted((p, e.limit) for e in entries for p in parse_at(e.at))))

    def limit_at(self, wall: float) -> int | None:
        if not self.points:
            return None
        now = _week_seconds(wall)
        current = self.points[-1][1]  # wrapping around: last week's last entry
        for point, limit in self.points:
            if point > now:
                break
            current = limit
        return current

    def next_change(self, wall: float) -> float | None:
        """Seconds from ``wall`` to the next point of the timetable (None: it never changes)."""
        if len({limit for _, limit in self.points}) < 2:
            return None
        now = _week_seconds(wall)
        later = [p for p, _ in self.points if p > now]
        return (later[0] if later else self.points[0][0] + WEEK) - now


def _week_seconds(wall: float) -> int:
    tm = time.localtime(wall)
    return tm.tm_wday * 86400 + tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec


# --- the limiter -----------------------------------------------------------------------

class _Bucket:
    """A token bucket whose rate follows a schedule. Not thread-safe: the limiter locks."""

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.rate: int | None = None
        self.tokens = 0.0
        self.updated: float | None = None

    def refresh(self, mono: float, wall: float) -> None:
        rate = self.schedule.limit_at(wall)
        if self.updated is not None and self.rate:
            self.tokens = min(self.capacity_of(self.rate), self.tokens + self.rate * max(0.0, mono - self.updated))
        if rate != self.rate:
            # a new limit starts with a full bucket of its own size, never with the old one's
            self.tokens = self.capacity_of(rate) if rate else 0.0
            self.rate = rate
        self.updated = mono

    @staticmethod
    def capacity_of(rate: int) -> float:
        return max(1.0, rate * BURST_SECONDS)


FLAG_POLL = 0.05
"""how often a wait looks at a stop flag that cannot be waited on (``body.AnyOf``)"""


def _wait_on(stop: threading.Event, seconds: float) -> bool:
    if hasattr(stop, "wait"):
        return stop.wait(seconds)
    deadline = time.monotonic() + seconds
    while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, FLAG_POLL))
    return stop.is_set()


class BandwidthLimiter:
    """Token buckets shared by every upload: one per target and one overall.

    ``monotonic`` drives the buckets, ``wall`` (Unix time, read as local time) the
    timetables, and ``wait(stop, seconds)`` is how a sender waits (True when ``stop``
    is set); tests pass fakes of all three.
    """

    def __init__(self, *, overall: Sequence[TimetableEntry] = (),
                 targets: Mapping[str, Sequence[TimetableEntry]] | None = None,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 wait: Callable[[threading.Event, float], bool] = _wait_on):
        self._monotonic = monotonic
        self._wall = wall
        self._wait = wait
        self._lock = threading.Lock()
        self._overall = _Bucket(Schedule(()))
        self._targets: dict[str, _Bucket] = {}
        self.configure(overall=overall, targets=targets or {})

    def configure(self, *, overall: Sequence[TimetableEntry],
                  targets: Mapping[str, Sequence[TimetableEntry]]) -> None:
        """New timetables (a reload); uploads in progress go on under the new limits."""
        with self._lock:
            self._overall.schedule = Schedule.of(overall)
            for name, entries in targets.items():
                self._targets.setdefault(name, _Bucket(Schedule(()))).schedule = Schedule.of(entries)
            for name in set(self._targets) - set(targets):
                del self._targets[name]

    def acquire(self, target: str, nbytes: int, *, stop: threading.Event) -> None:
        """Block until ``nbytes`` may be sent to ``target``; raises Interrupted once ``stop`` is set."""
        from syncd.upload.base import Interrupted  # not at the top: syncd.upload imports the config

        left = nbytes
        while left > 0:
            if stop.is_set():
                raise Interrupted()
            with self._lock:
                mono, wall = self._monotonic(), self._wall()
                buckets = [self._overall] + ([self._targets[target]] if target in self._targets else [])
                for bucket in buckets:
                    bucket.refresh(mono, wall)
                limited = [b for b in buckets if b.rate is not None]
                if not limited:
                    return
                if any(b.rate == 0 for b in limited):
                    delay = self._paused_delay(limited, wall)
                else:
                    piece = min(left, *(b.capacity_of(b.rate) for b in limited))
                    delay = max((piece - b.tokens) / b.rate for b in limited)
                    if delay <= 0:
                        for bucket in limited:
                            bucket.tokens -= piece
                        left -= piece
                        continue
            if self._wait(stop, max(delay, MIN_WAIT)):
                raise Interrupted()

    @staticmethod
    def _paused_delay(buckets: list[_Bucket], wall: float) -> float:
        changes = [c for b in buckets if b.rate == 0 and (c := b.schedule.next_change(wall)) is not None]
        return min([PAUSED_POLL, *(c + 0.001 for c in changes)])

    def limits(self) -> Limits:
        """The limits in force now."""
        wall = self._wall()
        with self._lock:
            return Limits(self._overall.schedule.limit_at(wall),
                          {name: b.schedule.limit_at(wall) for name, b in self._targets.items() if b.schedule.points})


@dataclass(frozen=True)
class Limits:
    """Limits in force at one moment (None = unlimited, 0 = paused)."""

    overall: int | None
    targets: Mapping[str, int | None]
    """only the targets that have a timetable of their own"""

    @classmethod
    def at(cls, overall: Sequence[TimetableEntry], targets: Mapping[str, Sequence[TimetableEntry]], *,
           wall: float | None = None) -> Limits:
        """What a limiter built from these timetables has in force (for ``syncd status``)."""
        wall = time.time() if wall is None else wall
        return cls(Schedule.of(overall).limit_at(wall),
                   {name: Schedule.of(entries).limit_at(wall) for name, entries in targets.items() if entries})

    def limit(self, target: str) -> bool:
        """True if uploads to ``target`` are limited now (overall or on their own)."""
        return self.overall is not None or self.targets.get(target) is not None

    def describe(self) -> str:
        """``"limit 5 MiB/s (main 2 MiB/s)"``, ``"limit main 2 MiB/s"``; ``""`` when nothing is limited."""
        per_target = ", ".join(f"{name} {format_rate(rate)}" for name, rate in self.targets.items() if rate is not None)
        if self.overall is None:
            return f"limit {per_target}" if per_target else ""
        return f"limit {format_rate(self.overall)}" + (f" ({per_target})" if per_target else "")


def timetables_of(config: Config) -> dict[str, Any]:
    """``BandwidthLimiter.configure``'s arguments (and ``Limits.at``'s) from a config."""
    return {"overall": config.bandwidth, "targets": {name: t.bandwidth for name, t in config.targets.items()}}
