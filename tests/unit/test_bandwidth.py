"""Bandwidth limits: rate and timetable parsing, and the shared token buckets on a fake clock."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.bandwidth import (
    BURST_SECONDS,
    PAUSED_POLL,
    BandwidthLimiter,
    Limits,
    Schedule,
    TimetableEntry,
    format_rate,
    parse_at,
    parse_rate,
)
from syncd.upload.base import Interrupted

KiB, MiB = 1024, 1024**2
HOUR, DAY = 3600, 86400


def local(year: int, month: int, day: int, hour: int, minute: int, second: int = 0) -> float:
    return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))


MONDAY_0759 = local(2026, 11, 23, 7, 59, 0)


def entries(*pairs: tuple[str, object]) -> tuple[TimetableEntry, ...]:
    return tuple(TimetableEntry(at=at, limit=limit) for at, limit in pairs)


class FakeTime:
    """Monotonic and wall clocks that only move when a sender waits."""

    def __init__(self, wall: float = MONDAY_0759):
        self.mono = 1000.0
        self.wall0 = wall
        self.waits: list[float] = []
        self.hooks: list[tuple[float, callable]] = []

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return self.wall0 + (self.mono - 1000.0)

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        assert seconds > 0
        self.waits.append(seconds)
        self.mono += seconds
        for hook in [h for h in self.hooks if h[0] <= self.mono]:
            self.hooks.remove(hook)
            hook[1]()
        return stop.is_set()

    def limiter(self, **kw) -> BandwidthLimiter:
        return BandwidthLimiter(monotonic=self.monotonic, wall=self.wall, wait=self.wait, **kw)


def send(limiter: BandwidthLimiter, clock: FakeTime, *, target: str, block: int, seconds: float,
         stop: threading.Event | None = None) -> list[tuple[float, int]]:
    """Acquire ``block`` after ``block`` for ``seconds`` of fake time; (time, bytes) of each."""
    stop = stop or threading.Event()
    sent = []
    end = clock.mono + seconds
    while clock.mono < end:
        limiter.acquire(target, block, stop=stop)
        sent.append((clock.mono, block))
    return sent


def in_window(sent: list[tuple[float, int]], start: float, end: float) -> int:
    return sum(n for t, n in sent if start <= t < end)


# --- parsing ----------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "rate"), [
    ("20MiB/s", 20 * MiB), ("512KiB/s", 512 * KiB), ("1.5MB/s", 1_500_000), ("100/s", 100),
    (4096, 4096), ("off", None), ("OFF", None), (False, None), (None, None), (0, 0), ("0", 0), ("0/s", 0),
])
def test_rates(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize(("text", "message"), [
    ("fast", "'fast' is not a rate (e.g. 20MiB/s, 512KiB/s, off, 0)"),
    ("20MiB", "'20MiB' is not a rate (e.g. 20MiB/s, 512KiB/s, off, 0): write it per second, e.g. 20MiB/s"),
    (True, "True is not a rate"),
    (-5, "-5 is not a rate"),
    ("5 parsecs/s", "'5 parsecs/s' is not a rate"),
])
def test_bad_rates_say_what_is_wrong(text, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        parse_rate(text)


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["", "KiB", "MiB", "KB", "MB"]))
def test_rate_is_the_size_per_second(n, unit):
    factor = {"": 1, "KiB": KiB, "MiB": MiB, "KB": 1000, "MB": 1000**2}[unit]
    assert parse_rate(f"{n}{unit}/s") == n * factor


def test_format_rate():
    assert [format_rate(r) for r in (None, 0, 5 * MiB, 512 * KiB)] == ["off", "paused", "5 MiB/s", "512 KiB/s"]


def test_at_days_and_times():
    mon_fri = parse_at("Mon-Fri 08:00")
    assert mon_fri == tuple(d * DAY + 8 * HOUR for d in range(5))
    assert parse_at("Fri-Mon 22:30") == tuple(sorted(d * DAY + 22 * HOUR + 1800 for d in (4, 5, 6, 0)))
    assert parse_at("sat,Sunday 0:05") == (5 * DAY + 300, 6 * DAY + 300)
    assert parse_at("19:00") == tuple(d * DAY + 19 * HOUR for d in range(7))


@pytest.mark.parametrize(("text", "message"), [
    ("Mon-Fri 8", "'8' is not a time of day HH:MM"),
    ("Mon-Fri 24:00", "'24:00' is not a time of day"),
    ("Mon-Fry 08:00", "'Mon-Fry' is not a day or a range of days"),
    ("Weekdays 08:00", "'Weekdays' is not a day"),
])
def test_bad_at(text, message):
    with pytest.raises(ValueError, match=message):
        parse_at(text)


# --- the timetable ----------------------------------------------------------------------

OFFICE = entries(("Mon-Fri 08:00", 5 * MiB), ("Mon-Fri 19:00", None), ("Sat-Sun 00:00", None))


@pytest.mark.parametrize(("when", "limit"), [
    (local(2026, 11, 23, 7, 59, 59), None),      # Monday before 08:00: Sunday's entry, wrapping the week
    (local(2026, 11, 23, 8, 0, 0), 5 * MiB),     # at the boundary itself
    (local(2026, 11, 25, 18, 59, 59), 5 * MiB),  # Wednesday
    (local(2026, 11, 25, 19, 0, 0), None),
    (local(2026, 11, 28, 9, 0, 0), None),        # Saturday
])
def test_entry_in_force_is_the_latest_at_or_before_now(when, limit):
    assert time.localtime(local(2026, 11, 23, 12, 0)).tm_wday == 0  # 2026-11-23 is a Monday
    assert Schedule.of(OFFICE).limit_at(when) == limit


def test_a_timetable_wraps_around_the_week():
    night = Schedule.of(entries(("Wed 22:00", 0)))
    assert night.limit_at(local(2026, 11, 23, 0, 0)) == 0  # only entry: in force all week
    weekly = Schedule.of(entries(("Tue 09:00", MiB), ("Thu 09:00", 2 * MiB)))
    assert weekly.limit_at(local(2026, 11, 23, 12, 0)) == 2 * MiB  # Monday: last week's Thursday entry


def test_next_change():
    schedule = Schedule.of(OFFICE)
    assert schedule.next_change(local(2026, 11, 23, 7, 59, 0)) == 60
    assert schedule.next_change(local(2026, 11, 29, 23, 0, 0)) == 9 * HOUR  # Sunday 23:00 -> Monday 08:00
    assert Schedule.of(entries(("00:00", MiB))).next_change(MONDAY_0759) is None


def test_limits_from_config_values():
    limits = Limits.at(entries(("00:00", 10 * MiB)), {"main": OFFICE, "other": ()}, wall=local(2026, 11, 24, 9, 0))
    assert limits == Limits(10 * MiB, {"main": 5 * MiB})
    assert limits.describe() == "limit 10 MiB/s (main 5 MiB/s)"
    assert Limits(None, {}).describe() == ""
    assert Limits(0, {}).describe() == "limit paused"
    assert Limits(None, {"main": MiB, "spare": None}).describe() == "limit main 1 MiB/s"


# --- the limiter -------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(rate=st.integers(min_value=KiB, max_value=200 * MiB), block=st.integers(min_value=1, max_value=MiB))
def test_rate_is_kept_within_a_bucket_of_any_window(rate, block):
    block = max(block, rate // 1000)  # a few thousand blocks per run at most
    clock = FakeTime()
    limiter = clock.limiter(targets={"t": entries(("00:00", rate))})
    seconds = 10.0 + block / rate  # at least ten seconds, and at least a few blocks
    sent = send(limiter, clock, target="t", block=block, seconds=seconds)
    elapsed = sent[-1][0] - 1000.0
    burst = max(1.0, rate * BURST_SECONDS)
    total = sum(n for _, n in sent)
    # never ahead of the rate by more than the bucket's capacity ...
    assert total <= rate * elapsed + burst + 1
    # ... and, over ten seconds, within 1% of it
    assert total >= rate * elapsed * 0.99
    # smooth: no window holds more than its share plus one bucket and one block
    for t, _ in sent[:: max(1, len(sent) // 50)]:
        assert in_window(sent, t, t + 1.0) <= rate * 1.0 + burst + block + 1


def test_the_overall_bucket_is_shared_by_every_target():
    clock = FakeTime()
    limiter = clock.limiter(overall=entries(("00:00", MiB)), targets={"a": (), "b": entries(("00:00", 4 * MiB))})
    stop = threading.Event()
    start = clock.mono
    for _ in range(100):
        for target in ("a", "b", "c"):  # "c" has no bucket of its own
            limiter.acquire(target, 64 * KiB, stop=stop)
    total = 300 * 64 * KiB
    assert (clock.mono - start) == pytest.approx((total - MiB * BURST_SECONDS) / MiB, rel=0.01)


def test_the_tighter_of_target_and_overall_wins():
    clock = FakeTime()
    limiter = clock.limiter(overall=entries(("00:00", 4 * MiB)), targets={"slow": entries(("00:00", 256 * KiB))})
    sent = send(limiter, clock, target="slow", block=8 * KiB, seconds=10)
    assert sum(n for _, n in sent) / 10 == pytest.approx(256 * KiB, rel=0.02)


def test_unlimited_never_waits():
    clock = FakeTime()
    limiter = clock.limiter(overall=entries(("00:00", None)))
    for _ in range(1000):
        limiter.acquire("any", MiB, stop=threading.Event())
    assert clock.waits == []


def test_the_limit_changes_at_a_timetable_boundary_during_an_upload():
    clock = FakeTime(wall=local(2026, 11, 23, 7, 59, 50))
    limiter = clock.limiter(targets={"t": entries(("Mon-Fri 08:00", 100 * KiB), ("Mon-Fri 19:00", None),
                                                  ("Sat-Sun 00:00", None), ("Mon 07:00", MiB))})
    sent = send(limiter, clock, target="t", block=4 * KiB, seconds=20)
    boundary = 1000.0 + 10
    assert in_window(sent, 1000.0, boundary) == pytest.approx(10 * MiB, rel=0.02)
    assert in_window(sent, boundary + 1, boundary + 10) == pytest.approx(9 * 100 * KiB, rel=0.02)
    assert limiter.limits().targets == {"t": 100 * KiB}


def test_a_paused_limit_blocks_until_the_timetable_lets_go():
    clock = FakeTime(wall=local(2026, 11, 23, 7, 59, 0))
    limiter = clock.limiter(overall=entries(("Mon 00:00", 0), ("Mon 08:00", MiB)))
    limiter.acquire("t", 32 * KiB, stop=threading.Event())
    waited = clock.mono - 1000.0
    assert 60 <= waited < 60.1
    assert max(clock.waits) <= PAUSED_POLL


def test_configure_changes_the_limit_of_a_running_upload():
    clock = FakeTime()
    limiter = clock.limiter(targets={"t": entries(("00:00", MiB))})
    clock.hooks.append((1005.0, lambda: limiter.configure(overall=(), targets={"t": entries(("00:00", 256 * KiB))})))
    sent = send(limiter, clock, target="t", block=8 * KiB, seconds=15)
    assert in_window(sent, 1000.0, 1005.0) == pytest.approx(5 * MiB, rel=0.03)
    assert in_window(sent, 1006.0, 1015.0) == pytest.approx(9 * 256 * KiB, rel=0.03)


def test_configure_resumes_a_paused_upload():
    clock = FakeTime()
    limiter = clock.limiter(targets={"t": entries(("00:00", 0))})
    clock.hooks.append((1003.0, lambda: limiter.configure(overall=(), targets={"t": ()})))
    limiter.acquire("t", MiB, stop=threading.Event())
    assert 1003.0 <= clock.mono <= 1003.0 + PAUSED_POLL


def test_stop_interrupts_a_waiting_sender():
    clock = FakeTime()
    limiter = clock.limiter(overall=entries(("00:00", 0)))
    stop = threading.Event()
    clock.hooks.append((1002.0, stop.set))
    with pytest.raises(Interrupted):
        limiter.acquire("t", 1, stop=stop)
    stop_now = threading.Event()
    stop_now.set()
    with pytest.raises(Interrupted):
        clock.limiter(overall=entries(("00:00", MiB))).acquire("t", 1, stop=stop_now)


def test_threads_share_one_limiter_safely():
    """Real threads on a real clock at a high rate: what matters is that the buckets stay
    consistent under contention (nothing lost, nothing raised); timing is asserted on the
    fake clock above."""
    limiter = BandwidthLimiter(overall=entries(("00:00", 64 * MiB)))
    stop = threading.Event()
    errors = []

    def worker():
        try:
            for _ in range(64):
                limiter.acquire("t", 16 * KiB, stop=stop)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert not any(t.is_alive() for t in threads)
