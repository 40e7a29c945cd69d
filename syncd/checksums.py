"""Whole-file checksums: the algorithms a server may verify an upload with, and how a
digest is written down (the journal, logs, ``syncd status``).

MD5 is the chunked protocol's (drf-chunked-upload, the Synapse SDK), and an MD5 digest is
written as plain hex, as it always was. ``syncd serve`` verifies a session with SHA-256
instead when the client asks: the stronger check, and on a CPU with SHA extensions more
than twice as fast to compute as MD5, on both sides. Such a digest is written
``sha256:<hex>``. The receiver's side of the wire is ``syncd.server.checksums``.
"""

from __future__ import annotations

import hashlib
from typing import Any

ALGORITHMS = ("md5", "sha256")
DEFAULT = "md5"
HEADER = "Syncd-Checksum"
"""asks for an algorithm on a first part; offers SHA-256 on every answer of ``syncd serve``"""


def new_hasher(algorithm: str) -> Any:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return hashlib.new(algorithm)


def tag(algorithm: str, hexdigest: str) -> str:
    """The digest as it is written down."""
    return hexdigest if algorithm == DEFAULT else f"{algorithm}:{hexdigest}"


def split(digest: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a digest as ``tag`` wrote it."""
    algorithm, sep, hexdigest = digest.partition(":")
    return (algorithm, hexdigest) if sep else (DEFAULT, digest)


def label(digest: str | None) -> str:
    """For logs and messages: ``md5 <hex>``, ``sha256 <hex>``."""
    if digest is None:
        return "no checksum"
    algorithm, hexdigest = split(digest)
    return f"{algorithm} {hexdigest}"
