"""Human sizes (``50MiB``) and durations (``5s``, ``2m``, ``1h30m``), both ways.

Shared by the config, the receiver's command line and every log line that shows a size.
Errors are ``ValueError`` whose message is ready to follow a key path:
``'soon' is not a duration (e.g. 5s, 2m)``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as ``512``, ``64KiB``, ``50MiB``, ``1.5GB``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size (e.g. 512KiB, 50MiB, 10GiB)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a size: it is negative")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _SIZE_UNITS:
            number = Fraction(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]  # exact, unlike a float
            if number.denominator == 1:
                return int(number)
            raise ValueError(f"{value!r} is not a whole number of bytes")
    raise ValueError(f"{value!r} is not a size (e.g. 512KiB, 50MiB, 10GiB)")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as ``5s``, ``2m``, ``1h30m``, ``250ms``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration (e.g. 5s, 2m)")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"{value!r} is not a duration: it must be a finite number >= 0")
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return float(text)
        if text and _DURATION_PART_RE.sub("", text) == "":
            return sum(
                float(number) * _DURATION_UNITS[unit]
                for number, unit in _DURATION_PART_RE.findall(text)
            )
    raise ValueError(f"{value!r} is not a duration (e.g. 5s, 2m)")


def format_size(n: float) -> str:
    """``1536`` -> ``1.5 KiB``; exact units are kept short (``50 MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """``95`` -> ``1m35s``; sub-second values keep one decimal."""
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{v}{u}" for v, u in parts if v) or "0s"


def parse_listen(value: object) -> tuple[str, int]:
    """``127.0.0.1:8765``, ``localhost:0`` or ``[::1]:9464`` -> (host, port)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        value = f"[{value[0]}]:{value[1]}" if ":" in str(value[0]) else f"{value[0]}:{value[1]}"
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8765)")
    host, sep, port_text = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: put an IPv6 address in brackets, e.g. [::1]:8765")
    if not sep or not host or any(c.isspace() or c in "/[]" for c in host):
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8765)")
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise ValueError(f"{value!r}: the port must be a number in 0..65535")
    return host, int(port_text)
