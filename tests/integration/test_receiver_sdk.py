"""What synapse-sdk's ``create_chunked_upload`` sends, against the receiver: the stored
files' MD5s must match, at the sizes around its 50 MiB chunk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import requests

from tests.support.files import md5_of
from tests.support.receiver import (
    TOKEN,
    post_whole,
    random_file,
    running,
)
from tests.support.synapse_client import DEFAULT_CHUNK_SIZE, upload_file

MiB = 1024 * 1024


@pytest.mark.parametrize(
    "size",
    [
        1,
        50 * MiB,
        50 * MiB + 1,
        pytest.param(300 * MiB, marks=pytest.mark.slow),
    ],
    ids=["1B", "50MiB", "50MiB+1", "300MiB"],
)
def test_sdk_upload_is_stored_intact(tmp_path: Path, size: int) -> None:
    assert DEFAULT_CHUNK_SIZE == 50 * MiB
    source = tmp_path / "source.bin"
    md5 = random_file(source, size)
    root = tmp_path / "root"
    with running(root) as server:
        answer = upload_file(server.url, source, token=TOKEN, filename=f"sdk/{size}.bin")
    assert (answer["status"], answer["size"], answer["md5"]) == (2, size, md5)
    assert answer["path"] == f"sdk/{size}.bin"
    assert md5_of(root / answer["path"]) == md5


def test_sdk_access_token_header(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    md5 = random_file(source, 3 * MiB)
    with running(tmp_path / "root") as server:
        answer = upload_file(server.url, source, access_token=TOKEN, chunk_size=MiB)
    assert answer["md5"] == md5 and answer["path"] == "source.bin"


def test_empty_file(tmp_path: Path) -> None:
    """The SDK posts only the md5 for an empty file (drf answers 400, so does the
    receiver); a whole-file POST with an empty ``file`` part stores it."""
    source = tmp_path / "empty.bin"
    source.write_bytes(b"")
    root = tmp_path / "root"
    with running(root) as server:
        with pytest.raises(requests.HTTPError) as info:
            upload_file(server.url, source, token=TOKEN)
        assert info.value.response.status_code == 400
        assert info.value.response.json() == {"detail": "No chunk file was submitted"}
        answer = post_whole(server.url, b"", filename="empty.bin", md5=hashlib.md5(b"").hexdigest())
    assert answer.status_code == 200, answer.text
    assert (answer.json()["size"], answer.json()["md5"]) == (0, hashlib.md5(b"").hexdigest())
    assert (root / "empty.bin").read_bytes() == b""
