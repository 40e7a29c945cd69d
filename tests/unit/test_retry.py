import random
import threading

import pytest
from tenacity import RetryCallState

from syncd.config import RetryPolicy
from syncd.upload.base import PermanentError, TransientError
from syncd.upload.retry import call_with_retry, wait_retry_after, waiting_delay


def _is_retryable(exc):
    return isinstance(exc, TransientError)


class Flaky:
    def __init__(self, failures):
        self.failures = list(failures)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def test_retries_transient_until_success_with_growing_backoff():
    sleeps = []
    fn = Flaky([TransientError("503", reason="server")] * 5)
    policy = RetryPolicy(initial=1, max=60, budget=3600)
    assert call_with_retry(fn, is_retryable=_is_retryable, policy=policy, stop=threading.Event(),
                           what="t", sleep=sleeps.append) == "ok"
    assert fn.calls == 6
    assert len(sleeps) == 5
    # exponential with jitter of at most `initial`: 1, 2, 4, 8, 16 (+ up to 1)
    for n, pause in enumerate(sleeps):
        assert 2**n <= pause <= 2**n + 1


def test_permanent_errors_are_not_retried():
    fn = Flaky([PermanentError("413")])
    with pytest.raises(PermanentError):
        call_with_retry(fn, is_retryable=_is_retryable, policy=RetryPolicy(), stop=threading.Event(),
                        what="t", sleep=lambda s: None)
    assert fn.calls == 1


def test_retry_after_is_honoured():
    sleeps = []
    fn = Flaky([TransientError("429", reason="throttled", retry_after=17.0)])
    call_with_retry(fn, is_retryable=_is_retryable, policy=RetryPolicy(initial=1, max=60),
                    stop=threading.Event(), what="t", sleep=sleeps.append)
    assert sleeps and sleeps[0] >= 17.0


def test_budget_spent_reraises_last_error():
    clock = [0.0]
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        clock[0] += seconds

    fn = Flaky([TransientError("502", reason="server")] * 100)
    policy = RetryPolicy(initial=1, max=4, budget=10)
    with pytest.raises(TransientError, match="502"):
        call_with_retry(fn, is_retryable=_is_retryable, policy=policy, stop=threading.Event(),
                        what="t", sleep=sleep, clock=lambda: clock[0])
    assert 3 <= fn.calls <= 6
    assert sum(sleeps[:-1]) < 10 <= sum(sleeps)
    assert max(sleeps) <= 4 + 1


@pytest.mark.parametrize("first_try_seconds, tries", [(10.5, 1), (8.0, 2)])
def test_the_budget_counts_from_the_first_try(first_try_seconds, tries):
    """The first try runs outside tenacity; a slow first failure still spends the budget."""
    clock = [0.0]
    calls, sleeps, reported = [], [], []

    def fail():
        calls.append(clock[0])
        clock[0] += first_try_seconds if len(calls) == 1 else 0.1
        raise TransientError("timeout", reason="timeout")

    def sleep(seconds):
        sleeps.append(seconds)
        clock[0] += seconds

    with pytest.raises(TransientError, match="timeout"):
        call_with_retry(fail, is_retryable=_is_retryable, policy=RetryPolicy(initial=1, max=4, budget=10),
                        stop=threading.Event(), what="t", sleep=sleep, clock=lambda: clock[0],
                        on_retry=lambda exc, delay: reported.append(str(exc)))
    assert len(calls) >= tries and (len(calls) == 1) == (tries == 1)
    assert reported[:1] == (["timeout"] if tries > 1 else [])  # the first failure reported like any other


def test_stop_event_ends_retrying():
    stop = threading.Event()
    fn = Flaky([TransientError("503", reason="server")] * 100)

    def sleep(_):
        stop.set()

    with pytest.raises(TransientError):
        call_with_retry(fn, is_retryable=_is_retryable, policy=RetryPolicy(), stop=stop, what="t", sleep=sleep)
    assert fn.calls == 2


def test_wait_retry_after_caps_absurd_values():
    wait = wait_retry_after(lambda rs: 1.0, cap=600)
    state = RetryCallState(None, None, (), {})
    state.set_exception((TransientError, TransientError("x", reason="throttled", retry_after=10**9), None))
    assert wait(state) == 600


def test_waiting_delay_grows_and_is_capped():
    policy = RetryPolicy(waiting_initial=30, waiting_max=3600)
    rng = random.Random(1)
    delays = [waiting_delay(n, policy, rng=rng) for n in range(1, 12)]
    assert 27 <= delays[0] <= 33
    assert delays[3] > delays[1] > delays[0]
    assert all(d <= 3600 for d in delays)
    assert delays[-1] >= 3240
