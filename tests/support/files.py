"""Test files: random content of a given size, and the MD5 (or another checksum) of a file on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from syncd import checksums


def md5_of(path: Path) -> str:
    return digest_of(path, "md5")


def digest_of(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def is_digest_of(digest: str, path: Path) -> bool:
    """Whether ``digest`` (as the engine returns it: plain MD5 hex, or ``sha256:<hex>``) is
    the file's own."""
    algorithm, hexdigest = checksums.split(digest)
    return hexdigest == digest_of(path, algorithm)


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return path
