"""``target``: every backend the conformance suite runs against. A new protocol adds its
targets here (a class in tests/support/conformance.py and one ``param``)."""

from __future__ import annotations

import pytest

from tests.support.conformance import DrfTarget, FakeTarget, ReceiverTarget, TusTarget
from tests.support.fake_backend import registered


@pytest.fixture(params=["fake", "receiver", pytest.param("drf", marks=pytest.mark.interop), "tus",
                        "tus-checksum"])
def target(request, tmp_path):
    if request.param == "fake":
        made = FakeTarget()
        with registered(made.server):
            yield made
        return
    if request.param.startswith("tus"):
        made = TusTarget(tmp_path / "tus", checksum=request.param == "tus-checksum")
    elif request.param == "receiver":
        made = ReceiverTarget(tmp_path / "received")
    else:
        made = DrfTarget(request.getfixturevalue("drf_server"))
    try:
        yield made
    finally:
        made.close()
