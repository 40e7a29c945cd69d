"""``syncd.cli.run``: how the program ends once ``main`` has returned."""

from __future__ import annotations

import atexit
import threading

import pytest

from syncd import cli


class Exited(Exception):
    """Stands in for ``os._exit``, which would end the test run."""


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What ``run`` did at its end, in order. The exit handlers are not really run: those
    of this test process (concurrent.futures' among them) would break the tests after it."""
    done: list[str] = []

    def fake_exit(code: int) -> None:
        done.append(f"_exit {code}")
        raise Exited

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: done.append("exit handlers"))
    return done


def test_exits_at_once_with_mains_code_after_the_exit_handlers(monkeypatch, steps):
    monkeypatch.setattr(cli, "main", lambda: 3)
    with pytest.raises(Exited):
        cli.run()
    assert steps == ["exit handlers", "_exit 3"]


@pytest.mark.parametrize(("daemon", "ending", "expected"), [
    (False, SystemExit, []),  # a normal exit, which waits for the thread
    (True, Exited, ["exit handlers", "_exit 1"]),  # a normal exit would abandon it too
], ids=["thread", "daemon-thread"])
def test_only_daemon_threads_left_allow_the_quick_exit(monkeypatch, steps, daemon, ending, expected):
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=daemon)

    def main() -> int:
        other.start()
        return 1

    monkeypatch.setattr(cli, "main", main)
    try:
        with pytest.raises(ending) as info:
            cli.run()
    finally:
        release.set()
        other.join()
    assert steps == expected
    if ending is SystemExit:
        assert info.value.code == 1
