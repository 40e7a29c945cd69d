"""Which paths below a watch root are synced: pure string logic, no I/O.

Paths are relative to the watch root, with ``/`` separators, already normalised
(no empty, ``.`` or ``..`` segments): what :mod:`syncd.watch.scan` and the observer
produce.

Pattern semantics (``include`` / ``exclude``), case-sensitive:

* A pattern without ``/`` is matched against the file's basename only, at any depth:
  ``*.mov`` accepts ``a.mov`` and ``clips/2024/a.mov``.
* A pattern with ``/`` is matched against the whole relative path, anchored at the
  watch root (a leading ``/`` is allowed and changes nothing): ``raw/*.mov`` accepts
  ``raw/a.mov`` but not ``x/raw/a.mov`` nor ``raw/sub/a.mov``.
* Within one path segment, ``*`` matches any run of characters (a leading dot
  included), ``?`` one character, ``[abc]`` / ``[!abc]`` a character class: exactly
  :func:`fnmatch.fnmatchcase` applied to that segment, so no wildcard ever matches ``/``.
* A segment that is exactly ``**`` matches zero or more whole segments:
  ``**/tmp/*`` matches ``tmp/a`` and ``x/y/tmp/a``; ``raw/**`` matches everything
  below ``raw``. ``**`` inside a longer segment (``a**b``) is just two ``*``.
* Empty segments (``a//b``, a trailing ``/``) are refused with :class:`ValueError`;
  write ``dir/**`` for "everything under dir".

A file is accepted when none of its directories is pruned (see :meth:`PathFilter.accepts_dir`),
its basename is not default-ignored, it matches at least one ``include`` pattern
(when there are any) and no ``exclude`` pattern. Exclude wins over include.

Directories are pruned (:meth:`PathFilter.accepts_dir`) when one of their segments
starts with a dot (default ignores), when they are one of ``ignore_dirs`` or lie below
one, or when an exclude pattern of the form ``<prefix>/**`` has a prefix matching the
directory (every file below it would be excluded anyway). Include patterns never prune.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

# Basename globs, matched case-insensitively (`CLIP.MOV.PART` is as partial as
# `clip.mov.part`). rsync's temporaries (`.name.XXXXXX`), editors' swap files
# (`.name.swp`) and syncd's own `.syncd*` files are dotfiles, but are named here too
# so the list reads as the contract.
DEFAULT_IGNORES: tuple[str, ...] = (
    ".*",
    "*.part",
    "*.partial",
    "*.tmp",
    "*.crdownload",
    "*.swp",
    "*.swx",
    "~$*",
    "*~",
    ".syncd*",
)

_GLOBSTAR = "**"


@dataclass(frozen=True)
class _Pattern:
    text: str
    segments: tuple[str, ...]
    basename_only: bool

    def matches(self, parts: tuple[str, ...]) -> bool:
        if self.basename_only:
            return fnmatchcase(parts[-1], self.segments[0])
        return _match_segments(self.segments, parts)


def _compile(pattern: str, *, what: str) -> _Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{what} pattern {pattern!r} is empty or not a string")
    if "/" not in pattern:
        return _Pattern(pattern, (pattern,), basename_only=True)
    body = pattern[1:] if pattern.startswith("/") else pattern
    segments = body.split("/")
    if "" in segments:
        raise ValueError(
            f"{what} pattern {pattern!r} has an empty path segment "
            "(write 'dir/**' for everything under dir)"
        )
    collapsed: list[str] = []
    for segment in segments:
        if segment == _GLOBSTAR and collapsed and collapsed[-1] == _GLOBSTAR:
            continue
        collapsed.append(segment)
    return _Pattern(pattern, tuple(collapsed), basename_only=False)


def _match_segments(pattern: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Glob match segment by segment; ``**`` matches zero or more segments.

    Simulates the pattern as a small NFA over segment positions: O(len(pattern) * len(parts)).
    """

    def closure(states: set[int]) -> set[int]:
        result = set(states)
        for index in states:
            while index < len(pattern) and pattern[index] == _GLOBSTAR:
                index += 1
                result.add(index)
        return result

    states = closure({0})
    for part in parts:
        following: set[int] = set()
        for index in states:
            if index == len(pattern):
                continue
            if pattern[index] == _GLOBSTAR:
                following.add(index)
            elif fnmatchcase(part, pattern[index]):
                following.add(index + 1)
        if not following:
            return False
        states = closure(following)
    return len(pattern) in states


def _default_ignored(name: str) -> bool:
    lowered = name.lower()
    return any(fnmatchcase(lowered, pattern) for pattern in DEFAULT_IGNORES)


def _relative_dir(path: Path) -> str:
    posix = PurePosixPath(path.as_posix())
    if posix.is_absolute() or any(part in ("..", ".") for part in posix.parts) or not posix.parts:
        raise ValueError(
            f"ignore_dirs entry {str(path)!r} must be a non-empty path relative to the watch root "
            "(see ignore_dirs_within)"
        )
    return "/".join(posix.parts)


@dataclass(frozen=True)
class PathFilter:
    """Decides which files (and which directories to descend into) a watch syncs."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _: KW_ONLY
    ignore_dirs: tuple[Path, ...] = ()
    use_default_ignores: bool = True

    _include: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)
    _exclude: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)
    _prune: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)
    _ignored_dirs: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Accept lists from a config loader but store tuples, so the filter stays hashable.
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "ignore_dirs", tuple(Path(p) for p in self.ignore_dirs))
        compiled_exclude = tuple(_compile(p, what="exclude") for p in self.exclude)
        prune = tuple(
            _Pattern(p.text, p.segments[:-1], basename_only=False)
            for p in compiled_exclude
            if not p.basename_only and len(p.segments) >= 2 and p.segments[-1] == _GLOBSTAR
        )
        object.__setattr__(
            self, "_include", tuple(_compile(p, what="include") for p in self.include)
        )
        object.__setattr__(self, "_exclude", compiled_exclude)
        object.__setattr__(self, "_prune", prune)
        object.__setattr__(
            self, "_ignored_dirs", frozenset(_relative_dir(p) for p in self.ignore_dirs)
        )

    def accepts(self, relpath: str) -> bool:
        """Whether the file at ``relpath`` (relative to the watch root) is synced."""
        if not relpath:
            return False
        parts = tuple(relpath.split("/"))
        if not parts[-1]:
            return False
        if self.use_default_ignores and _default_ignored(parts[-1]):
            return False
        if not self._dirs_accepted(parts[:-1]):
            return False
        if self._include and not any(p.matches(parts) for p in self._include):
            return False
        return not any(p.matches(parts) for p in self._exclude)

    def accepts_dir(self, relpath: str) -> bool:
        """Whether a walk should descend into the directory at ``relpath`` ("" is the root).

        False means no file below it can be accepted.
        """
        if not relpath:
            return True
        return self._dirs_accepted(tuple(relpath.split("/")))

    def _dirs_accepted(self, parts: tuple[str, ...]) -> bool:
        for depth in range(1, len(parts) + 1):
            name = parts[depth - 1]
            if not name:
                return False
            if self.use_default_ignores and name.startswith("."):
                return False
            prefix = parts[:depth]
            if self._ignored_dirs and "/".join(prefix) in self._ignored_dirs:
                return False
            if any(p.matches(prefix) for p in self._prune):
                return False
        return True


def ignore_dirs_within(root: Path, dirs: tuple[Path, ...] | list[Path]) -> tuple[Path, ...]:
    """The members of ``dirs`` that lie inside ``root``, relative to it, for ``ignore_dirs``.

    Both sides are resolved (symlinks followed), so call it once at configuration time,
    not per event. Directories outside ``root``, and ``root`` itself, are left out.
    """
    resolved_root = root.resolve()
    inside: list[Path] = []
    for directory in dirs:
        try:
            relative = directory.resolve().relative_to(resolved_root)
        except ValueError:
            continue
        if relative.parts:
            inside.append(relative)
    return tuple(inside)
