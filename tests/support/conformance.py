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
from typing import Protocol

from syncd.upload.base import AuthRejected, SessionGone, StorageFull, TransientError
from syncd.upload.chunked import ChunkedBackend
from syncd.upload.registry import build_backend
from tests.support.engine import EngineRig
from tests.support.fake_backend import FakeServer, FakeSettings
from tests.support.fault_proxy import FaultProxy, Match, Respond, Rule
from tests.support.files import md5_of

PART = 64 * 1024


class Target(Protocol):
    name: str
    part: int
    accepts_empty: bool
    can_abort: bool
    """the server can delete a session (drf-chunked-upload cannot: it expires them)"""

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


def unique_name(tmp: Path, stem: str) -> str:
    return f"conf/{re.sub(r'[^A-Za-z0-9_-]', '_', tmp.name)}/{stem}"


__all__ = ["PART", "DrfTarget", "FakeTarget", "ReceiverTarget", "SessionGone", "Target", "md5_of", "unique_name"]
