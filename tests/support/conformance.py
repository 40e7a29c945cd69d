"""The targets the conformance suite runs every case against, behind one interface.

Each target gives an ``EngineRig`` (journal + backend + engine) for a test, says what its
server stored, and can inject the faults the cases need: on the in-memory fake through its
knobs, on real HTTP servers through a fault-injecting proxy in front of them (the server
itself is real; the proxy only drops, refuses or loses answers).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from syncd.upload.base import AuthRejected, SessionGone, StorageFull, TransientError
from syncd.upload.chunked import ChunkedBackend
from syncd.upload.registry import build_backend
from syncd.upload.s3 import Settings as S3Settings
from tests.support.engine import EngineRig
from tests.support.fake_backend import FakeServer, FakeSettings
from tests.support.fault_proxy import FaultProxy, Match, Respond, Rule
from tests.support.files import md5_of
from tests.support.s3servers import BUCKET, S3Server

PART = 64 * 1024


class Target(Protocol):
    name: str
    part: int
    accepts_empty: bool
    can_abort: bool
    """the server can delete a session (drf-chunked-upload cannot: it expires them)"""
    cannot_resume: str | None
    """why resume cases cannot run against this server (None: they can)"""

    def rig(self, tmp: Path, *, wrong_token: bool = False) -> EngineRig: ...
    def stored_md5(self, remote_name: str) -> str | None: ...
    def completions(self, remote_name: str) -> int: ...
    def open_sessions(self, remote_name: str) -> int: ...
    def fail_part(self, number: int, *, lost_answer: bool = False) -> None: ...
    def lose_completion_answer(self) -> None: ...
    def lose_session(self) -> None: ...
    def refuse_part(self, number: int, status: int) -> None: ...
    def close(self) -> None: ...


class FakeTarget:
    """The in-memory S3-like backend: parallel parts, ETags, a listing, a minimum part size."""

    name = "fake"
    part = PART
    accepts_empty = True
    can_abort = True
    cannot_resume = None

    def __init__(self) -> None:
        self.server = FakeServer(f"fake-{secrets.token_hex(4)}", min_part=PART, single_request_max=0)
        self._rigs: list[EngineRig] = []

    def rig(self, tmp: Path, *, wrong_token: bool = False) -> EngineRig:
        if wrong_token:
            self.server.fail("create", AuthRejected("authentication rejected (HTTP 403)"), times=10**6)
        backend = build_backend("t", FakeSettings(protocol="fake", server=self.server.name, part_size=self.part))
        rig = EngineRig(tmp, backend=backend)
        self._rigs.append(rig)
        return rig

    def stored_md5(self, remote_name: str) -> str | None:
        import hashlib

        data = self.server.objects.get(remote_name)
        return None if data is None else hashlib.md5(data).hexdigest()

    def completions(self, remote_name: str) -> int:
        return self.server.completions.get(remote_name, 0)

    def open_sessions(self, remote_name: str) -> int:
        return sum(1 for u in self.server.open_uploads() if u.name == remote_name)

    def fail_part(self, number: int, *, lost_answer: bool = False) -> None:
        self.server.fail("part", TransientError("HTTP 503: slow down", reason="server"), after=lost_answer,
                         part=number)

    def lose_completion_answer(self) -> None:
        self.server.fail("complete", TransientError("connection reset", reason="connection"), after=True)

    def lose_session(self) -> None:
        for upload in list(self.server.uploads.values()):
            self.server.forget(upload.handle)

    def refuse_part(self, number: int, status: int) -> None:
        from syncd.upload.base import PermanentError

        error = StorageFull("server storage is full (HTTP 507)") if status == 507 else \
            PermanentError(f"too large for the server (HTTP {status})")
        self.server.fail("part", error, part=number)

    def close(self) -> None:
        pass


class _HttpTarget:
    """A real chunked-protocol server behind a fault proxy."""

    name = ""
    part = PART
    accepts_empty = True
    can_abort = True
    cannot_resume = None
    url = ""
    token = ""

    def _start_proxy(self) -> None:
        self.proxy = FaultProxy(self.url, seed=1, rules=[]).start()
        self._rules: list[Rule] = []

    def rig(self, tmp: Path, *, wrong_token: bool = False) -> EngineRig:
        backend = ChunkedBackend("t", url=self.proxy.url_for(self.url),
                                 token="not-the-token" if wrong_token else self.token,
                                 part_size=self.part, connect_timeout=2, read_timeout=10)
        return EngineRig(tmp, backend=backend)

    def _add(self, rule: Rule) -> None:
        self._rules.append(rule)
        self.proxy.set_rules(self._rules)

    def _part_match(self, number: int) -> Match:
        start = (number - 1) * self.part
        return Match(method="PUT", when=lambda info: info.range is not None and info.range[0] == start)

    def fail_part(self, number: int, *, lost_answer: bool = False) -> None:
        self._add(Rule(Respond(504 if lost_answer else 503, forward=lost_answer), match=self._part_match(number),
                       times=1))

    def lose_completion_answer(self) -> None:
        self._add(Rule(Respond(504, forward=True), match=Match(method="POST", path=r"/chunked_upload/.+"), times=1))

    def lose_session(self) -> None:
        self._add(Rule(Respond(404, detail="Not found."), match=Match(method="GET"), times=1))

    def refuse_part(self, number: int, status: int) -> None:
        self._add(Rule(Respond(status, detail="refused by the test"), match=self._part_match(number), times=1))

    def abort_requests(self) -> int:
        return sum(1 for seen in self.proxy.seen if seen.method == "DELETE")

    def close(self) -> None:
        self.proxy.stop()


class ReceiverTarget(_HttpTarget):
    name = "receiver"

    def __init__(self, root: Path):
        from tests.support.peers import ReceiverPeer

        self.peer = ReceiverPeer(root)
        self.root = root
        self.url, self.token = self.peer.url, self.peer.token
        self._start_proxy()

    def stored_md5(self, remote_name: str) -> str | None:
        return self.peer.stored_md5(remote_name)

    def completions(self, remote_name: str) -> int:
        return self.peer.completions(remote_name)

    def open_sessions(self, remote_name: str) -> int:
        return len(self.open_records(self.root, remote_name))

    @staticmethod
    def open_records(root: Path, remote_name: str | None = None) -> list[dict]:
        incoming = root / ".incoming"
        records = [json.loads(p.read_text()) for p in incoming.glob("*.json")] if incoming.is_dir() else []
        return [r for r in records if r.get("state") == "uploading"
                and (remote_name is None or r.get("filename") == remote_name)]

    def close(self) -> None:
        super().close()
        self.peer.stop()


class DrfTarget(_HttpTarget):
    name = "drf"
    accepts_empty = False  # "The submitted file is empty."
    can_abort = False  # it has no DELETE: an abandoned session stays until the server expires it

    def __init__(self, server):
        self.server = server
        self.url, self.token = server.url, server.token
        self._start_proxy()

    def stored_md5(self, remote_name: str) -> str | None:
        return self.server.completed().get(remote_name)

    def completions(self, remote_name: str) -> int:
        return len(self.server.completed_sessions(remote_name))

    def open_sessions(self, remote_name: str) -> int:
        return sum(1 for s in self.server.sessions() if s.filename == remote_name and s.status == 1)


class S3Target:
    """A real S3 server (rclone, moto, s3rver) behind a fault proxy, driven by the ``s3``
    protocol module. Faults match S3's requests by their query string: a part is
    ``PUT ?partNumber=N&uploadId=...``, a completion ``POST ?uploadId=...``."""

    part = PART
    accepts_empty = True

    def __init__(self, server: S3Server):
        self.server = server
        self.name = server.name
        self.can_abort = server.can_abort
        self.cannot_resume = None if server.can_list_parts else \
            f"{server.name} answers ListParts with 405: it cannot tell which parts it holds"
        self.prefix = f"conf-{secrets.token_hex(4)}"
        self.proxy = FaultProxy(server.url, seed=1, rules=[]).start()
        self._rules: list[Rule] = []

    def settings(self, tmp: Path, *, secret: str | None = None, access_key: str | None = None,
                 **keys: Any) -> S3Settings:
        secret_file = tmp / f"s3-secret-{secrets.token_hex(3)}"
        secret_file.write_text(secret or self.server.secret_key)
        return S3Settings(protocol="s3", bucket=BUCKET, prefix=self.prefix,
                          endpoint_url=self.proxy.url_for(self.server.url), region="us-east-1",
                          addressing_style="path", access_key_id=access_key or self.server.access_key,
                          secret_access_key_file=secret_file, part_size=self.part,
                          min_part_size=max(self.part, self.server.min_part_size), part_concurrency=3,
                          timeout={"connect": "2s", "read": "10s"}, **keys)

    def rig(self, tmp: Path, *, wrong_token: bool = False) -> EngineRig:
        if wrong_token and self.name == "moto":
            # moto checks no signature: a store that refuses the key answers 403 AccessDenied
            self._add(Rule(Respond(403, detail="AccessDenied"), match=Match()))
        # s3rver checks the key id but not the signature: both are wrong
        settings = self.settings(tmp, secret="not-the-secret" if wrong_token else None,
                                 access_key="not-the-key" if wrong_token else None)
        return EngineRig(tmp, backend=build_backend("t", settings))

    def key(self, remote_name: str) -> str:
        return f"{self.prefix}/{remote_name}"

    def _requests(self, remote_name: str) -> list:
        path = f"/{BUCKET}/{self.key(remote_name)}"
        return [s for s in self.proxy.seen if s.path == path]

    def stored_md5(self, remote_name: str) -> str | None:
        return self.server.stored_md5(self.key(remote_name))

    def completions(self, remote_name: str) -> int:
        """Objects written under the name: whole PutObjects and distinct completed uploads
        (moto answers a repeated completion 200 again; that writes nothing new)."""
        puts = completed = 0
        upload_ids = set()
        for seen in self._requests(remote_name):
            query = parse_qs(seen.query, keep_blank_values=True)
            if seen.upstream_status != 200:
                continue
            if seen.method == "PUT" and "partNumber" not in query and "x-amz-copy-source" not in seen.headers:
                puts += 1
            elif seen.method == "POST" and "uploadId" in query:
                upload_ids.add(query["uploadId"][0])
        completed = len(upload_ids)
        return puts + completed

    def open_sessions(self, remote_name: str) -> int:
        key = self.key(remote_name)
        if self.server.can_list_uploads:
            return sum(1 for u in self.server.open_uploads(key) if u["Key"] == key)
        # s3rver cannot list them: made minus completed, as the proxy saw them
        made = ended = 0
        for seen in self._requests(remote_name):
            query = parse_qs(seen.query, keep_blank_values=True)
            if seen.upstream_status == 200 and seen.method == "POST":
                made += "uploads" in query
                ended += "uploadId" in query
        return made - ended

    def abort_requests(self) -> int:
        return sum(1 for s in self.proxy.seen if s.method == "DELETE" and "uploadId=" in s.query)

    def _add(self, rule: Rule) -> None:
        self._rules.append(rule)
        self.proxy.set_rules(self._rules)

    @staticmethod
    def _part_match(number: int) -> Match:
        return Match(method="PUT", when=lambda info: parse_qs(info.query).get("partNumber") == [str(number)])

    def fail_part(self, number: int, *, lost_answer: bool = False) -> None:
        self._add(Rule(Respond(504 if lost_answer else 503, forward=lost_answer), match=self._part_match(number),
                       times=1))

    def lose_completion_answer(self) -> None:
        self._add(Rule(Respond(504, forward=True),
                       match=Match(method="POST", when=lambda info: "uploadId=" in info.query), times=1))

    def lose_session(self) -> None:
        assert self.server.abort_all(self.prefix) >= 1

    def refuse_part(self, number: int, status: int) -> None:
        self._add(Rule(Respond(status, detail="refused by the test"), match=self._part_match(number), times=1))

    def close(self) -> None:
        self.proxy.stop()


class TusTarget:
    """@tus/server with its file store, behind a fault proxy matched on method and
    ``Upload-Offset``. With ``checksum`` a proxy that stands in for a server offering the
    checksum extension sits between them (tests/support/tus_checksum_proxy.py)."""

    name = "tus"
    part = PART
    accepts_empty = True
    can_abort = True  # termination
    cannot_resume = None

    def __init__(self, root: Path, *, verify: str = "server", checksum: bool = False):
        from tests.support.tus import TusServer, new_token
        from tests.support.tus_checksum_proxy import TusChecksumProxy

        self.server = TusServer.start_in(root, token=new_token())
        self.verify = verify
        self.checksum = TusChecksumProxy(self.server.url).start() if checksum else None
        if checksum:
            self.name = "tus-checksum"
        self.proxy = FaultProxy(self.checksum.url if self.checksum else self.server.url, seed=1, rules=[]).start()
        self._rules: list[Rule] = []
        self.url = f"http://127.0.0.1:{self.proxy.port}/files"

    def rig(self, tmp: Path, *, wrong_token: bool = False) -> EngineRig:
        from syncd.upload.tus import TusBackend

        token = "not-the-token" if wrong_token else self.server.token
        backend = TusBackend("t", url=self.url, part_size=self.part, headers={"Authorization": f"Bearer {token}"},
                             verify=self.verify, connect_timeout=2, read_timeout=10)
        return EngineRig(tmp, backend=backend)

    def stored_md5(self, remote_name: str) -> str | None:
        return self.server.stored_md5(remote_name)

    def completions(self, remote_name: str) -> int:
        return len(self.server.finished(remote_name))

    def open_sessions(self, remote_name: str) -> int:
        return sum(1 for u in self.server.uploads() if u.filename == remote_name and not u.finished)

    def _add(self, rule: Rule) -> None:
        self._rules.append(rule)
        self.proxy.set_rules(self._rules)

    def _patch_at(self, number: int) -> Match:
        start = (number - 1) * self.part
        return Match(method="PATCH", when=lambda info: info.upload_offset == start)

    def _finishes(self, info) -> bool:
        """A PATCH whose body ends the upload: tus's completion."""
        length = self.server.length_of(info.path.rsplit("/", 1)[-1])
        return None not in (length, info.upload_offset, info.content_length) \
            and info.upload_offset + info.content_length == length

    def fail_part(self, number: int, *, lost_answer: bool = False) -> None:
        self._add(Rule(Respond(504 if lost_answer else 503, forward=lost_answer), match=self._patch_at(number),
                       times=1))

    def lose_completion_answer(self) -> None:
        self._add(Rule(Respond(504, forward=True), match=Match(method="PATCH", when=self._finishes), times=1))

    def lose_session(self) -> None:
        self._add(Rule(Respond(404, detail="Not found."), match=Match(method="HEAD"), times=1))

    def refuse_part(self, number: int, status: int) -> None:
        self._add(Rule(Respond(status, detail="refused by the test"), match=self._patch_at(number), times=1))

    def abort_requests(self) -> int:
        return sum(1 for seen in self.proxy.seen if seen.method == "DELETE")

    def close(self) -> None:
        try:
            self.proxy.stop()
            if self.checksum is not None:
                self.checksum.stop()
        finally:
            self.server.stop()


def unique_name(tmp: Path, stem: str) -> str:
    return f"conf/{re.sub(r'[^A-Za-z0-9_-]', '_', tmp.name)}/{stem}"


__all__ = ["PART", "DrfTarget", "FakeTarget", "ReceiverTarget", "S3Target", "SessionGone", "Target", "TusTarget",
           "md5_of", "unique_name"]
