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


def test_a_thread_still_running_gets_a_normal_exit(monkeypatch, steps):
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)

    def main() -> int:
        worker.start()
        return 0

    monkeypatch.setattr(cli, "main", main)
    try:
        with pytest.raises(SystemExit) as info:
            cli.run()
    finally:
        release.set()
        worker.join()
    assert info.value.code == 0 and steps == []


def test_a_daemon_thread_does_not_hold_the_exit(monkeypatch, steps):
    release = threading.Event()
    helper = threading.Thread(target=release.wait, daemon=True)

    def main() -> int:
        helper.start()
        return 1

    monkeypatch.setattr(cli, "main", main)
    try:
        with pytest.raises(Exited):
            cli.run()
    finally:
        release.set()
        helper.join()
    assert steps == ["exit handlers", "_exit 1"]
