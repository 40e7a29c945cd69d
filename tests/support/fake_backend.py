"""An in-memory numbered-part backend that plays S3: parts in parallel, ETags that are the
parts' MD5s, a listing of parts, a minimum part size, and a completion that checks the
parts it is given. Registered as ``protocol: fake`` from outside the engine, as any new
protocol would be, with fault knobs for the conformance suite.

    server = FakeServer("s1", min_part=5 * 1024)
    with registered(server):
        backend = build_backend("t", FakeSettings(protocol="fake", server="s1", part_size=...))
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import BinaryIO, Literal

from syncd.config import TargetSettings
from syncd.upload import registry
from syncd.upload.base import (
    NO_BATCH,
    AuthRejected,
    BatchLimit,
    Capabilities,
    ChecksumMismatch,
    Part,
    PartReceipt,
    PermanentError,
    RemoteFile,
    SessionGone,
    StorageFull,
    TransientError,
    UploadError,
    UploadItem,
    WholeFile,
)

_servers: dict[str, FakeServer] = {}


class FakeSettings(TargetSettings):
    protocol: Literal["fake"] = "fake"
    server: str
    """the FakeServer (by name) this target talks to"""
    concurrency: int = 3


@dataclass
class FakeUpload:
    handle: str
    name: str
    parts: dict[int, bytes] = field(default_factory=dict)
    done: bool = False
    aborted: bool = False


@dataclass
class Fault:
    """Raise ``error`` (an exception instance) when ``op`` happens (``create``, ``part``,
    ``list``, ``complete``, ``whole``), ``times`` times; with ``after`` the server acts
    first and the answer is lost; ``part`` limits it to one part number."""

    op: str
    error: BaseException
    times: int = 1
    after: bool = False
    part: int | None = None


class FakeServer:
    def __init__(self, name: str, *, min_part: int = 1, max_parts: int = 10_000, single_request_max: int = -1):
        self.name = name
        self.min_part = min_part
        self.max_parts = max_parts
        self.single_request_max = single_request_max
        self.uploads: dict[str, FakeUpload] = {}
        self.objects: dict[str, bytes] = {}
        self.completions: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.part_requests: list[int] = []
        self.max_in_flight = 0
        self.part_latency = 0.0
        """seconds each part request takes (so parts sent in parallel are seen in flight together)"""
        self.batch_files = 1
        """whole files one request may carry (``upload_batch``); 1: no batches"""
        self.batches: list[list[tuple[str, str]]] = []
        """each batch request: its files' (name, upload key)"""
        self.whole_keys: list[tuple[str, str]] = []
        """each whole-file request: (name, upload key)"""
        self.file_errors: dict[str, list[BaseException]] = {}
        """per name: what the next batches answer for that file instead of storing it"""
        self.before_batch: Callable[[], None] | None = None
        self._in_flight = 0
        self._ids = itertools.count(1)
        self.lock = threading.Lock()

    # --- knobs -------------------------------------------------------------------------

    def fail(self, op: str, error: BaseException, *, times: int = 1, after: bool = False,
             part: int | None = None) -> None:
        self.faults.append(Fault(op, error, times, after, part))

    def lose_parts(self, handle: str, numbers: Sequence[int]) -> None:
        with self.lock:
            for n in numbers:
                self.uploads[handle].parts.pop(n, None)

    def forget(self, handle: str) -> None:
        with self.lock:
            del self.uploads[handle]

    def open_uploads(self) -> list[FakeUpload]:
        return [u for u in self.uploads.values() if not u.done and not u.aborted]

    def _fault(self, op: str, *, after: bool, part: int | None = None) -> None:
        with self.lock:
            for fault in self.faults:
                if fault.op == op and fault.after == after and fault.times > 0 \
                        and (fault.part is None or fault.part == part):
                    fault.times -= 1
                    raise fault.error

    # --- the "wire" ----------------------------------------------------------------------

    def create(self, name: str) -> str:
        self._fault("create", after=False)
        with self.lock:
            handle = f"{self.name}-up-{next(self._ids)}"
            self.uploads[handle] = FakeUpload(handle, name)
        self._fault("create", after=True)
        return handle

    def _upload(self, handle: str) -> FakeUpload:
        upload = self.uploads.get(handle)
        if upload is None or upload.aborted:
            raise SessionGone(f"no such upload {handle}")
        return upload

    def put_part(self, handle: str, number: int, data: bytes, md5: str | None) -> str:
        self._fault("part", after=False, part=number)
        with self.lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.part_latency:
                time.sleep(self.part_latency)
            if md5 is not None and hashlib.md5(data).hexdigest() != md5:
                raise TransientError("BadDigest", reason="checksum")
            with self.lock:
                self._upload(handle).parts[number] = data
                self.part_requests.append(number)
        finally:
            with self.lock:
                self._in_flight -= 1
        self._fault("part", after=True, part=number)
        return hashlib.md5(data).hexdigest()

    def list_parts(self, handle: str) -> dict[int, bytes]:
        self._fault("list", after=False)
        with self.lock:
            return dict(self._upload(handle).parts)

    def complete(self, handle: str, numbers_and_etags: list[tuple[int, str | None]]) -> bytes:
        self._fault("complete", after=False)
        with self.lock:
            upload = self.uploads.get(handle)
            if upload is not None and upload.done:  # a repeated completion (a lost answer)
                return self.objects[upload.name]
            upload = self._upload(handle)
            numbers = [n for n, _ in numbers_and_etags]
            if numbers != list(range(1, len(numbers) + 1)) or set(numbers) != set(upload.parts):
                raise PermanentError(f"InvalidPart: completion names {numbers}, server holds {sorted(upload.parts)}")
            for n, etag in numbers_and_etags:
                if etag is not None and etag != hashlib.md5(upload.parts[n]).hexdigest():
                    raise PermanentError(f"InvalidPart: part {n} ETag {etag} does not match")
                if n != len(numbers) and len(upload.parts[n]) < self.min_part:
                    raise PermanentError(f"EntityTooSmall: part {n} is {len(upload.parts[n])} bytes")
            data = b"".join(upload.parts[n] for n in numbers)
            upload.done = True
            self.objects[upload.name] = data
            self.completions[upload.name] = self.completions.get(upload.name, 0) + 1
        self._fault("complete", after=True)
        return data

    def abort(self, handle: str) -> None:
        with self.lock:
            if handle in self.uploads:
                self.uploads[handle].aborted = True

    def put_whole(self, name: str, data: bytes, *, key: str = "") -> None:
        self._fault("whole", after=False)
        with self.lock:
            self.whole_keys.append((name, key))
            self.objects[name] = data
            self.completions[name] = self.completions.get(name, 0) + 1
        self._fault("whole", after=True)

    def put_batch(self, files: Sequence[WholeFile]) -> list[RemoteFile | UploadError]:
        if self.before_batch is not None:
            self.before_batch()
        with self.lock:
            self.batches.append([(f.item.remote_name, f.item.key) for f in files])
        self._fault("batch", after=False)
        results: list[RemoteFile | UploadError] = []
        with self.lock:
            for f in files:
                name = f.item.remote_name
                if self.file_errors.get(name):
                    results.append(self.file_errors[name].pop(0))
                elif hashlib.md5(f.data).hexdigest() != f.md5_hex:
                    results.append(ChecksumMismatch(f"{name}: checksum does not match"))
                else:
                    self.objects[name] = f.data
                    self.completions[name] = self.completions.get(name, 0) + 1
                    results.append(RemoteFile(name=name, size=len(f.data), md5=f.md5_hex))
        self._fault("batch", after=True)
        return results


class FakeSession:
    checksum = None
    def __init__(self, server: FakeServer, item: UploadItem, handle: str | None):
        self._server = server
        self._item = item
        self.handle = handle

    def committed(self) -> dict[int, PartReceipt]:
        return {n: PartReceipt(number=n, size=len(data), etag=hashlib.md5(data).hexdigest(),
                               md5=hashlib.md5(data).hexdigest())
                for n, data in self._server.list_parts(self.handle).items()}

    def send_part(self, part: Part) -> PartReceipt:
        data = b""
        while chunk := part.body.read(64 * 1024):
            data += chunk
        etag = self._server.put_part(self.handle, part.number, data, part.md5)
        return PartReceipt(number=part.number, size=len(data), etag=etag, md5=etag)

    def complete(self, parts: Sequence[PartReceipt], md5_hex: str) -> RemoteFile:
        data = self._server.complete(self.handle, [(p.number, p.etag) for p in parts])
        actual = hashlib.md5(data).hexdigest()
        if actual != md5_hex:
            raise ChecksumMismatch(f"object MD5 {actual}, expected {md5_hex}")
        return RemoteFile(name=self._item.remote_name, size=len(data), md5=actual, verified="part-checksum")

    def abort(self) -> None:
        self._server.abort(self.handle)


class FakeBackend:
    def __init__(self, name: str, settings: FakeSettings):
        self.name = name
        self.settings = settings
        self.server = _servers[settings.server]

    def plan(self, item: UploadItem) -> Capabilities:
        return Capabilities(part_size=self.settings.part_size, min_part=self.server.min_part,
                            max_parts=self.server.max_parts, concurrency=self.settings.concurrency,
                            verifies="part-checksum", single_request_max=self.server.single_request_max,
                            part_checksum=True)

    def batch_limit(self) -> BatchLimit:
        files, file_max = self.server.batch_files, self.server.single_request_max
        return BatchLimit(files, file_max, self.settings.part_size) if files > 1 and file_max > 0 else NO_BATCH

    def upload_batch(self, files: Sequence[WholeFile]) -> list[RemoteFile | UploadError]:
        return [replace(r, verified="part-checksum") if isinstance(r, RemoteFile) else r
                for r in self.server.put_batch(files)]

    def create(self, item: UploadItem) -> FakeSession:
        return FakeSession(self.server, item, self.server.create(item.remote_name))

    def resume(self, item: UploadItem, handle: str) -> FakeSession:
        return FakeSession(self.server, item, handle)

    def upload_whole(self, item: UploadItem, body: BinaryIO, md5_hex: str) -> RemoteFile:
        data = body.read()
        if hashlib.md5(data).hexdigest() != md5_hex:
            raise TransientError("BadDigest", reason="checksum")
        self.server.put_whole(item.remote_name, data, key=item.key)
        return RemoteFile(name=item.remote_name, size=len(data), md5=md5_hex, verified="part-checksum")

    def close(self) -> None:
        pass


ENTRY = registry.ProtocolEntry("fake", FakeSettings, FakeBackend)


@contextmanager
def registered(*servers: FakeServer) -> Iterator[None]:
    """``protocol: fake`` is known, and these servers can be named by its targets."""
    for server in servers:
        _servers[server.name] = server
    registry.register(ENTRY)
    try:
        yield
    finally:
        registry.unregister("fake")
        for server in servers:
            _servers.pop(server.name, None)


__all__ = ["AuthRejected", "FakeServer", "FakeSettings", "StorageFull", "registered"]
