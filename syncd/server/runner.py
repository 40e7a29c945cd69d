"""``syncd serve`` in the foreground: serve until SIGINT or SIGTERM, then stop cleanly."""

from __future__ import annotations

import asyncio
import logging
import signal

from syncd.allocator import tune_for_receiver
from syncd.notify import Notifier, WatchdogPinger
from syncd.server import eventloop
from syncd.server.drain import stop_gracefully
from syncd.server.embedded import ReceiverStartError
from syncd.server.hooks import ServerHooks
from syncd.server.listen import display_url, start_site
from syncd.server.safefs import UnsafePath
from syncd.server.settings import ReceiverSettings
from syncd.units import format_size

log = logging.getLogger("syncd.server")

SHUTDOWN_TIMEOUT = 10.0  # requests in flight get this long to finish after SIGTERM; the rest resume later


def run_forever(
    settings: ReceiverSettings,
    *,
    hooks: ServerHooks | None = None,
    access_log: bool = False,
    notifier: Notifier | None = None,
) -> None:
    """Blocks until SIGINT/SIGTERM. Raises ReceiverStartError if it cannot start."""
    tune_for_receiver()  # this process is the receiver's alone (the embedded one shares the daemon's)
    eventloop.run(_serve(settings, hooks=hooks, access_log=access_log, notifier=notifier))


async def _serve(
    settings: ReceiverSettings,
    *,
    hooks: ServerHooks | None,
    access_log: bool,
    notifier: Notifier | None,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    notifier = notifier or Notifier.from_environ()
    try:
        try:
            runner, port = await start_site(settings, hooks=hooks, access_log=access_log)
        except (OSError, UnsafePath) as exc:
            raise ReceiverStartError(
                f"cannot start the receiver on {settings.host}:{settings.port}: {exc}"
            ) from exc
        pinger = asyncio.create_task(_ping_watchdog(WatchdogPinger(notifier)))
        try:
            log.info(
                "listening on %s (auth: %s, max size: %s, min free: %s, expire: %gs, on conflict: %s)",
                display_url(settings.host, port, settings.base_path) + "chunked_upload/",
                "token" if settings.token else "none",
                format_size(settings.max_size) if settings.max_size else "unlimited",
                format_size(settings.min_free),
                settings.expire,
                settings.on_conflict,
            )
            notifier.ready()
            await stop.wait()
            log.info("stopping: no new requests; open sessions stay resumable")
            notifier.stopping()
        finally:
            pinger.cancel()
            await stop_gracefully(runner, grace=SHUTDOWN_TIMEOUT)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _ping_watchdog(pinger: WatchdogPinger) -> None:
    """Pinged from the serving loop itself, so a stuck loop stops the pings."""
    if not pinger.enabled:
        return
    loop = asyncio.get_running_loop()
    while True:
        pinger.tick(loop.time())
        await asyncio.sleep(pinger.due_in(loop.time()) or 0.0)
