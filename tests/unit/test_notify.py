"""sd_notify against real AF_UNIX datagram sockets, the watchdog pinger with a fake clock."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import notify
from syncd.notify import Notifier, WatchdogPinger, child_environ


class Listener:
    """The service manager's end: a bound datagram socket that we read back."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address  # as NOTIFY_SOCKET spells it

    def recv(self) -> str:
        return self.sock.recv(65536).decode("utf-8")

    def pending(self) -> list[str]:
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(65536).decode("utf-8"))
        except BlockingIOError:
            return messages
        finally:
            self.sock.setblocking(True)
            self.sock.settimeout(2)


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield Listener(sock, str(path))


@pytest.fixture
def abstract_listener() -> Iterator[Listener]:
    name = f"syncd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        yield Listener(sock, "@" + name)


@pytest.mark.parametrize("which", ["path_listener", "abstract_listener"])
def test_state_messages_arrive_one_datagram_each(which: str, request: pytest.FixtureRequest):
    listener: Listener = request.getfixturevalue(which)
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled

    assert notifier.ready() is True
    assert listener.recv() == "READY=1"
    assert notifier.status("uploading 2, queued 14, waiting 1, failed 0, 35.2 MiB/s")
    assert listener.recv() == "STATUS=uploading 2, queued 14, waiting 1, failed 0, 35.2 MiB/s"
    assert notifier.watchdog()
    assert listener.recv() == "WATCHDOG=1"
    assert notifier.stopping()
    assert listener.recv() == "STOPPING=1"
    assert listener.pending() == []


def test_status_is_kept_to_one_line(path_listener: Listener):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path_listener.address})
    notifier.status("queued 3\nREADY=1")
    assert path_listener.recv() == "STATUS=queued 3 READY=1"


def test_reloading_carries_the_monotonic_clock(path_listener: Listener):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path_listener.address})
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000

    first, second = path_listener.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_nothing_happens_without_notify_socket(monkeypatch: pytest.MonkeyPatch):
    def no_sockets(*args: object, **kwargs: object) -> socket.socket:
        raise AssertionError("a socket was opened outside systemd")

    monkeypatch.setattr(notify.socket, "socket", no_sockets)
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})

    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    for call in (notifier.ready, notifier.watchdog, notifier.reloading, notifier.stopping):
        assert call() is False
    assert notifier.status("idle") is False
    pinger = WatchdogPinger(notifier)
    assert not pinger.enabled
    assert pinger.tick(0.0) is False
    assert pinger.due_in(0.0) is None


@pytest.mark.parametrize("address", ["relative/notify", "vsock:2:1234", "@"])
def test_unsupported_addresses_disable_notifications(address: str):
    assert not Notifier.from_environ({"NOTIFY_SOCKET": address}).enabled


def test_a_failing_socket_never_raises_and_logs_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    path = tmp_path / "notify"
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(path)})
    caplog.set_level(logging.DEBUG, logger="syncd.notify")

    assert [notifier.watchdog() for _ in range(3)] == [False, False, False]
    assert len(caplog.records) == 1
    assert str(path) in caplog.records[0].getMessage()

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        assert notifier.watchdog() is True
        assert sock.recv(64) == b"WATCHDOG=1"
    path.unlink()

    assert notifier.watchdog() is False
    assert len(caplog.records) == 2


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "1500000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(
    path_listener: Listener, environ: dict[str, str], expected: float | None
):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path_listener.address, **environ})
    assert notifier.watchdog_interval() == expected


def test_child_environ_hides_the_notify_socket_and_watchdog():
    environ = {
        "NOTIFY_SOCKET": "@x",
        "WATCHDOG_USEC": "1",
        "WATCHDOG_PID": "2",
        "PATH": "/usr/bin",
        "CREDENTIALS_DIRECTORY": "/run/credentials/syncd.service",
    }
    assert child_environ(environ) == {
        "PATH": "/usr/bin",
        "CREDENTIALS_DIRECTORY": "/run/credentials/syncd.service",
    }
    assert environ["NOTIFY_SOCKET"] == "@x"  # the daemon's own copy is untouched


def test_pinger_pings_at_half_the_interval_only_when_ticked(path_listener: Listener):
    notifier = Notifier.from_environ(
        {"NOTIFY_SOCKET": path_listener.address, "WATCHDOG_USEC": "10000000"}
    )
    pinger = WatchdogPinger(notifier)
    assert pinger.period == 5.0

    assert pinger.due_in(100.0) == 0.0
    sent = [now for now in (100.0, 101.0, 104.9, 105.0, 109.99, 110.0) if pinger.tick(now)]
    assert sent == [100.0, 105.0, 110.0]
    assert path_listener.pending() == ["WATCHDOG=1"] * 3
    assert pinger.due_in(112.0) == pytest.approx(3.0)

    # A loop that hangs does not tick: however much time passes, nothing is sent.
    assert path_listener.pending() == []
    assert pinger.due_in(200.0) == 0.0
    assert pinger.tick(200.0) is True
    assert path_listener.pending() == ["WATCHDOG=1"]


def test_pinger_interval_can_be_given(path_listener: Listener):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path_listener.address})
    assert WatchdogPinger(notifier).enabled is False
    pinger = WatchdogPinger(notifier, interval=2.0)
    assert pinger.period == 1.0
    assert [pinger.tick(t) for t in (0.0, 0.5, 1.0)] == [True, False, True]
