"""What one receiver is told: where to store, where to listen, which limits to enforce."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

ON_CONFLICT_CHOICES = ("rename", "overwrite", "fail")

_BASE_PATH_RE = re.compile(r"^/(?:[A-Za-z0-9._~!$&'()*+,;=:@%-]+/)*$")


def normalize_base_path(value: str) -> str:
    """``ingest`` / ``/ingest`` / ``/ingest/`` -> ``/ingest/``; raises ValueError when unusable."""
    text = value.strip()
    if not text.startswith("/"):
        text = "/" + text
    if not text.endswith("/"):
        text += "/"
    if not _BASE_PATH_RE.match(text) or any(seg in (".", "..") for seg in text.split("/")):
        raise ValueError(f"{value!r} is not a URL path (e.g. / or /ingest/)")
    return text


@dataclass(frozen=True)
class ReceiverSettings:
    """Validated on construction; ``base_path`` is normalized to start and end with ``/``.

    ``token=None`` means no authentication at all: callers must only allow it when the
    operator asked for it explicitly (``--no-auth``, ``allow_anonymous``).
    """

    root: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = field(default=None, repr=False)
    max_size: int | None = 10 * 1024**3
    min_free: int = 1024**3
    expire: float = 86400.0
    base_path: str = "/"
    on_conflict: str = "rename"
    trust_forwarded: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "base_path", normalize_base_path(self.base_path))
        if not self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"host {self.host!r} is not a host name or address")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port!r} is not in 0..65535")
        if self.token is not None and (
            not self.token or any(c.isspace() or not c.isprintable() for c in self.token)
        ):
            raise ValueError("token must be non-empty printable text without spaces")
        if self.max_size is not None and self.max_size <= 0:
            raise ValueError(f"max_size {self.max_size!r} must be positive (or None for no limit)")
        if self.min_free < 0:
            raise ValueError(f"min_free {self.min_free!r} must not be negative")
        if not self.expire > 0:
            raise ValueError(f"expire {self.expire!r} must be a positive number of seconds")
        if self.on_conflict not in ON_CONFLICT_CHOICES:
            raise ValueError(
                f"on_conflict {self.on_conflict!r} is not one of {', '.join(ON_CONFLICT_CHOICES)}"
            )
