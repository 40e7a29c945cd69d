"""``syncd serve``: flags, their validation, and the foreground run.

Every bad value is one line naming the flag and the value, and exit status 2; a
receiver that cannot start (address in use, root unusable) exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from syncd import units
from syncd.logs import register_secret, setup_logging
from syncd.server.settings import ON_CONFLICT_CHOICES, ReceiverSettings, normalize_base_path
from syncd.units import parse_duration, parse_size

log = logging.getLogger("syncd.server")

TOKEN_ENV = "SYNCD_RECEIVER_TOKEN"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
_LOOPBACK = ("127.0.0.1", "::1", "localhost")

T = TypeVar("T")


class UsageError(ValueError):
    """A bad flag value; ``str(err)`` is the one line to print."""


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Receive files over the chunked upload protocol (synapse-sdk / drf-chunked-upload) "
        "and store them under --root. Partial uploads live in ROOT/.incoming and survive "
        "restarts."
    )
    parser.add_argument(
        "--root", required=True, metavar="DIR", help="folder to store received files in (created if missing)"
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:8765",
        metavar="HOST:PORT",
        help="address to listen on; [::1]:8765 for IPv6, port 0 picks a free one (default: %(default)s)",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"file holding the token clients must send (default: the {TOKEN_ENV} environment variable)",
    )
    auth.add_argument(
        "--no-auth",
        action="store_true",
        help="accept uploads without any token (only for trusted networks; required when no token is given)",
    )
    parser.add_argument(
        "--max-size",
        default="10GiB",
        metavar="SIZE",
        help="largest file accepted, e.g. 500MiB, or 'none' (default: %(default)s); larger ones get 413",
    )
    parser.add_argument(
        "--min-free",
        default="1GiB",
        metavar="SIZE",
        help="free space to keep on the root's disk; uploads that would eat into it get 507 "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--expire",
        default="24h",
        metavar="DURATION",
        help="idle time after which an unfinished upload and its data are dropped (default: %(default)s)",
    )
    parser.add_argument(
        "--base-path",
        default="/",
        metavar="PATH",
        help="URL path the endpoints live under, e.g. /ingest/ behind a proxy (default: %(default)s)",
    )
    parser.add_argument(
        "--on-conflict",
        default="rename",
        metavar="{" + ",".join(ON_CONFLICT_CHOICES) + "}",
        help="when a different file already has the name: store as 'name (1).ext', replace it, "
        "or refuse with 409 (default: %(default)s)",
    )
    parser.add_argument(
        "--trust-forwarded",
        action="store_true",
        help="build session URLs from X-Forwarded-Proto/-Host (only behind a proxy that sets them)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default: %(default)s); DEBUG adds an access log",
    )


def run_serve(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args, environ=os.environ)
        level = _log_level(args.log_level)
    except UsageError as exc:
        print(f"syncd serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(level=level)
    if settings.token is not None:
        register_secret(settings.token)
    elif settings.host not in _LOOPBACK:
        log.warning("--no-auth on %s: anyone who can reach it can store files", settings.host)
    from syncd.server.embedded import ReceiverStartError
    from syncd.server.runner import run_forever

    try:
        run_forever(settings, access_log=level == "DEBUG")
    except ReceiverStartError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def settings_from_args(
    args: argparse.Namespace, *, environ: Mapping[str, str]
) -> ReceiverSettings:
    """Raises UsageError naming the flag on the first bad value."""
    if not args.root.strip():
        raise UsageError(f"--root: {args.root!r} is not a folder")
    host, port = parse_listen(args.listen)
    return ReceiverSettings(
        root=Path(args.root),
        host=host,
        port=port,
        token=_token(args, environ),
        max_size=_flag("--max-size", args.max_size, _max_size),
        min_free=_flag("--min-free", args.min_free, parse_size),
        expire=_flag("--expire", args.expire, _positive_duration),
        base_path=_flag("--base-path", args.base_path, normalize_base_path),
        on_conflict=_flag("--on-conflict", args.on_conflict, _on_conflict),
        trust_forwarded=args.trust_forwarded,
    )


def _flag(flag: str, value: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(value)
    except ValueError as exc:  # the parsers' messages already quote the value
        raise UsageError(f"{flag}: {exc}") from None


def _max_size(value: str) -> int | None:
    if value.strip().lower() in ("none", "unlimited"):
        return None
    size = parse_size(value)
    if size == 0:
        raise ValueError(f"{value!r} must be more than 0 (or 'none' for no limit)")
    return size


def _positive_duration(value: str) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{value!r} must be longer than 0s")
    return seconds


def _on_conflict(value: str) -> str:
    if value not in ON_CONFLICT_CHOICES:
        raise ValueError(f"{value!r} is not one of {', '.join(ON_CONFLICT_CHOICES)}")
    return value


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"--log-level: {value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def parse_listen(value: str) -> tuple[str, int]:
    try:
        return units.parse_listen(value)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    token: str | None
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"--token-file: cannot read {args.token_file!r}: {reason}") from None
        if not token:
            raise UsageError(f"--token-file: {args.token_file!r} is empty")
        source = f"--token-file {args.token_file!r}"
    else:
        token = environ.get(TOKEN_ENV, "").strip() or None
        source = TOKEN_ENV
    if token is not None and any(c.isspace() or not c.isprintable() for c in token):
        raise UsageError(f"{source}: the token must be one word of printable characters")
    if token is not None and args.no_auth:
        raise UsageError(f"--no-auth: conflicts with the token set in {TOKEN_ENV}")
    if token is None and not args.no_auth:
        raise UsageError(
            f"no token: give --token-file FILE or set {TOKEN_ENV} (or --no-auth to accept anyone)"
        )
    return token
