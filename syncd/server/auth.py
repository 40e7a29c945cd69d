"""Token authentication, as synapse-sdk and drf's TokenAuthentication speak it.

Accepted: ``Authorization: Token <t>`` or ``Bearer <t>``, and synapse-sdk's
``Synapse-Access-Token: Token <t>``. Compared in constant time; the token is never
logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from syncd.server.errors import ApiError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_ROUTES = frozenset({"healthz"})
_CHALLENGE = {"WWW-Authenticate": "Token"}


def presented_tokens(request: web.Request) -> list[str]:
    found = []
    for header in ("Authorization", "Synapse-Access-Token"):
        for value in request.headers.getall(header, []):
            scheme, _, credential = value.strip().partition(" ")
            if scheme.lower() in ("token", "bearer") and credential.strip():
                found.append(credential.strip())
    return found


def token_middleware(token: str | None) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    expected = token.encode("utf-8") if token is not None else None

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.match_info.route.name in PUBLIC_ROUTES:
            return await handler(request)
        presented = presented_tokens(request)
        if not presented:
            raise ApiError(401, "Authentication credentials were not provided.", headers=_CHALLENGE)
        # Check every candidate, so timing does not tell which header held a good one.
        matches = [
            hmac.compare_digest(p.encode("utf-8", "surrogateescape"), expected) for p in presented
        ]
        if not any(matches):
            raise ApiError(401, "Invalid token.", headers=_CHALLENGE)
        return await handler(request)

    return check_token
