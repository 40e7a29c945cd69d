"""sd_notify for the systemd service manager, without python-systemd.

Messages go as one datagram to the ``AF_UNIX`` socket named by ``NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). Outside systemd the variable is
unset and every call is a no-op; a failed send is logged at debug level and never
raised, since losing a status line must not take the daemon down.

The watchdog is pinged from the loop that does the work (``WatchdogPinger.tick``),
so a hung loop stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

# What systemd hands to us alone; children (ffmpeg) must not see it, or they could
# send READY=1/WATCHDOG=1 on our behalf.
_SYSTEMD_NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def child_environ(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """A copy of ``environ`` without the notify socket and watchdog variables."""
    return {k: v for k, v in environ.items() if k not in _SYSTEMD_NOTIFY_VARS}


_SEND_TIMEOUT = 1.0


def _socket_address(value: str) -> str | None:
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. systemd 254's vsock: addresses, which we do not speak


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends state changes to systemd; every method is a no-op without a socket.

    The sending methods return whether the datagram was delivered, for callers
    that care; none of them raises.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        if address and self._address is None:
            log.debug("NOTIFY_SOCKET=%r is not a unix socket address; notifications off", address)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """Reads ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is ours only when ``WATCHDOG_PID`` is unset or names this
        process (the variables may have leaked to us from a parent).
        """
        watchdog_usec: int | None = None
        pid = environ.get("WATCHDOG_PID")
        if pid is None or pid.strip() == str(os.getpid()):
            try:
                watchdog_usec = int(environ.get("WATCHDOG_USEC", ""))
            except ValueError:
                watchdog_usec = None
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when no watchdog is armed for us.

        Ping at half of it (``WatchdogPinger`` does).
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1_000_000

    def ready(self) -> bool:
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        # A newline would start a new assignment in the datagram.
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 tell this reload from an earlier one.
        return self.send("RELOADING=1", f"MONOTONIC_USEC={_monotonic_usec()}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def send(self, *assignments: str) -> bool:
        """Sends ``KEY=value`` assignments as one datagram; False if not delivered."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(_SEND_TIMEOUT)  # a full queue must not stall the work loop
                sock.connect(self._address)
                sock.sendall(payload)
        except OSError as exc:
            # Once per run of failures: a dead socket would otherwise log every ping.
            if not self._failing:
                log.debug("sd_notify to %r failed: %s", self._address, exc)
            self._failing = True
            return False
        self._failing = False
        return True


class WatchdogPinger:
    """Sends ``WATCHDOG=1`` at most every half watchdog interval, when ticked.

    Tick it from the work loop with a monotonic ``now``; ``due_in(now)`` says how
    long that loop may block before the next ping is due.
    """

    def __init__(self, notifier: Notifier, *, interval: float | None = None) -> None:
        self._notifier = notifier
        full = interval if interval is not None else notifier.watchdog_interval()
        self.period: float | None = full / 2 if full else None
        self._last: float | None = None

    @property
    def enabled(self) -> bool:
        return self.period is not None

    def due_in(self, now: float) -> float | None:
        """Seconds until the next ping is due (0 if overdue); None when disabled."""
        if self.period is None:
            return None
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.period - now)

    def tick(self, now: float) -> bool:
        """Pings if due; True when a ping was due (and attempted)."""
        if self.period is None:
            return False
        if self._last is not None and now - self._last < self.period:
            return False
        self._last = now
        self._notifier.watchdog()
        return True
