"""The servers a daemon test can upload to, behind one small interface, so that every
end-to-end test runs against the built-in receiver and the real drf-chunked-upload."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from tests.support.drf import DrfServer
from tests.support.files import md5_of


class ReceiverPeer:
    name = "receiver"
    accepts_empty_files = True

    def __init__(self, root: Path, **settings):
        """``settings``: more ``ReceiverSettings`` (``max_size``...)."""
        from syncd.server import EmbeddedReceiver, ReceiverSettings

        self.root = root
        self.token = secrets.token_urlsafe(16)
        self.receiver = EmbeddedReceiver(ReceiverSettings(root=root, port=0, token=self.token,
                                                          **{"min_free": 0, **settings}))
        self.receiver.start()
        self.url = self.receiver.url
        self.port = self.receiver.port

    def stored_md5(self, remote_name: str) -> str | None:
        path = self.root / remote_name
        return md5_of(path) if path.is_file() else None

    def completions(self, remote_name: str) -> int | None:
        """How many different files the server completed under this name (None: unknown)."""
        target = self.root / remote_name
        if not target.parent.exists():
            return 0
        # the file itself, and the receiver's conflict renames "name (N).ext"
        pattern = re.compile(re.escape(target.stem) + r"( \(\d+\))?" + re.escape(target.suffix) + "$")
        return sum(1 for p in target.parent.iterdir() if p.is_file() and pattern.match(p.name))

    def stop(self) -> None:
        self.receiver.stop()


class DrfPeer:
    name = "drf"
    accepts_empty_files = False

    def __init__(self, server: DrfServer):
        self.server = server
        self.url = server.url
        self.token = server.token
        self.port = server.port

    def stored_md5(self, remote_name: str) -> str | None:
        return self.server.completed().get(remote_name)

    def completions(self, remote_name: str) -> int | None:
        return len(self.server.completed_sessions(remote_name))

    def stop(self) -> None:
        pass  # the session-wide server outlives the test
