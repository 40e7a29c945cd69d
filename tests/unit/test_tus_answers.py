"""What each tus answer means for the engine: one table, from status code to error."""

from __future__ import annotations

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from syncd.upload.base import AuthRejected, PermanentError, SessionGone, StorageFull, TransientError
from syncd.upload.tus import raise_for_status


def answer(status: int, body: bytes = b"", **headers: str) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = body
    resp.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return resp


@pytest.mark.parametrize("status, on_upload, error, reason", [
    (401, True, AuthRejected, None),
    (403, False, AuthRejected, None),
    (404, True, SessionGone, None),
    (410, True, SessionGone, None),
    (404, False, PermanentError, None),  # the creation endpoint itself is wrong
    (413, False, PermanentError, None),
    (507, True, StorageFull, None),
    (460, True, TransientError, "checksum"),
    (429, True, TransientError, "throttled"),
    (408, True, TransientError, "timeout"),
    (503, True, TransientError, "server"),
    (400, True, PermanentError, None),
])
def test_status_to_error(status, on_upload, error, reason):
    with pytest.raises(error) as caught:
        raise_for_status(answer(status, b"the server's words"), what="PATCH", on_upload=on_upload)
    assert type(caught.value) is error
    if reason is not None:
        assert caught.value.reason == reason
    assert "\n" not in str(caught.value)


def test_413_is_not_storage_full_and_keeps_nothing():
    with pytest.raises(PermanentError) as caught:
        raise_for_status(answer(413), what="POST", on_upload=False)
    assert not isinstance(caught.value, StorageFull) and not caught.value.keep_session


def test_retry_after_is_honoured():
    with pytest.raises(TransientError) as caught:
        raise_for_status(answer(429, Retry_After="7"), what="PATCH", on_upload=True)
    assert caught.value.retry_after == 7.0


@given(st.integers(200, 299))
def test_every_2xx_is_fine(status):
    raise_for_status(answer(status), what="HEAD", on_upload=True)


@given(st.integers(300, 599))
def test_every_other_answer_is_one_of_the_contract_errors(status):
    with pytest.raises((PermanentError, SessionGone, TransientError)):
        raise_for_status(answer(status, b"x" * 1000), what="PATCH", on_upload=True)
