"""``target``: every backend the conformance suite runs against. A new protocol adds its
targets here (a class in tests/support/conformance.py and one ``param``)."""

from __future__ import annotations

import pytest

from tests.support.conformance import DrfTarget, FakeTarget, ReceiverTarget, S3Target, TusTarget
from tests.support.fake_backend import registered

S3 = ("rclone", "moto", "s3rver")


@pytest.fixture(params=["fake", "receiver", pytest.param("drf", marks=pytest.mark.interop), "tus", "tus-checksum",
                        *(pytest.param(name, marks=pytest.mark.s3) for name in S3)])
def target(request, tmp_path):
    if request.param == "fake":
        made = FakeTarget()
        with registered(made.server):
            yield made
        return
    if request.param.startswith("tus"):
        made = TusTarget(tmp_path / "tus", checksum=request.param == "tus-checksum")
    elif request.param in S3:
        made = S3Target(request.getfixturevalue(f"{request.param}_s3"))
    elif request.param == "receiver":
        made = ReceiverTarget(tmp_path / "received")
    else:
        made = DrfTarget(request.getfixturevalue("drf_server"))
    try:
        yield made
    finally:
        made.close()
