"""What the upload engine and a protocol module say to each other.

A protocol module (``chunked``, ``s3``, ``tus``) implements ``Backend`` and ``Session`` and
raises only the errors below: it translates its library's exceptions (requests, botocore)
at its boundary, so the engine never looks at HTTP. Whether a failure is worth another try
is therefore the protocol's call (it raises ``TransientError``); when and how often is
``syncd.upload.retry``'s; what it means for the file is ``syncd.upload.outcomes``'.

The shape follows rclone's ``OpenChunkWriter``: the backend states per file what it can do
(``Capabilities``), the engine plans numbered parts from that and drives a session that
sends parts, lists what the server holds, completes and aborts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from syncd import checksums

Verifies = Literal["md5", "sha256", "part-checksum", "size"]
"""What the server itself checks of a finished upload: the whole file's MD5 (chunked) or
SHA-256 (``syncd serve``, when asked), each part's checksum (S3, tus with the checksum
extension), or only the byte count (plain tus)."""

KiB, MiB, GiB = 1024, 1024**2, 1024**3


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do for one file; the engine fits its part plan to it."""

    part_size: int
    """the preferred part size (the target's ``part_size``)"""
    min_part: int = 1
    """the smallest part the server accepts, the last one excepted"""
    max_part: int = 5 * GiB
    max_parts: int = 10_000
    concurrency: int = 1
    """parts of one file in flight at once (1 for offset protocols)"""
    verifies: Verifies = "md5"
    single_request_max: int = -1
    """files of at most this many bytes go whole in one request with their MD5 (-1: never)"""
    part_checksum: bool = False
    """the backend wants each part's MD5 before it sends the part (Content-MD5,
    Upload-Checksum): parts are then read into memory, hashed, and sent from there"""

    @property
    def checksum(self) -> str:
        """The algorithm the whole file is hashed with (``checksums.ALGORITHMS``): the one
        the server verifies, else MD5 (what the journal keeps)."""
        return self.verifies if self.verifies in checksums.ALGORITHMS else checksums.DEFAULT


@dataclass(frozen=True)
class PartPlan:
    """``size`` bytes cut into parts of ``part_size`` numbered from 1; the last may be shorter."""

    size: int
    part_size: int

    @property
    def count(self) -> int:
        return max(1, -(-self.size // self.part_size))

    def bounds(self, number: int) -> tuple[int, int]:
        """(offset, size) of part ``number``."""
        if not 1 <= number <= self.count:
            raise ValueError(f"part {number} is not in 1..{self.count}")
        offset = (number - 1) * self.part_size
        return offset, min(self.part_size, self.size - offset)


def plan_parts(size: int, caps: Capabilities) -> PartPlan:
    """The preferred part size, raised (in whole MiB) until the file fits in ``max_parts``
    and clamped to the protocol's limits: a 200 GiB file to S3 needs parts over 20 MiB."""
    part = max(caps.part_size, caps.min_part, 1)
    if size > part * caps.max_parts:
        needed = -(-size // caps.max_parts)
        part = -(-needed // MiB) * MiB
    part = min(part, caps.max_part)
    if size > part * caps.max_parts:
        raise PermanentError(f"{size} bytes do not fit in {caps.max_parts} parts of at most {caps.max_part} bytes")
    return PartPlan(size=size, part_size=part)


@dataclass(frozen=True)
class UploadItem:
    remote_name: str
    """where the file goes on the server: a relative POSIX path"""
    size: int
    key: str = ""
    """a random upload key made by syncd and journaled before the first request, so that a
    server that supports it (``syncd serve``) can answer a repeated request idempotently"""
    mtime_ns: int = 0
    part_size: int = 0
    """the plan's part size (0 for a whole-file upload)"""
    checksum: str = checksums.DEFAULT
    """the algorithm the engine hashes the whole file with (the plan's ``checksum``, or a
    resumed session's)"""


@dataclass(frozen=True)
class BatchLimit:
    """How many whole files one request may carry together (``upload_batch``), and how big
    each may be; as far as the backend knows without asking the server."""

    files: int = 1
    """1: one file per request"""
    file_max: int = 0
    request_max: int = 0
    """the most bytes of files one request carries (so a batch in flight, and what a crash
    may cost, is no more than a part)"""

    def takes(self, size: int) -> bool:
        return self.files > 1 and size <= self.file_max

    def split(self, sizes: Sequence[int]) -> list[range]:
        """Consecutive runs of files (by index) that each fit in one request."""
        runs: list[range] = []
        start, total = 0, 0
        for i, size in enumerate(sizes):
            if i > start and (i - start >= self.files or total + size > self.request_max):
                runs.append(range(start, i))
                start, total = i, 0
            total += size
        if start < len(sizes):
            runs.append(range(start, len(sizes)))
        return runs


NO_BATCH = BatchLimit()


@dataclass(frozen=True)
class WholeFile:
    """One file of a batch: its bytes, read and hashed once, go as they are."""

    item: UploadItem
    data: bytes
    md5_hex: str


@dataclass(frozen=True)
class Part:
    """One try of one part: ``body`` is a fresh stream of exactly ``size`` bytes."""

    number: int
    offset: int
    size: int
    body: BinaryIO
    md5: str | None = None
    """the part's MD5 (hex), when the backend asked for part checksums"""


@dataclass(frozen=True)
class PartReceipt:
    """A part the server holds, as the server describes it."""

    number: int
    size: int
    etag: str | None = None
    """what the server said of the part (an S3 ETag, a checksum); None if nothing"""
    md5: str | None = None
    """the part's MD5 (hex) when the server's answer tells it: compared with the local
    part's MD5 on resume, so a part the server holds with other bytes is sent again"""


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    md5: str | None
    location: str | None = None
    verified: str = "md5"
    """what was checked before the upload was called complete: ``md5`` or ``sha256`` (the
    server's checksum of the whole file), ``part-checksum``, ``read-back``, or ``size``"""


# --- errors ---------------------------------------------------------------------------


class UploadError(Exception):
    """Base of the errors a backend raises. ``str()`` is one line for logs and status."""


class TransientError(UploadError):
    """Worth another try: a server error, throttling, a timeout, a dropped connection.

    ``reason`` is a short label for metrics and logs, from ``RETRY_REASONS``."""

    def __init__(self, message: str, *, reason: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


RETRY_REASONS = ("server", "throttled", "timeout", "connection", "protocol", "checksum")


class PermanentError(UploadError):
    """Never worth another try without a human: too large, storage full, refused.

    ``keep_session``: the server keeps what it received (a full disk), so the session is
    not aborted and ``syncd retry`` resumes it."""

    keep_session = False


class AuthRejected(PermanentError):
    keep_session = True  # nothing could abort it anyway


class StorageFull(PermanentError):
    keep_session = True


class SessionGone(UploadError):
    """The server no longer knows the session (404 / 410, NoSuchUpload): start a new one."""


class Resync(UploadError):
    """The server's view of the session differs from the engine's: ask it again
    (``Session.committed``) and go on from there."""


class OffsetMismatch(Resync):
    def __init__(self, expected: int, provided: int, *, session_url: str | None = None):
        super().__init__(f"server expected offset {expected}, not {provided}")
        self.expected = expected
        self.session_url = session_url
        """where the session lives, when the server named it (a keyed first part)"""


class ChecksumMismatch(UploadError):
    """The server's checksum of the finished file differs from ours."""


class Interrupted(Exception):
    """The daemon is stopping; the session stays resumable."""


class FileChanged(Exception):
    """The local file changed (or was truncated) while it was being uploaded."""


class FileVanished(Exception):
    """The local file is gone."""


# --- the interface --------------------------------------------------------------------


class Session(Protocol):
    handle: str | None
    """what the journal keeps to resume; None until the server has made the session (the
    engine journals it as soon as it is set)"""
    checksum: str | None
    """the algorithm the server verifies this session's whole file with, once it said
    (a resumed session goes on with the one it was made with); None: the item's"""

    def committed(self) -> Mapping[int, PartReceipt]:
        """The parts the server holds. The server's view wins over the journal's."""

    def send_part(self, part: Part) -> PartReceipt: ...

    def complete(self, parts: Sequence[PartReceipt], md5_hex: str) -> RemoteFile:
        """Finish the upload of ``parts`` (all of them, in order) and check the result
        against the whole file's digest (as ``checksums.tag`` writes it: plain MD5 hex
        unless the item's ``checksum`` is another) as far as the server allows; raises
        ChecksumMismatch."""

    def abort(self) -> None:
        """Best effort: free what the server holds for this session."""


class Backend(Protocol):
    name: str

    def plan(self, item: UploadItem) -> Capabilities: ...

    def create(self, item: UploadItem) -> Session:
        """A new session; may make it on the server at once (its handle set) or with the
        first part."""

    def resume(self, item: UploadItem, handle: str | None) -> Session:
        """The session the journal kept; ``committed`` raises SessionGone if it is lost.

        ``handle`` None: the upload was journaled under ``item.key`` but no answer naming
        its session ever came back. A server that finds sessions by key (``syncd serve``)
        is asked; other protocols return ``NotStarted`` and the engine starts afresh."""

    def upload_whole(self, item: UploadItem, body: BinaryIO, md5_hex: str) -> RemoteFile: ...

    def batch_limit(self) -> BatchLimit:
        """What ``upload_batch`` takes now (``NO_BATCH``: nothing); makes no request."""

    def upload_batch(self, files: Sequence[WholeFile]) -> list[RemoteFile | UploadError]:
        """Several whole files in one request (each within ``batch_limit``): each file's own
        result, in order. Raises, as ``upload_whole`` does, only for what befell the request
        as a whole."""

    def close(self) -> None: ...


class NotStarted:
    """A session the server never named: nothing to resume, nothing to abort."""

    handle = None
    checksum = None

    def committed(self) -> Mapping[int, PartReceipt]:
        raise SessionGone("the upload's session was never made (or its answer was lost)")

    def send_part(self, part: Part) -> PartReceipt:
        raise SessionGone("the upload's session was never made")

    def complete(self, parts: Sequence[PartReceipt], md5_hex: str) -> RemoteFile:
        raise SessionGone("the upload's session was never made")

    def abort(self) -> None:
        pass


def receipts_in_order(parts: Mapping[int, PartReceipt] | Sequence[PartReceipt]) -> list[PartReceipt]:
    values = parts.values() if isinstance(parts, Mapping) else parts
    return sorted(values, key=lambda r: r.number)
