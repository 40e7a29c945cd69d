"""Binding the app to its address: shared by the embedded and the foreground receiver."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from syncd.server.app import build_app
from syncd.server.hooks import ServerHooks
from syncd.server.settings import ReceiverSettings

# After the grace, requests still running are cancelled; they get this long to clean up.
CUT_OFF_TIMEOUT = 1.0
# How much of a request body aiohttp buffers before it stops reading the socket (it
# resumes at half). Its default, 64 KiB, pauses and resumes the socket (two epoll_ctl
# calls) every few receives; this bounds memory per connection all the same.
READ_BUFFER = 1024 * 1024


def display_url(host: str, port: int, base_path: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{base_path}"


async def start_site(
    settings: ReceiverSettings,
    *,
    hooks: ServerHooks | None,
    access_log: bool,
) -> tuple[web.AppRunner, int]:
    """Runs the app's startup, then binds; returns the runner and the port it bound.

    Stop it with ``drain.stop_gracefully``: requests in flight get a grace first.
    """
    options: dict[str, Any] = {} if access_log else {"access_log": None}
    runner = web.AppRunner(
        build_app(settings, hooks=hooks),
        shutdown_timeout=CUT_OFF_TIMEOUT,
        read_bufsize=READ_BUFFER,
        **options,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]
