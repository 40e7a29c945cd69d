"""The loop's self-pipe: a burst of nudges costs one wake, and no nudge is ever lost."""

from __future__ import annotations

import selectors
import signal

import pytest

from syncd.daemon import WAKE, Waker


@pytest.fixture
def waker():
    w = Waker()
    yield w
    w.close()


def readable(w: Waker) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(w.rfd, selectors.EVENT_READ)
        return bool(sel.select(0))


def test_a_burst_of_nudges_is_one_byte(waker):
    for _ in range(100):
        waker.nudge()
    assert waker.drain() == WAKE


def test_a_nudge_after_the_loop_armed_wakes_it_again(waker):
    waker.nudge()
    assert waker.drain() == WAKE
    waker.nudge()  # while the loop works on the first wake (it has not armed yet): no second byte
    assert not readable(waker)
    waker.armed()  # the loop reads its queues after this: a later nudge must wake it again
    waker.nudge()
    assert readable(waker)


def test_the_loop_arms_after_draining(tmp_path):
    """A nudge's byte drained by the loop must not leave the waker pending: the loop's
    ``_wait`` drains first and arms after, so the next nudge writes again."""
    from syncd.config import load_config
    from syncd.daemon import Daemon
    from tests.support.daemon import make_config

    d = Daemon(load_config(make_config(tmp_path, url="http://127.0.0.1:9/up/", token=None)))
    d.waker_selector = selectors.DefaultSelector()
    d.waker_selector.register(d.waker.rfd, selectors.EVENT_READ)
    try:
        real_drain = d.waker.drain

        def drain_while_a_worker_nudges() -> bytes:
            d.waker.nudge()  # a worker finishing a file just as the loop drains
            return real_drain()

        d.waker.drain = drain_while_a_worker_nudges
        d.waker.nudge()
        d._wait(0)
        d.waker.drain = real_drain
        assert not readable(d.waker)
        d.waker.nudge()
        assert readable(d.waker), "a nudge was swallowed: the loop would sleep until its next tick"
        d._wait(0)
        d.waker.wake(bytes([signal.SIGHUP]))  # signals always write
        d.waker.wake(bytes([signal.SIGHUP]))
        d._wait(0)
        assert d._reload_requested
    finally:
        d.waker_selector.close()
        d.waker.close()
