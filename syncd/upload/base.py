"""What the upload engine and a protocol module say to each other.

A protocol module (``chunked``, later ``s3``, ``tus``) implements ``Backend`` and
``Session`` and raises the errors below; the engine never looks at HTTP. Whether a
failure is worth another try is the backend's call (``is_retryable``); when and how
often is ``syncd.upload.retry``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class UploadItem:
    remote_name: str
    """where the file goes on the server: a relative POSIX path"""
    size: int


@dataclass(frozen=True)
class PartReceipt:
    number: int
    offset: int
    size: int
    server_offset: int
    """bytes the server holds after this part"""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    md5: str | None
    location: str | None = None


class UploadError(Exception):
    """Base of the errors a backend raises. ``str()`` is one line for logs and status."""


class TransientError(UploadError):
    """Worth another try: 5xx other than 507, 408, 429, a dropped connection."""

    def __init__(self, message: str, *, reason: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(UploadError):
    """Never worth another try without a human: 413, 507, other 4xx."""


class AuthRejected(PermanentError):
    pass


class SessionGone(UploadError):
    """The server no longer knows the session (404 / 410): start a new one."""


class OffsetMismatch(UploadError):
    def __init__(self, expected: int, provided: int):
        super().__init__(f"server expected offset {expected}, not {provided}")
        self.expected = expected


class ChecksumMismatch(UploadError):
    """The server's MD5 of what it received differs from ours."""


class Interrupted(Exception):
    """The daemon is stopping; the session stays resumable."""


class FileChanged(Exception):
    """The local file changed (or was truncated) while it was being uploaded."""


class FileVanished(Exception):
    """The local file is gone."""


BodyFactory = Callable[[], BinaryIO]


class Session(Protocol):
    token: str | None
    """what the journal keeps to resume; None until the server has made the session"""

    def committed(self) -> int:
        """Bytes the server holds. The server's view wins over the journal's."""

    def send_part(self, number: int, offset: int, body: BinaryIO, size: int) -> PartReceipt: ...

    def complete(self, md5_hex: str) -> RemoteFile: ...

    def abort(self) -> None:
        """Best effort: free what the server holds for this session."""


class Backend(Protocol):
    name: str
    part_size: int
    single_request_max: int
    """files of at most this many bytes go in one request with their MD5 (-1: never)"""

    def open_session(self, item: UploadItem, *, resume: str | None) -> Session:
        """A new session (``resume`` None) or the stored one; raises SessionGone."""

    def upload_whole(self, item: UploadItem, body: BinaryIO, md5_hex: str) -> RemoteFile: ...

    def is_retryable(self, exc: BaseException) -> bool: ...

    def retry_reason(self, exc: BaseException) -> str:
        """A short label for metrics and logs: '5xx', '429', 'timeout', 'connection'."""

    def close(self) -> None: ...
