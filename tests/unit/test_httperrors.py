"""The failure contract for HTTP answers, shared by the chunked and tus backends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.upload.base import AuthRejected, PermanentError, SessionGone, StorageFull, TransientError
from syncd.upload.httperrors import raise_for_http_status


def failure(status: int, **kw) -> Exception:
    with pytest.raises(Exception) as info:
        raise_for_http_status(status, "why", **{"retry_after": None, "gone": None, **kw})
    return info.value


@given(st.integers(300, 599))
def test_every_failed_status_fails_fast_or_retries_never_both(status: int) -> None:
    err = failure(status)
    if status in (408, 429) or (500 <= status < 600 and status != 507):
        assert isinstance(err, TransientError)
    else:
        assert isinstance(err, PermanentError)  # 413 and 507 among them: never hammered


def test_what_each_status_means() -> None:
    assert isinstance(failure(401), AuthRejected) and isinstance(failure(403), AuthRejected)
    assert isinstance(failure(507), StorageFull)
    assert str(failure(413)) == "too large for the server (HTTP 413): why"
    assert type(failure(404)) is PermanentError  # no session to lose
    assert str(failure(410, gone="upload is gone")) == "upload is gone"
    assert isinstance(failure(410, gone="upload is gone"), SessionGone)
    assert str(failure(500, what="PATCH")) == "PATCH: HTTP 500: why"
    assert failure(429, retry_after="7").retry_after == 7.0
    assert failure(503).reason == "server" and failure(408).reason == "timeout"
