"""Fixtures the receiver's integration tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd.server import EmbeddedReceiver
from tests.support.receiver import running


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The folder a test's receiver stores into."""
    return tmp_path / "root"


@pytest.fixture
def server(root: Path) -> Iterator[EmbeddedReceiver]:
    """A receiver on 127.0.0.1 storing into ``root``, with the test token (``AUTH``)."""
    with running(root) as receiver:
        yield receiver
