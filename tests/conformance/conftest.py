"""``target``: every backend the conformance suite runs against. A new protocol adds its
targets here (a class in tests/support/conformance.py and one ``param``)."""

from __future__ import annotations

import pytest

from tests.support.conformance import DrfTarget, FakeTarget, ReceiverTarget
from tests.support.fake_backend import registered


@pytest.fixture(params=["fake", "receiver", pytest.param("drf", marks=pytest.mark.interop)])
def target(request, tmp_path):
    if request.param == "fake":
        made = FakeTarget()
        with registered(made.server):
            yield made
        return
    made = ReceiverTarget(tmp_path / "received") if request.param == "receiver" \
        else DrfTarget(request.getfixturevalue("drf_server"))
    try:
        yield made
    finally:
        made.close()
