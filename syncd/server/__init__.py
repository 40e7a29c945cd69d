"""The receiving server (``syncd serve``): the chunked upload protocol of synapse-sdk /
drf-chunked-upload, stricter and safer, streaming to disk under one root."""

from syncd.server.app import build_app
from syncd.server.embedded import EmbeddedReceiver, ReceiverStartError
from syncd.server.hooks import ServerHooks
from syncd.server.runner import run_forever
from syncd.server.settings import ReceiverSettings

__all__ = [
    "EmbeddedReceiver",
    "ReceiverSettings",
    "ReceiverStartError",
    "ServerHooks",
    "build_app",
    "run_forever",
]
