"""Reference client: what synapse-sdk's ``create_chunked_upload`` puts on the wire.

Source (read through the code search index, not vendored or installed):
synapse-sdk's ``synapse_sdk/clients/backend/core.py`` (``CoreClientMixin.create_chunked_upload``)
and ``synapse_sdk/clients/base.py`` (``BaseClient._request``), in three versions seen:

* oldest: ``files={'file': chunk}`` (requests then names the part's file ``file``);
* middle: the same with ``read_file_in_chunks(path)`` from ``synapse_sdk.utils.file``;
* newest: ``files={'file': ('chunk', chunk)}``, ``chunk_size`` argument, pydantic
  validation of every answer, session timeouts ``(connect=5, read=15)``.

All versions send, per chunk of ``chunk_size`` bytes (default ``1024 * 1024 * 50``), read whole
into memory::

    PUT <url>      multipart/form-data: field filename=<path.name>, file part "file"
                   Content-Range: bytes {offset}-{offset + len(chunk) - 1}/{total}

where ``url`` starts as ``<base>/chunked_upload/`` and becomes the ``url`` of each answer,
and ``offset`` starts at 0 and becomes the ``offset`` of each answer (the server's count,
not a locally computed one). Then::

    POST <session url>   Content-Type: application/json   body {"md5": "<hex of whole file>"}

``BaseClient._request`` JSON-encodes ``data`` whenever no ``files`` are given, so the final
md5 POST is a JSON body, not a form. Headers come from ``BackendClient._get_headers``:
``Authorization: Token <token>`` (``token=``), ``Synapse-Access-Token: Token <access_token>``
(``access_token=``), ``Synapse-Tenant: Token <tenant>`` (``tenant=``); the SDK uses one
``requests.Session`` for the whole upload.

An empty file yields no chunk, so the SDK goes straight to ``POST <base>/chunked_upload/``
with only the md5 (no session, no file): drf-chunked-upload answers 400
``{"detail": "No chunk file was submitted"}``. This client keeps that behaviour on purpose.

Deliberate differences from the SDK:

* the multipart file part is named ``(filename, chunk)`` instead of ``'chunk'`` / ``'file'``
  (drf-chunked-upload ignores it: the stored name comes from the ``filename`` form field);
* ``filename`` can be given (the SDK always sends ``path.name``), for nested or odd names;
* no urllib3 ``Retry`` adapter (the newest SDK retries 502/503/504 three times): this is a
  measuring baseline, failures should show;
* errors raise ``requests.HTTPError`` carrying the answer body, not the SDK's ``ClientError``.

The naive memory behaviour (one whole chunk in memory, then again inside the encoded
multipart body) is kept: benchmarks compare syncd's streaming uploader against it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import requests

DEFAULT_CHUNK_SIZE = 1024 * 1024 * 50  # synapse_sdk.utils.file.io.DEFAULT_CHUNK_SIZE
DEFAULT_TIMEOUT = (5, 15)  # the newest SDK's BaseClient default (connect, read)


def _check(response: requests.Response) -> dict[str, Any]:
    """raise_for_status, with the server's answer body in the message."""
    if not response.ok:
        raise requests.HTTPError(
            f"{response.status_code} {response.reason} for {response.request.method} "
            f"{response.url}: {response.text[:2000]}",
            response=response,
        )
    return response.json()


def sdk_headers(
    token: str | None = None,
    *,
    access_token: str | None = None,
    tenant: str | None = None,
) -> dict[str, str]:
    """The auth headers synapse-sdk's ``BackendClient._get_headers`` builds."""
    headers: dict[str, str] = {}
    if access_token:
        headers["Synapse-Access-Token"] = f"Token {access_token}"
    if token:
        headers["Authorization"] = f"Token {token}"
    if tenant:
        headers["Synapse-Tenant"] = f"Token {tenant}"
    return headers


def upload_file(
    url: str,
    path: Path,
    *,
    token: str | None = None,
    access_token: str | None = None,
    tenant: str | None = None,
    filename: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    timeout: tuple[float, float] | float | None = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Upload ``path`` to ``url`` (``.../chunked_upload/``) the way synapse-sdk does.

    Returns the JSON of the final (md5) POST. Raises ``requests.HTTPError`` on any
    non-2xx answer, with the answer's body in the message and ``.response`` set.
    """
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    path = Path(path)
    name = path.name if filename is None else filename
    total = path.stat().st_size
    headers = sdk_headers(token, access_token=access_token, tenant=tenant)
    md5 = hashlib.md5()

    with requests.Session() as session, path.open("rb") as f:
        offset = 0
        while chunk := f.read(chunk_size):
            md5.update(chunk)
            answer = _check(
                session.put(
                    url,
                    data={"filename": name},
                    files={"file": (name, chunk)},
                    headers={
                        **headers,
                        "Content-Range": f"bytes {offset}-{offset + len(chunk) - 1}/{total}",
                    },
                    timeout=timeout,
                )
            )
            offset = answer["offset"]
            url = answer["url"]
        return _check(
            session.post(
                url,
                json={"md5": md5.hexdigest()},
                headers=headers,
                timeout=timeout,
            )
        )
