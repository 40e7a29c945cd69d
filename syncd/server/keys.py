"""Client-named sessions: the ``Upload-Key`` request header.

A client generates a random key and journals it *before* the request that creates a
session (the first-part ``PUT`` or a whole-file ``POST``). Sending the same key again,
after a crash that lost the answer, reaches the same session instead of making a second
one. Keys are 16..128 characters from ``[A-Za-z0-9_-]`` (room for a UUID, a base64url
token or a hex digest; nothing that could need escaping anywhere).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

HEADER = "Upload-Key"
MIN_LENGTH, MAX_LENGTH = 16, 128
_KEY_RE = re.compile(rf"[A-Za-z0-9_-]{{{MIN_LENGTH},{MAX_LENGTH}}}")


class BadUploadKey(ValueError):
    """``str(err)`` is the reason, ready for the client."""


def is_upload_key(value: object) -> bool:
    return isinstance(value, str) and _KEY_RE.fullmatch(value) is not None


def parse_upload_key(values: list[str]) -> str | None:
    """The key from the header's values (None when absent), or BadUploadKey."""
    if not values:
        return None
    if len(values) > 1:
        raise BadUploadKey(f"{HEADER} is given {len(values)} times")
    key = values[0].strip()
    if not is_upload_key(key):
        shown = key if len(key) <= 40 else key[:40] + "..."
        raise BadUploadKey(
            f"{HEADER} {shown!r} is not {MIN_LENGTH}..{MAX_LENGTH} characters from A-Z a-z 0-9 _ -"
        )
    return key


class KeyLocks:
    """One lock per key in use: two requests with one key never act at once."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._held.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._held[key]

    def __len__(self) -> int:
        return len(self._held)
