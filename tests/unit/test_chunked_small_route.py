"""Which path a small whole-file POST of the chunked backend takes: http.client alone for an
http:// target, urllib3 for https://, and requests itself when the environment names a proxy
or ~/.netrc credentials for the target (requests applies those; the direct paths do not)."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.upload.chunked import ChunkedBackend
from syncd.upload.plainhttp import PlainConnections


def backend(url: str, token: str | None = "t") -> ChunkedBackend:
    return ChunkedBackend("main", url=url, token=token, part_size=1024**2)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path: Path):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_http_goes_through_http_client_alone() -> None:
    b = backend("http://127.0.0.1:9/chunked_upload/")
    assert isinstance(b._plain, PlainConnections) and b._pool is None
    b.close()


def test_https_goes_through_urllib3() -> None:
    b = backend("https://127.0.0.1:9/chunked_upload/")
    assert b._plain is None and b._pool is not None
    b.close()


def test_a_proxy_in_the_environment_leaves_it_to_requests(monkeypatch) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:3128")
    b = backend("http://127.0.0.1:9/chunked_upload/")
    assert b._plain is None and b._pool is None
    b.close()


def test_netrc_credentials_without_a_token_leave_it_to_requests(monkeypatch, tmp_path: Path) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login u password p\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert backend("http://127.0.0.1:9/chunked_upload/", token=None)._plain is None
    with_token = backend("http://127.0.0.1:9/chunked_upload/", token="t")  # the token wins over ~/.netrc
    assert with_token._plain is not None
    with_token.close()
