"""Which protocols syncd speaks: ``protocol:`` name -> settings model + backend factory.

A protocol is one module under syncd/upload/ with a ``PROTOCOL`` entry, plus one line in
``BUILTIN``. Modules are imported only when a target names them, so a daemon with only
``chunked`` targets never imports boto3. ``register`` adds a protocol from outside (tests
register an in-memory fake this way).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.config import TargetSettings
    from syncd.upload.base import Backend

DEFAULT = "chunked"
BUILTIN = {
    "chunked": "syncd.upload.chunked",
    "tus": "syncd.upload.tus",
    "s3": "syncd.upload.s3",
}


@dataclass(frozen=True)
class ProtocolEntry:
    name: str
    settings: type[TargetSettings]
    """the pydantic model of a target's keys; its ``protocol`` field is this name"""
    factory: Callable[[str, TargetSettings], Backend]
    """(target name, settings) -> a backend, ready to use"""


_registered: dict[str, ProtocolEntry] = {}


def register(entry: ProtocolEntry) -> None:
    _registered[entry.name] = entry


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    return sorted(set(BUILTIN) | set(_registered))


def lookup(name: object) -> ProtocolEntry:
    """The entry for ``name``; KeyError if there is none."""
    if not isinstance(name, str):
        raise KeyError(name)
    if name in _registered:
        return _registered[name]
    module = BUILTIN[name]
    entry = importlib.import_module(module).PROTOCOL
    _registered[name] = entry
    return entry


def build_backend(target_name: str, settings: TargetSettings) -> Backend:
    return lookup(settings.protocol).factory(target_name, settings)


def build_backends(targets: dict[str, TargetSettings]) -> dict[str, Backend]:
    return {name: build_backend(name, settings) for name, settings in targets.items()}
