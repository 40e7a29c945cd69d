"""The aiohttp application: routes under the base path, middlewares, the receiver's lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam

from syncd.server import batch, checksums, handlers, rawparts
from syncd.server.auth import Handler, token_middleware
from syncd.server.drain import DRAIN, Drain
from syncd.server.errors import ApiError
from syncd.server.handlers import RECEIVER
from syncd.server.hooks import ServerHooks
from syncd.server.receiver import Receiver
from syncd.server.replies import answer_then_hang_up
from syncd.server.settings import ReceiverSettings

log = logging.getLogger("syncd.server")


@web.middleware
async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        try:
            return await handler(request)
        except ConnectionError as exc:
            # The client hung up mid-body; the part was discarded.
            raise ApiError(400, f"Request body ended early: {exc}") from None
        except HttpProcessingError as exc:
            raise ApiError(400, f"Malformed request body: {exc.message}") from None
    except ApiError as err:
        response = err.response()
        level = logging.WARNING if err.status >= 500 else logging.DEBUG if err.quiet else logging.INFO
        log.log(level, "%s %s: %d %s", request.method, request.path, err.status, err.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (no such route, wrong method) in the same JSON shape.
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        response = ApiError(exc.status, exc.reason, headers=headers).response()
    # Refused from its headers, or cut off mid-part: the rest of the body is not read.
    return await answer_then_hang_up(request, response)


async def _receiver_lifecycle(app: web.Application) -> AsyncIterator[None]:
    receiver = app[RECEIVER]
    await receiver.open()
    sweeper = asyncio.create_task(receiver.sweep_forever(), name="syncd-receiver-sweep")
    try:
        yield
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        receiver.close()


def build_app(settings: ReceiverSettings, *, hooks: ServerHooks | None = None) -> web.Application:
    # aiohttp's lenient parser warns about a Content-Disposition that syncd's own refuses
    # with a 400, logged with the header: one report of it, not a second on stderr
    for category in (BadContentDispositionHeader, BadContentDispositionParam):
        warnings.filterwarnings("ignore", category=category)
    drain = Drain()
    app = web.Application(middlewares=[drain.middleware, answer_errors, token_middleware(settings.token)])
    app[DRAIN] = drain
    app[RECEIVER] = Receiver(settings, hooks or ServerHooks())
    app.cleanup_ctx.append(_receiver_lifecycle)
    app.on_response_prepare.append(rawparts.advertise)
    app.on_response_prepare.append(batch.advertise)
    app.on_response_prepare.append(checksums.advertise)

    base = settings.base_path
    collection = f"{base}chunked_upload/"
    # Ids are checked by the receiver; the pattern only keeps slashes out.
    member = collection + "{id:[^/]+}"
    router = app.router
    router.add_get(f"{base}healthz", handlers.healthz, name="healthz")
    router.add_get(collection, handlers.find_by_key, allow_head=False)
    router.add_put(collection, handlers.create_session)
    router.add_post(collection, handlers.upload_whole)
    for path in (member, member + "/"):
        router.add_get(path, handlers.get_session, allow_head=False)
        router.add_put(path, handlers.append_part)
        router.add_post(path, handlers.complete_session)
        router.add_delete(path, handlers.abort_session)
    return app
