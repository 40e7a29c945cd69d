"""The receiving server (``syncd serve``): the chunked upload protocol of synapse-sdk /
drf-chunked-upload, stricter and safer, streaming to disk under one root."""

from importlib import import_module
from typing import Any

# Imported on first use: the daemon's other commands never pay for aiohttp.
_EXPORTS = {
    "EmbeddedReceiver": "syncd.server.embedded",
    "ReceiverStartError": "syncd.server.embedded",
    "ServerHooks": "syncd.server.hooks",
    "build_app": "syncd.server.app",
    "run_forever": "syncd.server.runner",
    "ReceiverSettings": "syncd.server.settings",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'syncd.server' has no attribute {name!r}")


__all__ = [
    "EmbeddedReceiver",
    "ReceiverSettings",
    "ReceiverStartError",
    "ServerHooks",
    "build_app",
    "run_forever",
]
