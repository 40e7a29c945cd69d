"""Shared fixtures. Guards every test: no thread may outlive the test that started it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.drf import DrfServer
from tests.support.tmp_cleanup import remove_this_runs_tmp  # noqa: F401 - a session fixture


def _live_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaked_threads():
    before = _live_threads()
    yield
    deadline = time.monotonic() + 5.0
    leaked: set[threading.Thread] = set()
    while time.monotonic() < deadline:
        leaked = _live_threads() - before
        if not leaked:
            return
        time.sleep(0.05)
    pytest.fail(f"test leaked threads: {sorted(t.name for t in leaked)}")


@pytest.fixture(scope="session")
def drf_server() -> Iterator[DrfServer]:
    """A real drf-chunked-upload server shared by the session; tests use unique filenames.

    ``.url`` is the ``.../chunked_upload/`` endpoint, ``.token`` the DRF token
    (``Authorization: Token <token>``), ``.completed()`` maps filename -> stored MD5.
    """
    server = DrfServer.start()
    try:
        yield server
    finally:
        server.stop()


def _s3_server(name: str) -> Iterator:
    from tests.support.s3servers import SERVERS

    server = SERVERS[name]().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rclone_s3() -> Iterator:
    """``rclone serve s3`` on 127.0.0.1, shared by the session; tests use their own keys."""
    yield from _s3_server("rclone")


@pytest.fixture(scope="session")
def moto_s3() -> Iterator:
    """The moto S3 server on 127.0.0.1, shared by the session."""
    yield from _s3_server("moto")


@pytest.fixture(scope="session")
def s3rver_s3() -> Iterator:
    """s3rver (npm, installed by .ci/install-s3-servers) on 127.0.0.1, shared by the session."""
    yield from _s3_server("s3rver")


@pytest.fixture(params=["receiver", pytest.param("drf", marks=pytest.mark.interop)])
def peer(request, tmp_path):
    """The server a daemon test uploads to: the built-in receiver, or real drf-chunked-upload."""
    from tests.support.peers import DrfPeer, ReceiverPeer

    if request.param == "receiver":
        peer = ReceiverPeer(tmp_path / "received")
    else:
        peer = DrfPeer(request.getfixturevalue("drf_server"))
    yield peer
    peer.stop()


@pytest.fixture
def receiver(tmp_path):
    """Only the built-in receiver, for tests whose subject does not depend on the server."""
    from tests.support.peers import ReceiverPeer

    peer = ReceiverPeer(tmp_path / "received")
    yield peer
    peer.stop()
