"""Every retry timing of syncd lives here: per request (tenacity) and per file (waiting).

Backends decide *whether* a failure is worth another try; this module decides *when*.
A request is retried with exponential backoff and jitter, never sooner than the server's
Retry-After, until its time budget is spent or the daemon stops; then the file goes to
``waiting`` and comes back after a capped, growing pause, forever.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from syncd.config import RetryPolicy

log = logging.getLogger("syncd.upload")
T = TypeVar("T")

RETRY_AFTER_CAP = 600.0


class wait_retry_after(wait_base):
    """The backoff of ``fallback``, but never less than the server's Retry-After."""

    def __init__(self, fallback: wait_base, *, cap: float = RETRY_AFTER_CAP):
        self.fallback = fallback
        self.cap = cap

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self.fallback(retry_state)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.cap))
        return delay


class stop_after_budget(stop_base):
    """Stop once ``budget`` seconds of ``clock`` have passed since the first try (tenacity's
    own ``stop_after_delay`` reads the real clock, which a test cannot move)."""

    def __init__(self, budget: float, *, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None):
        self.clock = clock
        self.deadline = (clock() if started is None else started) + budget

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() >= self.deadline


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff(policy: RetryPolicy) -> wait_base:
    """initial, 2 x initial, 4 x initial ... up to max, plus up to `initial` of jitter."""
    return wait_exponential(multiplier=policy.initial, max=policy.max) + wait_random(0, policy.initial)


def call_with_retry(
    fn: Callable[[], T],
    *,
    is_retryable: Callable[[BaseException], bool],
    policy: RetryPolicy,
    stop: threading.Event,
    what: str,
    on_retry: Callable[[BaseException, float], None] | None = None,
    sleep: Callable[[float], object] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``fn`` until it succeeds, fails for good, runs out of budget, or ``stop`` is set.

    The last exception is re-raised. Sleeping waits on ``stop``, so a shutdown never
    waits out a backoff.
    """
    # The first try goes without tenacity (most succeed, and building its machinery cost
    # 12 µs per call, a small file's one request included); a failure worth retrying is
    # handed to tenacity as its first attempt, the budget still counted from that try.
    started = clock()
    try:
        return fn()
    except BaseException as exc:
        if not is_retryable(exc):
            raise
        first: BaseException | None = exc

    def again() -> T:
        nonlocal first
        if first is not None:
            exc, first = first, None
            raise exc
        return fn()

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s: %s; try %d again in %.1fs", what, exc, state.attempt_number + 1, delay)
        if on_retry is not None and exc is not None:
            on_retry(exc, delay)

    retrying = Retrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_retry_after(backoff(policy)),
        stop=stop_after_budget(policy.budget, clock=clock, started=started) | stop_when_event_set(stop),
        sleep=sleep if sleep is not None else stop.wait,
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(again)


def waiting_delay(attempts: int, policy: RetryPolicy, *, rng: random.Random | None = None) -> float:
    """Pause before a ``waiting`` file's next attempt: doubles per attempt up to
    ``waiting_max``, with ±10% jitter so a fleet of files does not return at once."""
    rng = rng or random
    base = min(policy.waiting_initial * (2 ** max(attempts - 1, 0)), policy.waiting_max)
    return base * rng.uniform(0.9, 1.1) if base < policy.waiting_max else base * rng.uniform(0.9, 1.0)
