"""401 without a valid token, in every form clients send it; the token never reaches a log."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import pytest
import requests

from syncd.server import EmbeddedReceiver
from tests.support.receiver import (
    AUTH,
    TIMEOUT,
    TOKEN,
    complete,
    incoming,
    md5_hex,
    put_part,
    running,
)
from tests.support.synapse_client import sdk_headers

DATA = os.urandom(2048)


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"token   {TOKEN}"},
        sdk_headers(access_token=TOKEN),
        sdk_headers("wrong", access_token=TOKEN),  # one good credential is enough
        sdk_headers(TOKEN, tenant="acme"),
    ],
)
def test_accepted_credentials(server: EmbeddedReceiver, headers: dict[str, str]) -> None:
    answer = put_part(server.url, DATA, start=0, total=len(DATA), headers=headers)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Authentication credentials were not provided."),
        ({"Authorization": TOKEN}, "Authentication credentials were not provided."),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Authentication credentials were not provided."),
        ({"Authorization": "Token "}, "Authentication credentials were not provided."),
        ({"Authorization": "Token wrong"}, "Invalid token."),
        ({"Authorization": f"Token {TOKEN}x"}, "Invalid token."),
        ({"Authorization": f"Token {TOKEN[:-1]}"}, "Invalid token."),
        ({"Synapse-Access-Token": "Token wrong"}, "Invalid token."),
        ({"Authorization": "Token t\u00f6ken"}, "Invalid token."),
    ],
)
def test_refused_credentials(
    server: EmbeddedReceiver, root: Path, headers: dict[str, str], detail: str
) -> None:
    encoded = {k: v.encode("utf-8") for k, v in headers.items()}
    answer = put_part(server.url, DATA, start=0, total=len(DATA), headers=encoded)  # type: ignore[arg-type]
    assert answer.status_code == 401
    assert answer.json() == {"detail": detail}
    assert answer.headers["WWW-Authenticate"] == "Token"
    assert incoming(root) == []


def test_every_session_endpoint_needs_the_token(server: EmbeddedReceiver) -> None:
    doc = put_part(server.url, DATA, start=0, total=len(DATA)).json()
    url = doc["url"]
    assert requests.get(url, timeout=TIMEOUT).status_code == 401
    assert requests.post(url, json={"md5": md5_hex(DATA)}, timeout=TIMEOUT).status_code == 401
    assert requests.delete(url, timeout=TIMEOUT).status_code == 401
    assert put_part(url, DATA, start=0, total=len(DATA), headers={}).status_code == 401
    whole = requests.post(server.url, files={"file": ("x", DATA)}, data={"filename": "w"}, timeout=TIMEOUT)
    assert whole.status_code == 401
    assert complete(url, md5_hex(DATA)).status_code == 200


def test_healthz_needs_no_token(server: EmbeddedReceiver) -> None:
    assert requests.get(server.url.replace("chunked_upload/", "healthz"), timeout=TIMEOUT).ok


def test_refused_before_the_body_is_read(server: EmbeddedReceiver) -> None:
    """Headers announcing 1 GiB, no body sent: the 401 comes anyway, and the connection closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            b"PUT /chunked_upload/ HTTP/1.1\r\nHost: x\r\nAuthorization: Token nope\r\n"
            b"Content-Range: bytes 0-1073741823/1073741824\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 1073742000\r\n\r\n"
        )
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 401 ")
    assert b"Connection: close" in reply


def test_no_auth_when_asked_for(root: Path) -> None:
    with running(root, token=None) as server:
        answer = put_part(server.url, DATA, start=0, total=len(DATA), headers={})
        assert answer.status_code == 200, answer.text


def test_the_token_never_appears_in_logs(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with running(root) as server:
        doc = put_part(server.url, DATA, start=0, total=len(DATA)).json()
        complete(doc["url"], md5_hex(DATA))
        put_part(server.url, DATA, start=0, total=len(DATA), headers={"Authorization": f"Token {TOKEN}x"})
        put_part(server.url, DATA, start=5, total=len(DATA))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "stored f.bin" in text and "401" in text  # the logs did capture the receiver
    assert TOKEN not in text
    assert all(TOKEN not in repr(r.__dict__) for r in caplog.records)
    assert AUTH["Authorization"] not in text
