"""Error answers in drf-chunked-upload's shape: ``{"detail": ..., **extra}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

NOT_FOUND = "Not found."


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        quiet: bool = False,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.quiet = quiet
        """logged at DEBUG, not INFO: an expected refusal that says nothing about the client"""
        self.extra = extra

    def response(self) -> web.Response:
        return web.json_response(
            {"detail": self.detail, **self.extra}, status=self.status, headers=self.headers
        )
