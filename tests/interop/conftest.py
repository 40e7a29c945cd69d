"""Interop fixtures: a real drf-chunked-upload server (see tests/support/drf.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.drf import DrfServer


@pytest.fixture(scope="session")
def drf_server() -> Iterator[DrfServer]:
    """A running drf-chunked-upload server shared by the session; use unique filenames.

    ``.url`` is the ``…/chunked_upload/`` endpoint, ``.token`` the DRF token
    (``Authorization: Token <token>``), ``.completed()`` maps filename -> stored MD5.
    """
    server = DrfServer.start()
    try:
        yield server
    finally:
        server.stop()
