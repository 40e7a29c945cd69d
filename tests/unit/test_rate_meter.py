from syncd.daemon import RateMeter


def test_the_rate_is_over_the_window_and_old_events_are_let_go_without_asking():
    now = [100.0]
    meter = RateMeter(window=10.0, clock=lambda: now[0])
    for _ in range(1000):  # a daemon without systemd never asks for the status line's rate
        meter.add(4096)
        now[0] += 0.1
    assert len(meter._events) <= 101  # only the last window's events are kept
    assert meter.per_second() == 4096 * 100 / 10.0
    now[0] += 60
    assert meter.per_second() == 0
