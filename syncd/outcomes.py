"""One map from what went wrong to what it means for the file: its next state, the reason
shown by ``syncd status``, and whether syncd tries again by itself.

``syncd run`` (syncd.pipeline) and ``syncd upload`` (syncd.oneshot) both read it, so an
exception means the same thing wherever it happens.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncd.journal import JournalError
from syncd.states import FileState
from syncd.transcode import TranscodeCancelled, VideoTranscodeError
from syncd.upload.base import (
    ChecksumMismatch,
    FileChanged,
    FileVanished,
    Interrupted,
    PermanentError,
    TransientError,
    UploadError,
)


@dataclass(frozen=True)
class Verdict:
    state: FileState
    reason: str
    retried: bool
    """True when syncd tries again by itself (later, or when the file settles again)"""
    counts_attempt: bool = False
    """the failure counts as an attempt (``files.attempts``): it backs off the next one"""


def one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def verdict_for(exc: BaseException, *, label: str = "") -> Verdict:
    """What ``exc`` means for the file it happened to. JournalError is not a file's
    failure: it is re-raised (the daemon stops)."""
    message = one_line(str(exc).removeprefix(f"{label}: ")) if label else one_line(str(exc))
    if isinstance(exc, JournalError):
        raise exc
    if isinstance(exc, Interrupted):  # a shutdown, or a pause (its message says which)
        return Verdict(FileState.READY, message or "interrupted by shutdown", retried=True)
    if isinstance(exc, TranscodeCancelled):
        return Verdict(FileState.READY, "interrupted by shutdown", retried=True)
    if isinstance(exc, FileVanished):
        return Verdict(FileState.GONE, "file vanished before it was uploaded", retried=False)
    if isinstance(exc, FileChanged):
        return Verdict(FileState.SETTLING, message or "file changed", retried=True)
    if isinstance(exc, (PermanentError, VideoTranscodeError)):
        return Verdict(FileState.FAILED, message or type(exc).__name__, retried=False, counts_attempt=True)
    if isinstance(exc, PermissionError):
        return Verdict(FileState.FAILED, f"cannot read: {exc.strerror}", retried=False, counts_attempt=True)
    if isinstance(exc, ChecksumMismatch):
        # The server holds other bytes than the file has now (rewritten in place with its
        # size and mtime kept while syncd was down, or damaged on the way). The engine
        # dropped that session: the next attempt uploads the file whole again.
        return Verdict(FileState.WAITING, message, retried=True, counts_attempt=True)
    if isinstance(exc, (TransientError, UploadError, OSError)):
        return Verdict(FileState.WAITING, message or type(exc).__name__, retried=True, counts_attempt=True)
    return Verdict(FileState.FAILED, f"unexpected error: {message or type(exc).__name__}", retried=False,
                   counts_attempt=True)
