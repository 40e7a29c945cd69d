"""Test files: random content of a given size, and the MD5 (or another checksum) of a file on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def md5_of(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def is_digest_of(digest: str, path: Path) -> bool:
    """Whether ``digest`` (as the engine returns it: plain MD5 hex, or ``sha256:<hex>``) is
    the file's own."""
    algorithm, _, hexdigest = digest.rpartition(":")
    return hexdigest == md5_of(path, algorithm or "md5")


def write_random(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return path
